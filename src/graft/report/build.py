"""``build_report``: run folders and demo summaries -> ``report.md`` and a self-contained ``report.html``.

A source is either an eval run folder (``{task}/results.json`` beside ``predictions.jsonl``, see
``graft.eval.runner``) or a ``graft demo`` output (its flat ``summary.json``, see
``graft.report.demo``). Each task family gets one headline number per run, so models line up
in a single table (what it measures: ``HEADLINES``; how it is read: ``headline_and_categories``),
and bars per category.

A column is one task name and what its headline measures (``columns.Column``). A run that
answered only part of its benchmark is listed under the table with how much, and so is a task
folder that holds answers but no ``results.json`` yet (a run still going, or killed). The HTML
page is ``page.py``'s.

Failures (``failures.py``) are listed only where a sample is simply right or wrong.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from graft.files import write_text_atomic
from graft.report import demo as report_demo
from graft.report import expert as expert_report
from graft.report.columns import category_table, column_of, columns, headlines, label, scopes, title
from graft.report.failures import NONE_LISTED, failures
from graft.report.headline import CATEGORY_MEASURES, headline_and_categories, headline_measure
from graft.report.model import RunReport, TaskReport, md_code, md_table, md_text
from graft.report.page import render_html
from graft.report.results import read_results

logger = logging.getLogger(__name__)


def load_run(path: str | os.PathLike, max_failures: int = 5) -> RunReport:
    """A run folder (``*/results.json``), a demo folder or a demo ``summary.json`` -> its report."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such run folder or summary.json")
    summary = path if path.is_file() else path / "summary.json"
    run = RunReport(name=(path.parent if path.is_file() else path).name, source=path)
    if summary.is_file():
        report_demo.add_demo(run, summary)
    if path.is_dir():
        for results_path in sorted(path.glob("*/results.json")):
            results = read_results(results_path)
            name = results.get("run", results.get("task", results_path.parent.name))
            family = results.get("family") or results.get("task", name)
            metrics = results.get("metrics", {})
            head, cats = headline_and_categories(family, metrics)
            found = failures(family, results, results_path.parent, max_failures)
            scope = ""
            if found.answered < found.total:
                scope = f"limited run: {found.answered} of {found.total} samples answered"
            elif not found.total and results.get("limit") is not None:  # the benchmark was not re-read
                scope = f"limited run: at most {results['limit']} samples (--limit)"
            run.tasks[name] = TaskReport(
                name,
                head,
                cats,
                found.listed,
                found.note,
                kind=family,
                # a blind run's number never stands under a seeing one's: its own column
                measure=headline_measure(family, metrics)
                + (", images blanked" if results.get("blind") else ""),
                scope=scope,
            )
            run.config_hash = run.config_hash or results.get("model_config_hash", "")
            run.version = run.version or results.get("graft_version", "")
        run.unfinished = _unfinished(path)
    if not run.tasks and path.is_file():
        raise ValueError(
            f"{path}: no demo numbers (binary/accuracy, mcq/accuracy) in it; for an eval run give "
            "its folder, the one holding {task}/results.json"
        )
    if not run.tasks and not run.unfinished:
        demo = f"{summary} has no accuracies (binary/accuracy, mcq/accuracy)" if summary.is_file() else ""
        raise FileNotFoundError(f"{path}: {demo or 'no summary.json'} and no */results.json found")
    return run


def _unfinished(folder: Path) -> list[str]:
    """``task: N answers, no results.json yet`` for each task folder of ``folder`` that has answers
    but no results (``graft eval`` writes ``results.json`` last)."""
    found = []
    for preds in sorted(folder.glob("*/predictions.jsonl")):
        if not (preds.parent / "results.json").exists():
            with preds.open("rb") as lines:
                answers = sum(1 for line in lines if line.strip())
            found.append(
                f"{preds.parent.name}: {answers} answers, no results.json yet (still running, or stopped)"
            )
    return found


def distinct_names(runs: list[RunReport]) -> None:
    """Runs whose folders share a name (``a/demo``, ``b/demo``) are named with as many of the
    folders above as tell them apart; two rows, legends or columns named alike would be read as one."""
    folders = [(r.source.parent if r.source.is_file() else r.source).resolve() for r in runs]
    for depth in range(2, max(len(f.parts) for f in folders) + 1):
        names = [r.name for r in runs]
        clash = {n for n in names if names.count(n) > 1}
        if not clash:
            return
        for run, folder in zip(runs, folders, strict=True):
            if run.name in clash:
                run.name = str(Path(*folder.parts[-depth:]))


def render_markdown(runs: list[RunReport]) -> str:
    cols = columns(runs)
    lines = [
        "# graft evaluation report",
        "",
        *md_table(["model", *(label(c, cols) for c in cols)], [[r.name, *headlines(r, cols)] for r in runs]),
    ]
    lines += ["", "Sources:"] + [
        f"- {md_text(r.name)}: {md_code(str(r.source))} {r.config_hash} {r.version}".rstrip() for r in runs
    ]
    if scopes(runs, cols):
        lines += ["", "Partial runs (their numbers are of the samples answered):"]
        lines += [f"- {md_text(scope)}" for scope in scopes(runs, cols)]
    for col in cols:
        if col.name in report_demo.FAMILIES:
            lines += report_demo.category_markdown(col.name, runs)
            continue
        head, rows = category_table(col, runs)
        if rows:
            measure = CATEGORY_MEASURES.get(col.kind, "score")
            lines += [
                "",
                f"## {md_text(title(col, cols))} per category: {measure}",
                "",
                *md_table(head, rows),
            ]
    lines += report_demo.render_markdown(runs)
    lines += ["", "## Failures"]
    listed = [(run, n, task) for run in runs for n, task in run.tasks.items() if task.failures or task.note]
    if not listed:
        lines += ["", NONE_LISTED]
    for run, n, task in listed:
        heading = f"{run.name} / {title(column_of(n, task), cols)}" + (f" ({task.note})" if task.note else "")
        lines += ["", f"### {md_text(heading)}"]
        for f in task.failures:
            imgs = ", ".join(md_code(str(p)) for p in f.images)
            answer = f"**{md_text(f.prediction)}** (target {md_text(f.target)})"
            lines.append(f"- {md_code(f.id)}: {md_text(f.question)} -> {answer} {imgs}".rstrip())
    return "\n".join(lines) + "\n"


def build_report(
    sources: list[str | os.PathLike], out_dir: str | os.PathLike, max_failures: int = 5
) -> tuple[Path, Path]:
    """Read every source, write ``report.md`` and ``report.html`` into ``out_dir``; returns both paths.
    When a source holds an expert-pipeline run, ``expert_comparison.md`` is written beside them."""
    out = Path(out_dir)
    # before any run is read, and leaving nothing behind: an --out that cannot be a folder
    existing = next((p for p in (out, *out.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ValueError(f"--out {out}: not a folder ({existing} is a file)")
    runs = [load_run(s, max_failures) for s in sources]
    distinct_names(runs)
    out.mkdir(parents=True, exist_ok=True)
    md, page = out / "report.md", out / "report.html"
    write_text_atomic(md, render_markdown(runs))
    write_text_atomic(page, render_html(runs))
    # expert pipelines among the runs: end-to-end vs expert per run, with cost (expert_comparison.md)
    expert_report.write_comparison(sources, out)
    return md, page
