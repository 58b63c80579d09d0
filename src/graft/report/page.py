"""``render_html``: the report as one self-contained page: the results table, per task a chart
and its numbers, the demo's curve and diagnostics, failures with their images, all inline
(charts and thumbnails as data URIs, no links out) and readable from a phone to a wide screen."""

from __future__ import annotations

import io
import logging
import math
import textwrap
from html import escape
from pathlib import Path

from graft.report import demo as report_demo
from graft.report.columns import (
    Column,
    categories,
    category_table,
    column_of,
    columns,
    headlines,
    name,
    scopes,
    task_in,
    title,
)
from graft.report.failures import NONE_LISTED
from graft.report.headline import CATEGORY_MEASURES
from graft.report.model import RunReport, data_uri, figure, fmt, html_table, png

logger = logging.getLogger(__name__)

#: per run a hatch, so that bars are told apart without their colour
_HATCHES = ("", "//", "..", "xx", "\\\\", "oo")


def _short(text: str, size: int = 28) -> str:
    return text if len(text) <= size else text[: size - 1] + "…"


def value_range(values: list[float]) -> tuple[float, float]:
    """A bar chart's y limits: from zero (or below, for a negative value) with room above the
    top bar for its label; all zeros get a unit axis, not one around zero."""
    finite = [v for v in values if math.isfinite(v)]
    low, high = min([0.0, *finite]), max([0.0, *finite])
    if low == high:
        return 0.0, 1.0
    return low * 1.15, high * 1.15


def bar_chart_png(col: Column, runs: list[RunReport], heading: str) -> bytes | None:
    """Grouped bars, one group per category and one bar per run of column ``col`` (each run its
    colour and hatch, named in the legend below), every bar's value on it; None when no run has
    categories."""
    tasks = [(r, t) for r in runs if (t := task_in(r, col))]  # the legend names only runs with bars
    cats = categories(col, runs)
    if not cats:
        return None
    k = max(1, len(tasks))
    width_in = max(4.5, 0.6 * len(cats) * k + 1.5)
    fig = figure(width_in, 3.4 + 0.15 * math.ceil(k / 2), "constrained")
    ax = fig.subplots()
    width = 0.8 / k
    for i, (run, task) in enumerate(tasks):
        # a category a run lacks gets no bar (NaN), not a misleading zero
        values = [task.categories.get(c, float("nan")) for c in cats]
        xs = [x + (i - (k - 1) / 2) * width for x in range(len(cats))]
        drawn = ax.bar(xs, values, width, label=_short(run.name, 40), hatch=_HATCHES[i % len(_HATCHES)])
        # a value on every bar, as the tables print it: a zero must read as 0, not as a missing bar
        ax.bar_label(drawn, ["" if v != v else fmt(v) for v in values], fontsize=7)
    ax.set_xticks(range(len(cats)), [_short(c) for c in cats], rotation=30, ha="right", fontsize=8)
    ax.set_ylim(*value_range([v for _, t in tasks for v in t.categories.values()]))
    ax.set_ylabel(CATEGORY_MEASURES.get(col.kind, "score"), fontsize=8)
    ax.set_title(textwrap.fill(f"{heading} per category", int(width_in * 11)), fontsize=9)
    fig.legend(fontsize=7, loc="outside lower center", ncols=2, frameon=False)
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


#: the page's style; wide tables scroll inside their own box instead of running off the page,
#: long names and paths wrap
_CSS = (
    "body{font-family:sans-serif;margin:2em}img{max-width:100%;height:auto}"
    "@media (max-width:600px){body{margin:0.8em}}"
    ".wide{max-width:100%;overflow-x:auto}table{border-collapse:collapse;max-width:100%}"
    "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
    "th[scope=row],th[scope=col]:first-child{text-align:left}th[scope=row]{font-weight:normal}"
    "th[scope=col]{vertical-align:bottom;overflow-wrap:anywhere;word-wrap:break-word}"
    "th small{font-weight:normal;color:#555}code{overflow-wrap:anywhere}"
    "table.many{width:100%;table-layout:fixed;font-size:12px}table.many td,table.many th{padding:3px 4px}"
    "table.many col.model{width:11em}table.many th[scope=row]{overflow-wrap:anywhere}"
    "table.diag td:last-child,table.diag th:last-child{text-align:left;min-width:16em;max-width:40em}"
    ".fail{border-top:1px solid #eee;padding:6px 0;overflow-wrap:anywhere}.fail img{margin-right:6px}"
)


