"""``build_report``: run folders and demo summaries -> ``report.md`` and a self-contained ``report.html``.

A source is either an eval run folder (``{task}/results.json`` beside ``predictions.jsonl``, see
``graft.eval.runner``) or a ``graft demo`` output (its flat ``summary.json``, see
``graft.report.demo``). Each task family gets one headline number per run, so models line up
in a single table (what it measures: ``HEADLINES``; how it is read: ``headline_and_categories``),
and bars per category.

A column is one task name and what its headline measures (``Column``): two runs share it only
when both agree, so a limited POPE (``F1, adversarial only``) never stands under a full one's
``mean F1``, nor ``graft evaluate``'s ``binary`` accuracy under the demo's POPE-scored ``binary``.
A run that answered only part of its benchmark is listed under the table with how much.

Failures (``failures.py``) are listed only where a sample is simply right or wrong.
"""

from __future__ import annotations

import io
import logging
import os
from html import escape
from pathlib import Path
from typing import NamedTuple

from graft.files import write_text_atomic
from graft.report import demo as report_demo
from graft.report import expert as expert_report
from graft.report.failures import failures
from graft.report.headline import CATEGORY_MEASURES, HEADLINES, headline_and_categories, headline_measure
from graft.report.model import (
    RunReport,
    TaskReport,
    data_uri,
    figure,
    fmt,
    md_table,
    png,
)
from graft.report.results import read_results

logger = logging.getLogger(__name__)


def load_run(path: str | os.PathLike, max_failures: int = 5) -> RunReport:
    """A run folder (``*/results.json``), a demo folder or a demo ``summary.json`` -> its report."""
    path = Path(path)
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
                measure=headline_measure(family, metrics),
                scope=scope,
            )
            run.config_hash = run.config_hash or results.get("model_config_hash", "")
            run.version = run.version or results.get("graft_version", "")
    if not run.tasks and path.is_file():
        raise ValueError(
            f"{path}: no demo numbers (binary/accuracy, mcq/accuracy) in it; for an eval run give "
            "its folder, the one holding {task}/results.json"
        )
    if not run.tasks:
        raise FileNotFoundError(f"{path}: neither a summary.json nor any */results.json found")
    return run


class Column(NamedTuple):
    """A results column: a task name and what its headline is; runs share one only when both agree."""

    name: str
    kind: str
    measure: str


def _column(name: str, task: TaskReport) -> Column:
    kind = task.kind or name
    return Column(name, kind, task.measure or HEADLINES.get(kind, "score"))


def _columns(runs: list[RunReport]) -> list[Column]:
    return list(dict.fromkeys(_column(name, task) for run in runs for name, task in run.tasks.items()))


def _task(run: RunReport, col: Column) -> TaskReport | None:
    """``run``'s task in column ``col``; None when it has none, or one that measures otherwise."""
    task = run.tasks.get(col.name)
    return task if task is not None and _column(col.name, task) == col else None


def _name(col: Column, cols: list[Column]) -> str:
    """The column's task name, with its scoring family when another column of that name has another."""
    shared = any(c.name == col.name and c.kind != col.kind for c in cols)
    return f"{col.name} ({col.kind})" if shared else col.name


def _label(col: Column, cols: list[Column]) -> str:
    """A results column's heading: ``pope (mean F1)``, ``binary (questions, accuracy)``."""
    name = _name(col, cols)
    return f"{name[:-1]}, {col.measure})" if name != col.name else f"{name} ({col.measure})"


def _title(col: Column, cols: list[Column]) -> str:
    """A per-category section's name: the task's, or its column's heading when the name is shared."""
    return _label(col, cols) if sum(c.name == col.name for c in cols) > 1 else col.name


def _headlines(run: RunReport, cols: list[Column]) -> list[str]:
    return [fmt(task.headline) if (task := _task(run, c)) else "-" for c in cols]


