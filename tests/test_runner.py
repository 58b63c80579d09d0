"""``graft eval``: real benchmark files -> batched answers -> exact scores, resumable."""

import json

import pytest
from typer.testing import CliRunner

from graft.cli import app
from graft.eval.runner import run_task

from tiny import save_tiny_backbones, tiny_model_and_processor, write_pope


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_killed_run_restarts_without_losing_or_duplicating(tmp_path):
    model, processor = tiny_model_and_processor()
    data = write_pope(tmp_path / "pope")
    full = run_task(
        model, processor, "pope", data, tmp_path / "a", batch_size=2, max_new_tokens=3, progress=False
    )
    predictions = tmp_path / "a" / "pope" / "predictions.jsonl"
    answers = {r["id"]: r["prediction"] for r in _lines(predictions)}
    assert len(answers) == 6 and full["metrics"]["counts"]["samples"] == 6

    # a run killed after two batches, mid-way through writing the third line
    partial = tmp_path / "b" / "pope"
    partial.mkdir(parents=True)
    kept = predictions.read_text().splitlines(keepends=True)[:4]
    (partial / "predictions.jsonl").write_text("".join(kept) + '{"id": "random/5", "predic')
    again = run_task(
        model, processor, "pope", data, tmp_path / "b", batch_size=2, max_new_tokens=3, progress=False
    )
    rows = _lines(partial / "predictions.jsonl")
    assert sorted(r["id"] for r in rows) == sorted(answers)  # every id exactly once
    assert {r["id"]: r["prediction"] for r in rows} == answers
    assert again["prediction_counts"]["already_done"] == 4 and again["prediction_counts"]["written"] == 2
    assert again["metrics"] == full["metrics"]
    results = json.loads((partial / "results.json").read_text())
    assert results["model_config_hash"] == full["model_config_hash"] and results["graft_version"]

    # a finished run reruns to the same results without generating anything
    third = run_task(
        model, processor, "pope", data, tmp_path / "b", batch_size=2, max_new_tokens=3, progress=False
    )
    assert third["prediction_counts"]["written"] == 0 and third["metrics"] == full["metrics"]


def test_limit_and_unknown_task(tmp_path):
    model, processor = tiny_model_and_processor()
    data = write_pope(tmp_path / "pope")
    res = run_task(model, processor, "pope", data, tmp_path / "o", limit=3, max_new_tokens=2, progress=False)
    assert res["metrics"]["counts"]["samples"] == 3
    with pytest.raises(ValueError, match="unknown task"):
        run_task(model, processor, "popes", data, tmp_path / "o")


def test_the_progress_bar_names_the_run(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)  # one set in the environment would hide the bars
    model, processor = tiny_model_and_processor()
    data = write_pope(tmp_path / "pope")
    for run in ("with_images", "blind"):
        run_task(model, processor, "pope", data, tmp_path / "o", run_name=run, limit=2, max_new_tokens=2)
    err = capsys.readouterr().err  # tqdm writes to stderr
    assert f"predict {tmp_path / 'o' / 'with_images'}" in err and f"predict {tmp_path / 'o' / 'blind'}" in err
    assert "predict questions.jsonl" not in err


def test_eval_cli(tmp_path):
    vision, llm = save_tiny_backbones(tmp_path)
    model_dir = tmp_path / "m"
    result = CliRunner().invoke(
        app, ["compose", "--vision", str(vision), "--llm", str(llm), "--out", str(model_dir)]
    )
    assert result.exit_code == 0, result.output
    data = write_pope(tmp_path / "pope", n=4)
    args = ["eval", "--model", str(model_dir), "--task", f"pope={data}", "--out", str(tmp_path / "run")]
    result = CliRunner().invoke(app, [*args, "--max-new-tokens", "2"])
    assert result.exit_code == 0, result.output
    assert "random" in json.loads(result.output[result.output.index("{") :])["pope"]
    bad = CliRunner().invoke(
        app, ["eval", "--model", str(model_dir), "--task", "pope", "--out", str(tmp_path)]
    )
    assert bad.exit_code != 0 and "NAME=PATH" in bad.output


