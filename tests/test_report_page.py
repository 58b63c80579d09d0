"""``graft report`` as a reader meets it: a page that phones lay out, whose tags balance, whose
tables have header cells, whose every chart has its heading and its numbers in a table, whose
images say what they show; hostile names and answers shown as text in the HTML and the markdown;
unfinished runs and empty sections said in words."""

import json
import re
from html.parser import HTMLParser

import pytest
from typer.testing import CliRunner

from graft.cli import app
from graft.report.build import build_report, load_run
from test_report import _demo_with_curve, _ids, _tiny_pope_run
from test_report_inputs import _questions_run

EVIL = "<script>alert(1)</script> \"q\" & 'a' | *b* [l](x)"


class _Page(HTMLParser):
    """What a browser would make of the page: tags closed out of order or left open, headings,
    tables and their header cells, images."""

    VOID = {"br", "img", "meta", "col", "wbr"}

    def __init__(self, page: str):
        super().__init__()
        self.open, self.misnested, self.tags = [], [], []
        self.headings, self.tables, self.images, self._text = [], [], [], None
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs))
        if tag == "table":
            self.tables.append(0)
        if tag == "th":
            self.tables[-1] += 1
        if tag in ("h1", "h2", "h3"):
            self._text = [tag, ""]
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_endtag(self, tag):
        if not self.open or self.open.pop() != tag:
            self.misnested.append(tag)
        if self._text and tag == self._text[0]:
            self.headings.append(tuple(self._text))
            self._text = None

    def handle_data(self, data):
        if self._text:
            self._text[1] += data


def _hostile_runs(tmp_path):
    """A POPE run named and answered with markup, a user task named so, a demo and a question run."""
    run = _tiny_pope_run(tmp_path, {})
    (run / "pope" / "predictions.jsonl").write_text(
        "".join(json.dumps({"id": i, "prediction": f"Yes {EVIL}"}) + "\n" for i in _ids(run))
    )
    hostile = tmp_path / "m<b>&'\"x|y"
    run.rename(hostile)
    (hostile / "u").mkdir()
    user = {"run": EVIL, "task": "mine", "metrics": {"exact_match": 0.25, "rouge_l": 0.5}}
    (hostile / "u" / "results.json").write_text(json.dumps(user))
    return [hostile, _demo_with_curve(tmp_path / "demo"), _questions_run(tmp_path / "q")]


def test_the_page_is_well_formed_outlined_and_laid_out_for_phones(tmp_path):
    page = build_report(_hostile_runs(tmp_path), tmp_path / "out")[1].read_text()
    seen = _Page(page)
    assert seen.misnested == [] and seen.open == []
    assert "<meta name='viewport' content='width=device-width, initial-scale=1'>" in page
    assert page.startswith("<!doctype html><html lang='en'>")
    assert "script" not in seen.tags  # the markup in names and answers is text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &quot;q&quot; &amp; &#x27;a&#x27;" in page
    # every chart under its own heading, the headings an outline: h1, h2 sections, h3 charts
    levels = [h for h, _ in seen.headings]
    assert levels[0] == "h1" and levels.count("h1") == 1 and levels[1] == "h2"
    charts = [text for h, text in seen.headings if h == "h3"]
    assert "pope per category: F1" in charts and "binary per category: accuracy per question type" in charts
    assert any(t.startswith(EVIL) for t in charts) and "demo: accuracy during stage 2" in charts
    assert all(th > 0 for th in seen.tables)  # every table has header cells
    for img in seen.images:
        assert img["src"].startswith("data:image/") and img["alt"].strip()
    assert "<li>demo: <code>" in page  # where each run was read from, not only in a tooltip


def test_every_chart_has_its_numbers_in_a_table(tmp_path):
    page = build_report(_hostile_runs(tmp_path), tmp_path / "out")[1].read_text()
    charts = page.count("data:image/png;base64,")
    assert charts == page.count("<details><summary>numbers</summary>") + 1  # the curve: its points
    # the numbers under pope's chart are results.json's (random split F1 0.8)
    pope = page[page.index("<h3>pope per category") :]
    table = pope[pope.index("<table>") : pope.index("</table>")]
    assert "<th scope='col'>m&lt;b&gt;&amp;&#x27;&quot;x|y</th>" in table
    assert "<th scope='row'>random</th><td>0.800</td>" in table
    binary = page[page.index("<h3>demo/binary per category") :]
    assert "<th scope='row'>all</th><td>0.900</td><td>0.550</td><td>0.50</td>" in binary


def test_markup_in_names_and_answers_is_text_in_the_markdown(tmp_path):
    md = build_report(_hostile_runs(tmp_path), tmp_path / "out")[0].read_text()
    text = re.sub(r"`[^`]*`", "", md)  # outside code spans (paths, ids), which show as written
    assert "<script>" not in text and "<b>" not in text and "<image>" not in text
    assert "`/tmp/" in md and "(target no) `" in md
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in md and r"\*b\* \[l\](x)" in md
    # a "|" in a name stays in its cell: every row of a table has as many cells as its header
    for table in re.findall(r"(?:^\|.*\|\n)+", md, flags=re.M):
        widths = {len(re.split(r"(?<!\\)\|", row)) for row in table.splitlines()}
        assert len(widths) == 1, table
    assert "| m&lt;b&gt;&amp;'\"x\\|y | 0.800 | 0.250 |" in md


