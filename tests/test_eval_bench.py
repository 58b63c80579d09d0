"""``run_bench`` / ``graft eval --bench DIR``: every run a bench.json lists, each in its own
folder; two runs may share a task; task files work as tasks; a run that cannot run is reported
and the others go on."""

import json
import textwrap

import pytest
import torch
from typer.testing import CliRunner

import graft.eval.metrics.caption as caption_mod
import graft.eval.predict as predict_mod
from graft.cli import app
from graft.eval.runner import read_bench, run_bench, run_task
from graft.eval.score import Options
from graft.generate import Reply

from tiny import save_tiny_backbones, tiny_model_and_processor, write_image, write_jsonl

torch.set_num_threads(1)


def _bench(root):
    """A benchmark folder by hand, in the manifest format graft world writes."""
    write_image(root / "pope" / "images" / "a.png")
    q = {"image": "a.png", "text": "Is there a green square?"}
    write_jsonl(
        root / "pope" / "coco_pope_random.json", [q | {"question_id": i, "label": "yes"} for i in (1, 2)]
    )
    write_image(root / "binary" / "images" / "a.png")
    write_jsonl(
        root / "binary" / "shapes_binary_test.jsonl",
        [q | {"question_id": i, "label": "no", "category": c} for i, c in [(1, "color"), (2, "count")]],
    )
    write_image(root / "coco" / "images" / "1.png")
    ann = {
        "images": [{"id": 1, "file_name": "1.png"}],
        "annotations": [{"id": 1, "image_id": 1, "caption": "A green square."}],
    }
    (root / "coco" / "captions_test.json").write_text(json.dumps(ann))
    write_jsonl(
        root / "qa" / "qa.jsonl", [{"id": "x", "image": "../pope/images/a.png", "q": "Colour?", "a": "yes"}]
    )
    (root / "qa.yaml").write_text(
        textwrap.dedent("""\
        task: shapes_qa
        reader: jsonl
        doc_to_visual: image
        doc_to_text: "{{q}}"
        doc_to_target: a
        generation_kwargs: {max_new_tokens: 3}
        metric_list: [exact_match]
        """)
    )
    tasks = {
        "pope": {"task": "pope", "path": "pope"},
        "binary": {"task": "pope", "path": "binary/shapes_binary_test.jsonl"},
        "coco_caption": {"task": "coco", "path": "coco/captions_test.json"},
        "qa": {"task": "qa.yaml", "path": "qa/qa.jsonl"},
        "llava_bench": {"task": "llava_bench", "path": "llava_bench"},
    }
    (root / "bench.json").write_text(json.dumps({"version": "test", "seed": 0, "tasks": tasks}))
    return root


@pytest.fixture
def said_yes(monkeypatch):
    """Generation replaced by "Yes" for every prompt; records the settings it was called with."""
    calls = []

    def fake(model, processor, convs, images, settings):
        calls.append(settings)
        return [Reply("Yes")] * len(convs)

    monkeypatch.setattr(predict_mod, "generate_replies", fake)
    return calls


def test_run_bench_runs_every_listed_run(tmp_path, said_yes):
    bench = _bench(tmp_path / "bench")
    model, processor = tiny_model_and_processor()
    out = tmp_path / "run"
    results = run_bench(model, processor, bench, out, options=Options(java=False), progress=False)
    assert list(results) == ["pope", "binary", "coco_caption", "qa", "llava_bench"]
    assert results["pope"]["metrics"]["random"]["accuracy"] == 1.0
    binary = json.loads((out / "binary" / "results.json").read_text())
    assert binary["task"] == "pope" and binary["run"] == "binary" and binary["family"] == "pope"
    assert (
        set(binary["metrics"]) == {"color", "count", "counts"}
        and binary["metrics"]["color"]["accuracy"] == 0.0
    )
    assert results["coco_caption"]["task"] == "coco_caption" and "CIDEr" in results["coco_caption"]["metrics"]
    assert results["qa"]["task"] == "shapes_qa" and results["qa"]["metrics"]["exact_match"] == 1.0
    assert results["qa"]["task_file"] == str(bench / "qa.yaml") and binary["task_file"] is None
    assert results["qa"]["generation"] == {"max_new_tokens": 3}
    assert "needs an LLM judge" in results["llava_bench"]["skipped"]
    assert not (out / "llava_bench").exists()
    assert {c.max_new_tokens for c in said_yes} == {64, 3}  # each task's own settings

    # a run whose data is broken is reported; the others still run (and resume: nothing new to do)
    manifest = json.loads((bench / "bench.json").read_text())
    manifest["tasks"]["broken"] = {"task": "pope", "path": "nowhere"}
    (bench / "bench.json").write_text(json.dumps(manifest))
    said_yes.clear()
    again = run_bench(model, processor, bench, out, options=Options(java=False), progress=False)
    assert "no POPE question file" in again["broken"]["error"] or "nowhere" in again["broken"]["error"]
    assert again["pope"]["prediction_counts"]["written"] == 0 and not said_yes
    assert again["binary"]["metrics"] == results["binary"]["metrics"]