def _scopes(runs: list[RunReport], cols: list[Column]) -> list[str]:
    """``run / task: limited run: ...`` for every task that answered only part of its benchmark."""
    return [
        f"{r.name} / {_title(_column(name, t), cols)}: {t.scope}"
        for r in runs
        for name, t in r.tasks.items()
        if t.scope
    ]


def _categories(col: Column, runs: list[RunReport]) -> list[str]:
    return sorted({c for r in runs if (t := _task(r, col)) for c in t.categories})


def render_markdown(runs: list[RunReport]) -> str:
    cols = _columns(runs)
    lines = [
        "# graft evaluation report",
        "",
        *md_table(
            ["model", *(_label(c, cols) for c in cols)], [[r.name, *_headlines(r, cols)] for r in runs]
        ),
    ]
    lines += ["", "Sources:"] + [
        f"- {r.name}: `{r.source}` {r.config_hash} {r.version}".rstrip() for r in runs
    ]
    if _scopes(runs, cols):
        lines += ["", "Partial runs (their numbers are of the samples answered):"]
        lines += [f"- {scope}" for scope in _scopes(runs, cols)]
    for col in cols:
        if col.name in report_demo.FAMILIES:
            lines += report_demo.category_markdown(col.name, runs)
            continue
        rows = [
            [c, *(fmt(t.categories.get(c)) if (t := _task(r, col)) else "-" for r in runs)]
            for c in _categories(col, runs)
        ]
        if rows:
            lines += [
                "",
                f"## {_title(col, cols)} per category: {CATEGORY_MEASURES.get(col.kind, 'score')}",
                "",
                *md_table(["category", *(r.name for r in runs)], rows),
            ]
    lines += report_demo.render_markdown(runs)
    lines += ["", "## Failures"]
    for run in runs:
        for name, task in run.tasks.items():
            if task.failures or task.note:
                title = _title(_column(name, task), cols)
                lines += ["", f"### {run.name} / {title}" + (f" ({task.note})" if task.note else "")]
            for f in task.failures:
                imgs = ", ".join(f"`{p}`" for p in f.images)
                answer = f"**{_one_line(f.prediction)}** (target {f.target})"
                lines.append(f"- `{f.id}`: {_one_line(f.question)} -> {answer} {imgs}")
    return "\n".join(lines) + "\n"


def _one_line(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def bar_chart_png(col: Column, runs: list[RunReport], title: str) -> bytes | None:
    """Grouped bars, one group per category and one bar per run of column ``col``; None when no
    run has categories."""
    tasks = [(r, t) for r in runs if (t := _task(r, col))]  # the legend names only runs with bars
    cats = _categories(col, runs)
    if not cats:
        return None
    fig = figure(max(4.0, 0.6 * len(cats) * max(1, len(tasks)) + 1.5), 3.2, "tight")
    ax = fig.subplots()
    width = 0.8 / max(1, len(tasks))
    for i, (run, task) in enumerate(tasks):
        # a category a run lacks gets no bar (NaN), not a misleading zero
        values = [task.categories.get(c, float("nan")) for c in cats]
        drawn = ax.bar([x + i * width for x in range(len(cats))], values, width, label=run.name)
        # a value on every bar: a zero must read as 0, not as a bar that is missing
        ax.bar_label(drawn, ["" if v != v else f"{v:.3g}" for v in values], fontsize=6)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(cats))], cats, rotation=30, ha="right", fontsize=8)
    ax.margins(y=0.12)  # room for the top bar's label (bars keep their floor at zero)
    ax.set_ylabel(CATEGORY_MEASURES.get(col.kind, "score"), fontsize=8)
    ax.set_title(f"{title} per category")
    ax.legend(fontsize=7)
    return png(fig)


