"""``graft eval`` under torchrun (2 processes, gloo on CPU): each process answers a disjoint share,
the main one merges and scores once; the result equals a one-process run, resumes included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from graft.cli import app

from tiny import random_image, save_tiny_backbones

WORKER = Path(__file__).parent / "eval_worker.py"
N = 7  # an odd number: the shares differ in size


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_two_processes_split_merge_and_resume(tmp_path):
    vision, llm = save_tiny_backbones(tmp_path)
    model = tmp_path / "m"
    result = CliRunner().invoke(
        app, ["compose", "--vision", str(vision), "--llm", str(llm), "--out", str(model)]
    )
    assert result.exit_code == 0, result.output
    data = tmp_path / "pope"
    (data / "images").mkdir(parents=True)
    rows = []
    for i in range(N):
        random_image(i).save(data / "images" / f"{i}.png")
        rows.append({"question_id": i, "image": f"{i}.png", "text": f"Is there a shape {i}?", "label": "yes"})
    (data / "coco_pope_random.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = f"pope={data}"

    # the reference: one process
    args = ["eval", "--model", str(model), "--task", task, "--batch-size", "2", "--max-new-tokens", "3"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "one")])
    assert result.exit_code == 0, result.output
    reference = {r["id"]: r["prediction"] for r in _lines(tmp_path / "one" / "pope" / "predictions.jsonl")}
    assert len(reference) == N

    # a run killed half-way: two answers merged, one in a process file, one half-written line
    resumed = tmp_path / "resumed" / "pope"
    resumed.mkdir(parents=True)
    ids = list(reference)
    line = {i: json.dumps({"id": i, "prediction": reference[i]}) + "\n" for i in ids}
    (resumed / "predictions.jsonl").write_text(line[ids[0]] + line[ids[1]])
    (resumed / "predictions.rank-1.jsonl").write_text(line[ids[1]] + line[ids[4]] + line[ids[5]][:9])

    reports = tmp_path / "reports"
    reports.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(WORKER),
    ]
    outs = [str(tmp_path / "two"), str(tmp_path / "resumed")]
    proc = subprocess.run(
        [*cmd, str(model), task, str(reports), *outs], env=env, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((reports / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    for out, written in (("two", N), ("resumed", N - 3)):
        rows = _lines(tmp_path / out / "pope" / "predictions.jsonl")
        assert sorted(r["id"] for r in rows) == sorted(ids), out  # every id exactly once
        assert {r["id"]: r["prediction"] for r in rows} == reference, out
        assert not list((tmp_path / out / "pope").glob("predictions.rank-*")), out
        results = json.loads((tmp_path / out / "pope" / "results.json").read_text())
        one = json.loads((tmp_path / "one" / "pope" / "results.json").read_text())
        assert results["metrics"] == one["metrics"] and results["processes"] == 2, out
        assert results["prediction_counts"]["written"] == written, out
    # the shares are disjoint, and together exactly what was left to do
    for out, todo in ((outs[0], ids), (outs[1], [ids[2], ids[3], ids[5], ids[6]])):
        shares = [ranks[r]["prompts"][out] for r in (0, 1)]
        assert not set(shares[0]) & set(shares[1]) and len(shares[0]) - len(shares[1]) in (0, 1)
        asked = sorted(int(p.split("shape ")[1].split("?")[0]) for share in shares for p in share)
        assert asked == sorted(int(i.split("/")[-1]) for i in todo)
    # a step that fails on one process fails on all, and they stay in step for the next run
    assert ranks[1]["error"] == "RecordError: scripted failure on rank 1"
    assert ranks[0]["error"] == "OtherProcessError: process 1: RecordError: scripted failure on rank 1"
    assert ranks[0]["after"] == ranks[1]["after"]  # the main process's counts, cut ones included
    assert ranks[0]["after"] | {"cut": 0} == {"total": 2, "already_done": 0, "written": 2, "bad": 0, "cut": 0}
