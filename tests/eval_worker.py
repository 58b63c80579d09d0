"""Run by tests/test_eval_processes.py under ``torchrun --nproc_per_node 2``: ``graft eval`` on
the given runs, recording which prompts this process answered; then a run that fails on one
process only, and one after it, to show the processes fail together and stay in step."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

import graft.eval.predict as predict_mod
from graft.cli import app
from graft.eval.processes import process_state
from graft.eval.runner import run_task
from graft.inference import load_for_inference
from graft.record_files import RecordError


def main(model_dir: str, task: str, report_dir: str, *outs: str) -> None:
    torch.set_num_threads(1)
    state = process_state()
    real = predict_mod.generate_replies
    seen: dict[str, list[str]] = {}

    def spy(model, processor, convs, images, **kw):  # noqa: ANN001, ANN003, ANN202
        seen[out].extend(c[-1].content for c in convs)
        return real(model, processor, convs, images, **kw)

    predict_mod.generate_replies = spy
    for out in outs:
        seen[out] = []
        app(["-q", "eval", "--model", model_dir, "--task", task, "--out", out, "--batch-size", "2",
             "--max-new-tokens", "3"], standalone_mode=False)  # fmt: skip

    def fails_on_rank_1(*args, **kw):  # noqa: ANN002, ANN003, ANN202
        if state.process_index == 1:
            raise RecordError("scripted failure on rank 1")
        return real(*args, **kw)

    model, processor = load_for_inference(Path(model_dir))
    name, _, data = task.partition("=")
    predict_mod.generate_replies = fails_on_rank_1
    try:
        run_task(
            model, processor, name, data, Path(outs[0]).parent / "fails", max_new_tokens=2, progress=False
        )
        error = None
    except ValueError as err:  # RecordError here, OtherProcessError on the other process
        error = f"{type(err).__name__}: {err}"
    predict_mod.generate_replies = real
    after = run_task(model, processor, name, data, Path(outs[0]).parent / "after", limit=2, max_new_tokens=2)
    report = {
        "rank": state.process_index,
        "world_size": state.num_processes,
        "prompts": seen,
        "error": error,
        "after": after["prediction_counts"],
    }
    (Path(report_dir) / f"rank-{state.process_index}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(*sys.argv[1:])