def test_failure_images_say_what_they_show_or_that_they_are_gone(tmp_path):
    run = _tiny_pope_run(tmp_path, {})
    (run / "pope" / "predictions.jsonl").write_text(
        "".join(json.dumps({"id": i, "prediction": "Yes"}) + "\n" for i in _ids(run))
    )
    (tmp_path / "pope_data" / "images" / "2.png").unlink()
    page = build_report([run], tmp_path / "out")[1].read_text()
    assert "alt='image 1 of 1 shown with random/1 (0.png)' src='data:image/jpeg;base64," in page
    assert "[image 1 of 1 shown with random/3 (2.png): not found]" in page


def test_unfinished_tasks_are_listed_and_a_run_of_only_those_still_reports(tmp_path):
    run = _tiny_pope_run(tmp_path, {})
    (run / "mme").mkdir()
    (run / "mme" / "predictions.jsonl").write_text('{"id": "a", "prediction": "yes"}\n{"id": "b"}\n')
    md = build_report([run], tmp_path / "out")[0].read_text()
    assert "- run / mme: 2 answers, no results.json yet (still running, or stopped)" in md
    (run / "pope" / "results.json").unlink()
    assert load_run(run).unfinished[0].startswith("mme: 2 answers")  # a row of "-", and why
    md, page = build_report([run], tmp_path / "out")
    assert "| run |" in md.read_text() and "pope: 0 answers, no results.json yet" in page.read_text()


def test_an_empty_folder_or_a_demo_without_accuracies_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    said = CliRunner().invoke(app, ["report", str(tmp_path / "empty"), "--out", str(tmp_path / "r")])
    assert said.exit_code == 2 and "no summary.json and no */results.json found" in said.output
    (tmp_path / "empty" / "summary.json").write_text('{"probe/shape_acc": 0.9}')  # a demo cut short
    said = CliRunner().invoke(app, ["report", str(tmp_path / "empty"), "--out", str(tmp_path / "r")])
    assert said.exit_code == 2 and "summary.json has no accuracies (binary/accuracy" in said.output
    said = CliRunner().invoke(app, ["report", str(tmp_path / "gone"), "--out", str(tmp_path / "r")])
    assert said.exit_code == 2 and "no such run folder or summary.json" in said.output


def test_a_report_without_right_or_wrong_samples_says_so(tmp_path):
    from graft.report.failures import NONE_LISTED

    md, page = build_report([_demo_with_curve(tmp_path / "demo")], tmp_path / "out")
    assert f"## Failures\n\n{NONE_LISTED}\n" in md.read_text()
    assert f"<h2>Failures</h2>\n<p>{NONE_LISTED}</p>" in page.read_text()


def test_a_blind_run_gets_its_own_column(tmp_path):
    seeing = _tiny_pope_run(tmp_path / "a", {})
    blind = _tiny_pope_run(tmp_path / "b", {})
    results = json.loads((blind / "pope" / "results.json").read_text())
    (blind / "pope" / "results.json").write_text(json.dumps(results | {"blind": True}))
    blind = blind.rename(tmp_path / "b" / "blind")
    md = build_report([seeing, blind], tmp_path / "out")[0].read_text()
    assert "| model | pope (F1, random only) | pope (F1, random only, images blanked) |" in md
    assert "| run | 0.800 | - |" in md and "| blind | - | 0.800 |" in md


def test_bars_stand_on_zero_and_all_zeros_get_a_unit_axis():
    from graft.report.page import value_range

    assert value_range([0.0, 0.0]) == (0.0, 1.0)  # not an axis from -0.06 to 0.06
    assert value_range([0.5, 0.8, float("nan")]) == (0.0, pytest.approx(0.92))
    assert value_range([-2.0, 4.0]) == (pytest.approx(-2.3), pytest.approx(4.6))


def test_the_curve_tells_the_formats_apart_without_their_colour():
    from graft.report.demo import CHANCE, CURVE_MARKERS

    assert set(CURVE_MARKERS) == set(CHANCE) and len(set(CURVE_MARKERS.values())) == len(CHANCE)


def test_a_run_without_its_data_says_which_part_is_missing(tmp_path):
    (tmp_path / "run" / "pope").mkdir(parents=True)
    (tmp_path / "run" / "pope" / "results.json").write_text('{"task": "pope", "metrics": {}}')
    note = load_run(tmp_path / "run").tasks["pope"].note
    assert (
        note
        == "benchmark data (results.json names none) and predictions.jsonl not found; failures not listed"
    )
    (tmp_path / "run" / "pope" / "predictions.jsonl").write_text("")
    assert (
        load_run(tmp_path / "run")
        .tasks["pope"]
        .note.startswith("benchmark data (results.json names none) not")
    )


def test_runs_in_folders_of_one_name_are_told_apart(tmp_path):
    for parent in ("a/x", "b/x", "c"):
        (tmp_path / parent).mkdir(parents=True)
    first = _demo_with_curve(tmp_path / "a" / "x" / "demo")
    second = _demo_with_curve(tmp_path / "b" / "x" / "demo")
    other = _demo_with_curve(tmp_path / "c" / "other")
    md = build_report([first, second / "summary.json", other], tmp_path / "out")[0].read_text()
    assert "| a/x/demo | 0.900 |" in md and "| b/x/demo | 0.900 |" in md and "| other | 0.900 |" in md
    assert "| category | a/x/demo | b/x/demo | other | a/x/demo blind |" in md