def test_a_folder_answered_by_another_model_is_not_resumed(tmp_path):
    import torch

    model, processor = tiny_model_and_processor()
    data = write_pope(tmp_path / "pope")
    first = run_task(
        model, processor, "pope", data, tmp_path / "a", limit=2, max_new_tokens=2, progress=False
    )
    with torch.no_grad():  # the same architecture, retrained: only the weights differ
        model.connector.apply(lambda m: m.weight.add_(0.01) if isinstance(m, torch.nn.Linear) else None)
    with pytest.raises(ValueError, match="made by another model"):
        run_task(model, processor, "pope", data, tmp_path / "a", limit=2, max_new_tokens=2, progress=False)
    second = run_task(
        model, processor, "pope", data, tmp_path / "b", limit=2, max_new_tokens=2, progress=False
    )
    assert second["model_config_hash"] == first["model_config_hash"]
    assert second["model_weights"] != first["model_weights"]


def test_a_limited_run_takes_every_subtask_in_turn_and_keeps_mme_pairs_whole():
    from collections import Counter

    from graft.eval.readers import ReadResult, Sample
    from graft.eval.tasks import get_task

    # MME's layout: subtask after subtask, two questions per image
    mme = [
        Sample(f"{sub}/{image}.png/{k}", "q", [], "Yes", {"subtask": sub, "image_name": f"{image}.png"})
        for sub in ("existence", "count", "position")
        for image in range(4)
        for k in range(2)
    ]
    first = get_task("mme").first(ReadResult(mme), 12).samples
    assert Counter(s.meta["subtask"] for s in first) == {"existence": 4, "count": 4, "position": 4}
    assert Counter((s.meta["subtask"], s.meta["image_name"]) for s in first) == {
        (sub, f"{image}.png"): 2 for sub in ("existence", "count", "position") for image in (0, 1)
    }
    assert [s.id for s in first] == [s.id for s in mme if s in first]  # the data's order
    assert len(get_task("mme").first(ReadResult(mme), 7).samples) == 7
    demon = [Sample(f"{task}/{i}", "q", [], "x", {"task": task}) for task in ("A", "B") for i in range(5)]
    assert [s.id for s in get_task("demon").first(ReadResult(demon), 4).samples] == [
        "A/0",
        "A/1",
        "B/0",
        "B/1",
    ]
    # a family without subtasks: the first samples, as before
    assert get_task("pope").first(ReadResult(mme), 3).samples == mme[:3]


def test_answers_cut_at_the_length_limit_are_marked_counted_and_warned(tmp_path, caplog):
    model, processor = tiny_model_and_processor()
    data = write_pope(tmp_path / "pope")
    with caplog.at_level("WARNING", logger="graft.eval.runner"):
        res = run_task(model, processor, "pope", data, tmp_path / "o", max_new_tokens=1, progress=False)
    rows = _lines(tmp_path / "o" / "pope" / "predictions.jsonl")
    cut = sum(r.get("cut", False) for r in rows)
    assert cut > 0 and res["prediction_counts"]["cut"] == cut
    assert f"pope: {cut} answers reached the 1-token answer limit" in caplog.text


def test_a_folder_answered_for_other_data_or_answer_length_is_not_resumed(tmp_path):
    import json

    model, processor = tiny_model_and_processor()
    data = write_pope(tmp_path / "pope", n=4)
    run = {"limit": 2, "max_new_tokens": 2, "progress": False}
    run_task(model, processor, "pope", data, tmp_path / "a", **run)
    # more samples of the same data resume: the answered ones keep their questions
    grown = run_task(model, processor, "pope", data, tmp_path / "a", **(run | {"limit": 4}))
    assert grown["prediction_counts"]["written"] == 2
    # the same ids asking other questions: the answers in the folder are not theirs
    questions = data / "coco_pope_random.json"
    rows = [json.loads(line) for line in questions.read_text().splitlines()]
    questions.write_text("".join(json.dumps(r | {"text": r["text"] + " Or a square?"}) + "\n" for r in rows))
    with pytest.raises(ValueError, match=r"sample 'random/1' was answered for another question or image"):
        run_task(model, processor, "pope", data, tmp_path / "a", **run)
    longer = r"other generation settings \(generation \{'max_new_tokens': 2, .*\} then"
    with pytest.raises(ValueError, match=longer):
        run_task(model, processor, "pope", data, tmp_path / "a", **(run | {"max_new_tokens": 3}))
    assert run_task(model, processor, "pope", data, tmp_path / "b", **run)["data"] == str(data.resolve())