def test_read_bench_errors_and_the_first_manifest_format(tmp_path):
    bench = tmp_path / "b"
    bench.mkdir()
    with pytest.raises(FileNotFoundError, match="bench.json not found"):
        read_bench(bench)
    (bench / "bench.json").write_text(json.dumps({"tasks": {"x": {"task": "popes", "path": "p"}}}))
    with pytest.raises(ValueError, match=r"bench.json: tasks.x: unknown task 'popes'"):
        read_bench(bench)
    (bench / "bench.json").write_text(json.dumps({"tasks": {"x": {"path": "p"}}}))
    with pytest.raises(ValueError, match=r"tasks.x: expected \{'task': NAME, 'path': PATH\}"):
        read_bench(bench)
    (bench / "bench.json").write_text(json.dumps({"tasks": {"pope": "pope", "coco": "c.json"}}))
    runs = read_bench(bench)
    assert {r: (spec.name, path) for r, (spec, path) in runs.items()} == {
        "pope": ("pope", bench / "pope"),
        "coco": ("coco_caption", bench / "c.json"),
    }


def test_run_names_and_max_new_tokens_override(tmp_path, said_yes):
    bench = _bench(tmp_path / "bench")
    model, processor = tiny_model_and_processor()
    res = run_task(
        model, processor, bench / "qa.yaml", bench / "qa" / "qa.jsonl", tmp_path / "o", max_new_tokens=7
    )
    assert res["generation"]["max_new_tokens"] == 7 and said_yes[-1].max_new_tokens == 7
    assert (tmp_path / "o" / "shapes_qa" / "results.json").exists()
    with pytest.raises(ValueError, match="plain folder name"):
        run_task(model, processor, "pope", bench / "pope", tmp_path / "o", run_name="../x")


def test_eval_cli_bench_and_task_file(tmp_path, said_yes, monkeypatch):
    monkeypatch.setattr(caption_mod, "java_available", lambda: False)  # Java's METEOR takes seconds
    vision, llm = save_tiny_backbones(tmp_path)
    model_dir = tmp_path / "m"
    result = CliRunner().invoke(
        app, ["compose", "--vision", str(vision), "--llm", str(llm), "--out", str(model_dir)]
    )
    assert result.exit_code == 0, result.output
    bench = _bench(tmp_path / "bench")
    # a task file with dataset_path needs no =PATH
    (tmp_path / "mine.yaml").write_text(
        (bench / "qa.yaml")
        .read_text()
        .replace("task: shapes_qa", "task: mine\ndataset_path: bench/qa/qa.jsonl")
    )
    args = ["eval", "--model", str(model_dir), "--out", str(tmp_path / "run"), "--bench", str(bench)]
    result = CliRunner().invoke(app, [*args, "--task", str(tmp_path / "mine.yaml")])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{") :])
    assert set(summary) == {"mine", "pope", "binary", "coco_caption", "qa", "llava_bench"}
    assert summary["mine"]["exact_match"] == 1.0 and "skipped" in summary["llava_bench"]
    bad = CliRunner().invoke(app, ["eval", "--model", str(model_dir), "--out", str(tmp_path / "r")])
    assert bad.exit_code == 2 and "--bench DIR" in bad.output
    bad = CliRunner().invoke(
        app, ["eval", "--model", str(model_dir), "--out", str(tmp_path / "r"), "--task", "pope=nowhere"]
    )
    assert bad.exit_code == 2 and "data not found: nowhere" in bad.output
    # a --task named as one of the bench's runs would share its folder
    clash = CliRunner().invoke(app, [*args, "--task", f"pope={bench / 'pope'}"])
    assert clash.exit_code == 2 and "--task pope and --bench's run 'pope' would both write" in clash.output
    (tmp_path / "afile").write_text("x")
    args[args.index("--out") + 1] = str(tmp_path / "afile")
    bad = CliRunner().invoke(app, args)
    assert bad.exit_code == 2 and "afile is a file; give a folder" in bad.output