def thumbnail_uri(path: Path, size: int = 160) -> str | None:
    """A small JPEG of ``path`` as a data URI; None when it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            img.thumbnail((size, size))
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=80)
    except OSError as err:
        logger.warning("%s: cannot read image for the report: %s", path, err)
        return None
    return data_uri(buf.getvalue(), "image/jpeg")


#: the page's style; wide tables scroll inside their own box instead of running off the page
_CSS = (
    "body{font-family:sans-serif;margin:2em}img{max-width:100%;height:auto}"
    ".wide{max-width:100%;overflow-x:auto}table{border-collapse:collapse;max-width:100%}"
    "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child{text-align:left}"
    "th{vertical-align:bottom;overflow-wrap:anywhere;word-wrap:break-word}"
    "th small{font-weight:normal;color:#555}"
    "table.many{width:100%;table-layout:fixed;font-size:12px}table.many td,table.many th{padding:3px 4px}"
    "table.many col.model{width:11em}table.many td:first-child{overflow-wrap:anywhere}"
    ".text{text-align:left;max-width:40em}"
    ".fail{border-top:1px solid #eee;padding:6px 0}.fail img{margin-right:6px}"
)


def _header(col: Column, cols: list[Column]) -> str:
    """A results column's heading: the name, breakable at its separators, over what it measures."""
    name = escape(_name(col, cols)).replace("/", "/<wbr>").replace("_", "_<wbr>")
    return f"{name}<br><small>{escape(col.measure)}</small>"


def render_html(runs: list[RunReport]) -> str:
    """One page with everything inline: table, charts and thumbnails as data URIs, no links out."""
    cols = _columns(runs)
    many = len(cols) > 5  # then: fixed layout, smaller type, wrapped headers
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>graft evaluation report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>graft evaluation report</h1><div class='wide'>",
        f"<table class='results{' many' if many else ''}' style='min-width:{8 + 4.5 * len(cols):g}em'>"
        "<colgroup><col class='model'></colgroup><tr><th>model</th>",
    ]
    parts += [f"<th>{_header(c, cols)}</th>" for c in cols] + ["</tr>"]
    for run in runs:
        cells = "".join(f"<td>{cell}</td>" for cell in _headlines(run, cols))
        title = escape(f"{run.source} {run.config_hash} {run.version}".strip())
        parts.append(f"<tr><td title='{title}'>{escape(run.name)}</td>{cells}</tr>")
    parts.append("</table></div>")
    if _scopes(runs, cols):
        parts.append("<p>Partial runs (their numbers are of the samples answered):</p><ul>")
        parts += [f"<li>{escape(scope)}</li>" for scope in _scopes(runs, cols)] + ["</ul>"]
    parts.append("<h2>Per category</h2>")
    for col in cols:
        demo = report_demo.FAMILIES.get(col.name)  # "binary" for "demo/binary"
        title = _title(col, cols)
        png = report_demo.bar_chart_png(demo, runs) if demo else bar_chart_png(col, runs, title)
        if png:
            parts.append(f"<div><img alt='{escape(title)} per category' src='{data_uri(png)}'></div>")
    parts += report_demo.render_html(runs)
    parts.append("<h2>Failures</h2>")
    for run in runs:
        for name, task in run.tasks.items():
            if not (task.failures or task.note):
                continue
            note = f" <small>({escape(task.note)})</small>" if task.note else ""
            title = escape(_title(_column(name, task), cols))
            parts.append(f"<details><summary>{escape(run.name)} / {title}{note}</summary>")
            for f in task.failures:
                imgs = "".join(
                    f"<img alt='{escape(p.name)}' src='{uri}'>" for p in f.images if (uri := thumbnail_uri(p))
                )
                parts.append(
                    f"<div class='fail'>{imgs}<br><code>{escape(f.id)}</code> "
                    f"<b>Q:</b> {escape(f.question)} <b>predicted:</b> {escape(f.prediction)} "
                    f"<b>target:</b> {escape(f.target)}</div>"
                )
            parts.append("</details>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


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
    out.mkdir(parents=True, exist_ok=True)
    md, page = out / "report.md", out / "report.html"
    write_text_atomic(md, render_markdown(runs))
    write_text_atomic(page, render_html(runs))
    # expert pipelines among the runs: end-to-end vs expert per run, with cost (expert_comparison.md)
    expert_report.write_comparison(sources, out)
    return md, page
