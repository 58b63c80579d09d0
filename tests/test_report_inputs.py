"""``graft report`` on what real runs leave: ``graft evaluate``'s question runs, limited runs,
data paths relative to where ``graft eval`` ran, broken results and a bad ``--out``."""

import json

from PIL import Image
from typer.testing import CliRunner

from graft.cli import app
from graft.eval.score import score
from graft.report.build import build_report, load_run


def _header(md):
    return next(line for line in md.splitlines() if line.startswith("| model |"))


def _questions_run(root, name="binary"):
    """A run as ``graft evaluate`` leaves it: a question file, its answers (one wrong, a colour
    question) and the results.json its scorer writes."""
    data = root / "world"
    (data / "images").mkdir(parents=True)
    Image.new("RGB", (16, 16), (200, 30, 30)).save(data / "images" / "0.png")
    rows = [
        {"id": "q0", "image": "images/0.png", "question": "Is it red?", "answer": "Yes", "qtype": "color"},
        {"id": "q1", "image": "images/0.png", "question": "Is it blue?", "answer": "No", "qtype": "color"},
        {"id": "q2", "image": "images/0.png", "question": "One object?", "answer": "Yes", "qtype": "count"},
    ]
    (data / "binary.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    folder = root / "ev" / name
    folder.mkdir(parents=True)
    preds = {"q0": "Yes", "q1": "Yes", "q2": "Yes"}
    (folder / "predictions.jsonl").write_text(
        "".join(json.dumps({"id": k, "prediction": v}) + "\n" for k, v in preds.items())
    )
    metrics = score("questions", data / "binary.jsonl", preds)
    results = {"task": "questions", "run": name, "family": "questions", "data": str(data / "binary.jsonl")}
    (folder / "results.json").write_text(json.dumps(results | {"metrics": metrics}))
    return root / "ev"


def _pope_run(root, splits, data="pope_data"):
    """A POPE run that answered ``splits`` (two samples each) of a benchmark holding all three;
    ``data`` is the path results.json records (relative to ``root``, as the demo's are)."""
    bench = root / "pope_data"
    (bench / "images").mkdir(parents=True)
    Image.new("RGB", (16, 16)).save(bench / "images" / "0.png")
    for split in ("adversarial", "popular", "random"):
        rows = [{"question_id": i, "image": "0.png", "text": f"{split} {i}?", "label": "yes"} for i in (1, 2)]
        (bench / f"coco_pope_{split}.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    folder = root / "runs" / "demo" / "pope"
    folder.mkdir(parents=True)
    ids = [f"{s}/{i}" for s in splits for i in (1, 2)]
    (folder / "predictions.jsonl").write_text(
        "".join(json.dumps({"id": i, "prediction": "No"}) + "\n" for i in ids)
    )
    metrics = {s: {"accuracy": 0.0, "f1": 0.0, "n": 2} for s in splits}
    (folder / "results.json").write_text(json.dumps({"task": "pope", "data": data, "metrics": metrics}))
    return root / "runs" / "demo"


def test_a_question_run_reads_its_types_and_failures(tmp_path):
    run = load_run(_questions_run(tmp_path))
    task = run.tasks["binary"]
    assert task.headline == 2 / 3 and task.categories == {"color": 0.5, "count": 1.0}  # no "n"
    assert task.note == "1 wrong of 3 answered" and [f.id for f in task.failures] == ["q1"]
    md = build_report([tmp_path / "ev"], tmp_path / "out")[0].read_text()
    assert "binary (accuracy)" in _header(md) and "qtype/" not in md
    assert "## binary per category: accuracy per question type" in md and "| color | 0.500 |" in md


def test_runs_whose_same_named_task_measures_otherwise_get_their_own_columns(tmp_path):
    questions = _questions_run(tmp_path / "a")
    demo = tmp_path / "demo" / "binary"
    demo.mkdir(parents=True)
    pope = {"task": "pope", "run": "binary", "family": "pope", "metrics": {"color": {"f1": 0.25}}}
    (demo / "results.json").write_text(json.dumps(pope))
    md = build_report([demo.parent, questions], tmp_path / "out")[0].read_text()
    assert _header(md) == "| model | binary (pope, mean F1) | binary (questions, accuracy) |"
    assert "| demo | 0.250 | - |" in md and "| ev | - | 0.667 |" in md
    assert "## binary (questions, accuracy) per category" in md


def test_a_partial_run_says_what_its_number_is():
    from graft.report.headline import headline_measure

    assert headline_measure("pope", {"adversarial": {"f1": 0.8, "n": 50}, "counts": {}}) == (
        "F1, adversarial only"
    )
    two = {"adversarial": {"f1": 0.8}, "random": {"f1": 0.7}}
    assert headline_measure("pope", two) == "mean F1, adversarial + random only"
    assert headline_measure("pope", two | {"popular": {"f1": 0.5}}) == "mean F1"
    assert headline_measure("pope", {"color": {"f1": 0.5}}) == "mean F1"  # a world's own categories
    no_copies = {"accuracy": 78.0, "circular_accuracy": 78.0, "n": 50, "groups": 50}
    assert headline_measure("mmbench", no_copies) == "accuracy, no circular copies"
    assert headline_measure("mmbench", no_copies | {"groups": 20}) == "circular accuracy"
    assert headline_measure("mine", {"exact_match": 0.5, "n": 4}) == "exact_match"


def test_a_limited_pope_run_is_labelled_and_apart_from_a_full_one(tmp_path):
    limited = _pope_run(tmp_path / "a", ["adversarial"])
    full = _pope_run(tmp_path / "b", ["adversarial", "popular", "random"])
    md = build_report([limited, full], tmp_path / "out")[0].read_text()
    assert _header(md) == "| model | pope (F1, adversarial only) | pope (mean F1) |"
    assert "- a/runs/demo / pope (F1, adversarial only): limited run: 2 of 6 samples answered" in md
    assert md.count("limited run") == 1  # the full run answered all six


def test_a_data_path_relative_to_where_eval_ran_is_found_from_anywhere(tmp_path, monkeypatch):
    run = _pope_run(tmp_path / "root", ["random"], data="pope_data")
    monkeypatch.chdir(tmp_path)  # not the folder graft eval ran in
    task = load_run(run).tasks["pope"]
    assert task.note == "2 wrong of 2 answered, of 6 in the benchmark"
    assert task.failures[0].images == [tmp_path / "root" / "pope_data" / "images" / "0.png"]
    gone = load_run(_pope_run(tmp_path / "other", ["random"], data="nowhere/pope_data")).tasks["pope"]
    assert gone.note == "benchmark data 'nowhere/pope_data' not found; failures not listed"


def test_broken_results_and_summaries_are_named(tmp_path):
    (tmp_path / "run" / "pope").mkdir(parents=True)
    bad = tmp_path / "run" / "pope" / "results.json"
    bad.write_text('{"a":1,\n}')
    said = CliRunner().invoke(app, ["report", str(tmp_path / "run"), "--out", str(tmp_path / "r")])
    assert said.exit_code == 2 and f"{bad}:2: not valid JSON" in said.output
    bad.write_text("[1]")
    said = CliRunner().invoke(app, ["report", str(tmp_path / "run"), "--out", str(tmp_path / "r")])
    assert said.exit_code == 2 and f"{bad}: expected a JSON object" in said.output
    summary = tmp_path / "summary.json"
    summary.write_text('{"a":1,\n}')
    said = CliRunner().invoke(app, ["report", str(summary), "--out", str(tmp_path / "r")])
    assert said.exit_code == 2 and f"{summary}:2: not valid JSON" in said.output
    assert not (tmp_path / "r").exists()


def test_an_out_that_is_a_file_is_a_named_error(tmp_path):
    run = _questions_run(tmp_path)
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out in (afile, afile / "sub"):
        said = CliRunner().invoke(app, ["report", str(run), "--out", str(out)])
        assert said.exit_code == 2, said.output  # a FileExistsError traceback exits 1
        assert f"--out {out}: not a folder ({afile} is a file)" in said.output
    assert afile.read_text() == "x"


def test_mme_failures_match_ids_spelt_with_the_image_suffix(tmp_path):
    """The run's ids name the image with its suffix, the benchmark read for scoring without."""
    sub = tmp_path / "mme" / "existence"
    sub.mkdir(parents=True)
    Image.new("RGB", (16, 16)).save(sub / "0.png")
    (sub / "0.txt").write_text("Is there a square?\tYes\nIs there a circle?\tNo\n")
    folder = tmp_path / "run" / "mme"
    folder.mkdir(parents=True)
    ids = ["existence/0.png/0", "existence/0.png/1"]
    (folder / "predictions.jsonl").write_text(
        "".join(json.dumps({"id": i, "prediction": "Yes"}) + "\n" for i in ids)
    )
    shown = tmp_path / "shown.png"  # the image the run showed, from its questions.jsonl
    (folder / "questions.jsonl").write_text(
        "".join(json.dumps({"id": i, "images": [str(shown)], "question": "q"}) + "\n" for i in ids)
    )
    results = {"task": "mme", "data": str(tmp_path / "mme"), "metrics": {"perception": 50.0}}
    (folder / "results.json").write_text(json.dumps(results))
    task = load_run(tmp_path / "run").tasks["mme"]
    assert task.note == "1 wrong of 2 answered" and task.scope == ""
    assert [(f.id, f.images) for f in task.failures] == [("existence/0/1", [shown])]


def test_a_limited_run_of_a_benchmark_not_re_read_says_its_limit(tmp_path):
    folder = tmp_path / "ev" / "coco_caption"
    folder.mkdir(parents=True)
    metrics = {"CIDEr": 0.9, "Bleu_4": 0.2}
    results = {"task": "coco_caption", "family": "coco_caption", "metrics": metrics, "limit": 5}
    (folder / "results.json").write_text(json.dumps(results))
    run = load_run(tmp_path / "ev")
    assert run.tasks["coco_caption"].scope == "limited run: at most 5 samples (--limit)"
    (folder / "results.json").write_text(json.dumps(results | {"limit": None}))
    assert load_run(tmp_path / "ev").tasks["coco_caption"].scope == ""
