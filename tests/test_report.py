"""``graft report``: run folders and demo summaries -> one table, bar charts, failures with images."""

import json
import re

from PIL import Image
from typer.testing import CliRunner

from graft.cli import app
from graft.report.build import build_report, load_run
from graft.report.headline import headline_and_categories


def _tiny_pope_run(root, predictions):
    """A POPE benchmark on disk and a run folder whose answers are ``predictions`` (id -> text)."""
    data = root / "pope_data"
    (data / "images").mkdir(parents=True)
    rows = []
    for i in range(4):
        Image.new("RGB", (24, 24), (60 * i, 100, 200)).save(data / "images" / f"{i}.png")
        label = "yes" if i % 2 else "no"
        rows.append(
            {"question_id": i + 1, "image": f"{i}.png", "text": f"Is there a circle {i}?", "label": label}
        )
    (data / "coco_pope_random.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = root / "run" / "pope"
    task.mkdir(parents=True)
    (task / "predictions.jsonl").write_text(
        "".join(json.dumps({"id": k, "prediction": v}) + "\n" for k, v in predictions.items())
    )
    metrics = {"random": {"accuracy": 0.75, "f1": 0.8, "n": 4}, "counts": {"samples": 4}}
    results = {"task": "pope", "data": str(data), "metrics": metrics, "model_config_hash": "abc123"}
    (task / "results.json").write_text(json.dumps(results | {"graft_version": "0.1.0"}))
    return root / "run"


def _tiny_demo(root):
    root.mkdir()
    summary = {
        "binary/accuracy": 0.9,
        "binary/accuracy_blind": 0.5,
        "mcq/accuracy": 0.7,
        "qtype/binary_colour/accuracy": 0.95,
        "qtype/binary_count/accuracy": 0.6,
        "time/total_s": 12.0,
    }
    (root / "summary.json").write_text(json.dumps(summary))
    return root


def _ids(run_dir):
    from graft.eval.readers import read_pope

    return [
        str(s.id)
        for s in read_pope(json.loads((run_dir / "pope" / "results.json").read_text())["data"]).samples
    ]


def test_report_tables_charts_and_failures(tmp_path):
    run = _tiny_pope_run(tmp_path, {})
    ids = _ids(run)  # labels alternate no, yes, no, yes; the model says "Yes" to everything
    (run / "pope" / "predictions.jsonl").write_text(
        "".join(json.dumps({"id": i, "prediction": "Yes, there is."}) + "\n" for i in ids)
    )
    demo = _tiny_demo(tmp_path / "demo")
    md_path, html_path = build_report([run, demo / "summary.json"], tmp_path / "out", max_failures=5)

    md = md_path.read_text()
    header = next(line for line in md.splitlines() if line.startswith("| model |"))
    # the run answered POPE's random split only: its F1, not a mean over the three
    assert "pope (F1, random only)" in header and "demo/binary (accuracy)" in header
    assert "| run | 0.800 | - | - | - |" in md  # pope's one split, no demo numbers
    assert "| demo | - | 0.900 | 0.500 | 0.700 |" in md
    assert "| colour | 0.950 | - | 0.50 |" in md  # the demo's table: only the demo's columns
    assert "## pope per category: F1" in md  # what the per-category numbers are
    assert "2 wrong of 4 answered" in md  # the two "no" samples

    page = html_path.read_text()
    assert not re.search(r"""(src|href)\s*=\s*['"](?!data:)""", page)  # nothing fetched from outside
    assert page.count("data:image/png;base64,") >= 2  # pope and demo/binary bar charts
    fails = page.count("class='fail'")
    assert fails == 2
    assert page.count("data:image/jpeg;base64,") == 2  # each failure with its image
    assert "Is there a circle 0?" in page and "Is there a circle 1?" not in page


def test_failures_of_a_limited_run_count_only_its_answers(tmp_path):
    run = _tiny_pope_run(tmp_path, {})
    first_two = _ids(run)[:2]  # a run with --limit 2: labels no, yes; the model says "Yes"
    (run / "pope" / "predictions.jsonl").write_text(
        "".join(json.dumps({"id": i, "prediction": "Yes"}) + "\n" for i in first_two)
    )
    report = load_run(run)
    assert report.tasks["pope"].note == "1 wrong of 2 answered, of 4 in the benchmark"
    assert [f.id for f in report.tasks["pope"].failures] == first_two[:1]


def test_headlines_per_family():
    assert (
        headline_and_categories(
            "mme", {"perception": 1200.0, "cognition": 300.0, "OCR": 150.0, "details": {}}
        )[0]
        == 1200.0
    )
    head, cats = headline_and_categories("demon", {"categories": {"a": 40.0, "b": 60.0}, "tasks": {}})
    assert head == 50.0 and cats == {"a": 40.0, "b": 60.0}
    # a world's own DEMON-format tasks all fall in "Other": the bars are then its tasks
    one = {"categories": {"Other": 30.0}, "tasks": {"Shapes_Difference": 50.0, "Shapes_WhichImage": 10.0}}
    head, cats = headline_and_categories("demon", one)
    assert head == 30.0 and cats == {"Shapes_Difference": 50.0, "Shapes_WhichImage": 10.0}
    head, cats = headline_and_categories(
        "mmbench", {"accuracy": 70.0, "circular_accuracy": 55.0, "per_category": {"x": 1.0}}
    )
    assert head == 55.0 and cats == {"x": 1.0}
    assert headline_and_categories("coco_caption", {"CIDEr": 0.9, "METEOR": None, "Bleu_4": 0.2})[1] == {
        "Bleu_4": 0.2,
        "CIDEr": 0.9,
    }


def test_missing_data_is_noted_not_guessed(tmp_path):
    run = _tiny_pope_run(tmp_path, {})
    results = json.loads((run / "pope" / "results.json").read_text())
    (run / "pope" / "results.json").write_text(json.dumps(results | {"data": str(tmp_path / "gone")}))
    report = load_run(run)
    assert report.tasks["pope"].failures == [] and "not found" in report.tasks["pope"].note


def test_cli_report(tmp_path):
    demo = _tiny_demo(tmp_path / "demo")
    result = CliRunner().invoke(app, ["report", str(demo), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r" / "report.html").exists() and (tmp_path / "r" / "report.md").exists()
    bad = CliRunner().invoke(app, ["report", str(tmp_path / "nothing"), "--out", str(tmp_path / "r2")])
    assert bad.exit_code == 2


def test_two_runs_of_one_family_and_a_user_task_each_get_a_column(tmp_path):
    run = _tiny_pope_run(tmp_path, {})
    pope = json.loads((run / "pope" / "results.json").read_text())
    (run / "binary").mkdir()
    (run / "binary" / "results.json").write_text(
        json.dumps(pope | {"run": "binary", "family": "pope", "metrics": {"random": {"f1": 0.4}}})
    )
    (run / "mine").mkdir()
    user = {"run": "mine", "task": "mine", "family": None, "metrics": {"exact_match": 0.25, "rouge_l": 30.0}}
    (run / "mine" / "results.json").write_text(json.dumps(user))
    report = load_run(run)
    assert report.tasks["pope"].headline == 0.8 and report.tasks["binary"].headline == 0.4
    assert report.tasks["binary"].kind == "pope" and report.tasks["mine"].headline == 0.25
    md = build_report([run], tmp_path / "out")[0].read_text()
    assert "binary (F1, random only)" in md and "mine (exact_match)" in md


def _demo_with_curve(root):
    """A demo folder as ``graft demo`` now leaves it: summary with diagnostics, and a learning curve
    whose last line a kill cut short."""
    root.mkdir()
    summary = {
        "binary/accuracy": 0.9,
        "binary/accuracy_blind": 0.55,
        "mcq/accuracy": 0.7,
        "mcq/accuracy_blind": 0.3,
        "qtype/binary_color/accuracy": 0.95,
        "qtype/binary_count/accuracy": 0.6,
        "qtype/mcq_shape/accuracy": 0.8,
        "qtype/mcq_shape/accuracy_blind": 0.2,
        "qtype/mcq_shape/n": 40,
        "probe/shape_acc": 0.97,
        "probe/shape_chance": 0.34,
        "probe/color_acc": 0.99,
        "caption/exact": 0.42,
        "caption/object_recall": 0.8,
        "stage1/final_loss": 1.25,
        "binary/accuracy_text": 0.98,
        "mcq/accuracy_text": 0.91,
        "binary/accuracy_exact_tokens": 0.88,
        "time/total_s": 12.0,
    }
    (root / "summary.json").write_text(json.dumps(summary))
    points = [
        {"step": 0, "binary/accuracy": 0.5, "binary/accuracy_blind": 0.5, "mcq/accuracy": 0.25},
        {
            "step": 20,
            "binary/accuracy": 0.75,
            "binary/accuracy_blind": 0.52,
            "mcq/accuracy": 0.5,
            "mcq/accuracy_blind": 0.28,
        },
        {
            "step": 40,
            "binary/accuracy": 0.9,
            "binary/accuracy_blind": 0.55,
            "mcq/accuracy": 0.7,
            "mcq/accuracy_blind": 0.3,
        },
    ]
    lines = "".join(json.dumps(p) + "\n" for p in points)
    (root / "curve.jsonl").write_text(lines + '{"step": 60, "binary/accur')
    return root


def test_demo_report_curve_diagnostics_and_blind_bars(tmp_path):
    demo = _demo_with_curve(tmp_path / "demo")
    run = load_run(demo)
    assert [p["step"] for p in run.curve] == [0, 20, 40]  # the torn line is skipped
    assert run.tasks["demo/mcq"].categories == {"shape": 0.8}  # blind and counts are no types

    md_path, html_path = build_report([demo], tmp_path / "out")
    md = md_path.read_text()
    assert "learning curve" in md
    assert "| 0 | 0.500 | 0.500 | 0.250 | - |" in md  # a missing key shows as "-"
    assert "| 20 | 0.750 | 0.520 | 0.500 | 0.280 |" in md
    assert "| 40 | 0.900 | 0.550 | 0.700 | 0.300 |" in md
    assert "| all | 0.900 | 0.550 | 0.50 |" in md  # with images, blind, chance side by side
    assert "| shape (40) | 0.800 | 0.200 | 0.25 |" in md  # the type's count beside its name
    assert "| probe/shape_acc | 0.970 (chance 0.340) | vision probe" in md
    assert "| binary/accuracy_text | 0.980 (with images 0.900) | text upper bound" in md
    assert "| binary/accuracy_exact_tokens | 0.880 (with images 0.900) | exact-token bound" in md
    assert "caption/exact" in md and "stage1/final_loss" in md and "probe/size_acc" not in md

    page = html_path.read_text()
    assert not re.search(r"""(src|href)\s*=\s*['"](?!data:)""", page)
    assert (
        "alt='Line chart: demo: accuracy during stage 2; its points are in the table below' src='data:"
        in page
    )
    assert page.count("data:image/png;base64,") == 3  # binary bars, mcq bars, the curve
    assert "Demo diagnostics" in page and "frozen vision tower" in page and "0.420" in page
    assert "class='wide'" in page and "overflow-x:auto" in page


def test_demo_bar_series_put_blind_beside_seeing_against_chance(tmp_path):
    from graft.report.demo import bar_series, curve_series

    run = load_run(_demo_with_curve(tmp_path / "demo"))
    binary = bar_series("binary", [run])
    assert binary.chance == 0.5 and binary.groups == ["all", "color", "count"]
    seeing, blind = binary.series
    assert (seeing.label, seeing.values, seeing.blind) == ("with images", [0.9, 0.95, 0.6], False)
    # no per-type blind keys: the overall blind accuracy stands beside "all", no bars elsewhere
    assert blind.blind and blind.values[0] == 0.55 and all(v != v for v in blind.values[1:])
    mcq = bar_series("mcq", [run])
    assert mcq.chance == 0.25 and mcq.groups == ["all", "shape"]
    # a type's count where the summary has it: "shape (40)"; the format's whole file has none here
    assert mcq.labels == ["all", "shape (40)"] and binary.labels == binary.groups
    assert [s.values for s in mcq.series] == [[0.7, 0.8], [0.3, 0.2]]
    other = load_run(_tiny_demo(tmp_path / "other"))
    both = bar_series("binary", [run, other])
    assert [s.label for s in both.series][::2] == ["demo: with images", "other: with images"]
    assert [s.run for s in both.series] == [0, 0, 1, 1]  # a run's two series share a colour
    assert bar_series("mcq", [run, other]).labels == ["all", "shape"]  # "other" holds no count
    assert bar_series("mcq", [load_run(_tiny_pope_run(tmp_path, {}))]) is None

    lines = {label: (steps, values, style) for label, steps, values, style in curve_series(run.curve)}
    assert lines["binary with images"] == ([0, 20, 40], [0.5, 0.75, 0.9], "-")
    assert lines["mcq blind"] == ([20, 40], [0.28, 0.3], "--")


def test_wide_results_table_fits_the_page(tmp_path):
    demo = _tiny_demo(tmp_path / "demo")
    run = _tiny_pope_run(tmp_path, {})
    pope = json.loads((run / "pope" / "results.json").read_text())
    for i in range(8):
        (run / f"pope_{i}").mkdir()
        (run / f"pope_{i}" / "results.json").write_text(json.dumps(pope | {"run": f"pope_{i}"}))
    page = build_report([run, demo], tmp_path / "out")[1].read_text()
    assert "<table class='results many'" in page and "table-layout:fixed" in page
    assert "demo/<wbr>binary_<wbr>blind<br><small>" in page  # long headers break at separators