def _header(col: Column, cols: list[Column]) -> str:
    """A results column's heading: the name, breakable at its separators, over what it measures."""
    named = escape(name(col, cols)).replace("/", "/<wbr>").replace("_", "_<wbr>")
    return f"<th scope='col'>{named}<br><small>{escape(col.measure)}</small></th>"


def _results(runs: list[RunReport], cols: list[Column]) -> list[str]:
    many = len(cols) > 5  # then: fixed layout, smaller type, wrapped headers
    parts = [
        f"<div class='wide'><table class='results{' many' if many else ''}' "
        f"style='min-width:{8 + 6.5 * len(cols):g}em'><colgroup><col class='model'></colgroup>"
        "<thead><tr><th scope='col'>model</th>",
        *(_header(c, cols) for c in cols),
        "</tr></thead><tbody>",
    ]
    for run in runs:
        cells = "".join(f"<td>{cell}</td>" for cell in headlines(run, cols))
        parts.append(f"<tr><th scope='row'>{escape(run.name)}</th>{cells}</tr>")
    parts.append("</tbody></table></div><p>Sources:</p><ul>")
    for run in runs:
        more = escape(f" {run.config_hash} {run.version}".rstrip())
        parts.append(f"<li>{escape(run.name)}: <code>{escape(str(run.source))}</code>{more}</li>")
    parts.append("</ul>")
    if scopes(runs, cols):
        parts.append("<p>Partial runs (their numbers are of the samples answered):</p><ul>")
        parts += [f"<li>{escape(scope)}</li>" for scope in scopes(runs, cols)] + ["</ul>"]
    return parts


def _per_category(col: Column, runs: list[RunReport], cols: list[Column]) -> list[str]:
    """Column ``col``'s chart under its heading, and the chart's numbers in a table."""
    demo = report_demo.FAMILIES.get(col.name)  # "binary" for "demo/binary"
    heading = title(col, cols)
    if demo:
        chart = report_demo.bar_chart_png(demo, runs)
        head, rows = report_demo.category_table(col.name, runs)
        measure = "accuracy with images vs blind vs chance"
    else:
        chart = bar_chart_png(col, runs, heading)
        head, rows = category_table(col, runs)
        measure = CATEGORY_MEASURES.get(col.kind, "score")
    if chart is None:
        return []
    about = f"{heading} per category: {measure}"
    return [
        f"<h3>{escape(about)}</h3>",
        f"<div><img alt='Bar chart: {escape(about)}; its numbers are in the table below' "
        f"src='{data_uri(chart)}'></div>",
        f"<details><summary>numbers</summary>{html_table(head, rows)}</details>",
    ]


def _failures(runs: list[RunReport], cols: list[Column]) -> list[str]:
    parts = ["<h2>Failures</h2>"]
    listed = [(run, n, task) for run in runs for n, task in run.tasks.items() if task.failures or task.note]
    if not listed:
        parts.append(f"<p>{NONE_LISTED}</p>")
    for run, n, task in listed:
        note = f" <small>({escape(task.note)})</small>" if task.note else ""
        heading = escape(title(column_of(n, task), cols))
        parts.append(f"<details><summary>{escape(run.name)} / {heading}{note}</summary>")
        for f in task.failures:
            imgs = []
            for j, p in enumerate(f.images, 1):
                uri = thumbnail_uri(p)
                what = escape(f"image {j} of {len(f.images)} shown with {f.id} ({p.name})")
                imgs.append(
                    f"<img alt='{what}' src='{uri}'>" if uri else f"<small>[{what}: not found]</small> "
                )
            parts.append(
                f"<div class='fail'>{''.join(imgs)}<br><code>{escape(f.id)}</code> "
                f"<b>Q:</b> {escape(f.question)} <b>predicted:</b> {escape(f.prediction)} "
                f"<b>target:</b> {escape(f.target)}</div>"
            )
        parts.append("</details>")
    return parts


def render_html(runs: list[RunReport]) -> str:
    """One page with everything inline: table, charts and thumbnails as data URIs, no links out."""
    cols = columns(runs)
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>graft evaluation report</title><style>{_CSS}</style></head><body>",
        "<h1>graft evaluation report</h1>",
        *_results(runs, cols),
    ]
    charts = [part for col in cols for part in _per_category(col, runs, cols)]
    if charts:
        parts += ["<h2>Per category</h2>", *charts]
    parts += report_demo.render_html(runs)
    parts += _failures(runs, cols)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
