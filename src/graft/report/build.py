"""``build_report``: run folders and demo summaries -> ``report.md`` and a self-contained ``report.html``.

A source is either an eval run folder (``{task}/results.json`` beside ``predictions.jsonl``, see
``graft.eval.runner``) or a ``graft demo`` output (its flat ``summary.json``, see
``graft.report.demo``). Each task family gets one headline number per run, so models line up
in a single table (what it measures: ``HEADLINES``; how it is read: ``headline_and_categories``),
and bars per category.

Failures are listed only where a sample is simply right or wrong: POPE and MME (the official
yes/no reading of the answer against the label) and the multiple-choice tasks (the scorer's own
per-sample verdict). Targets come from re-reading the benchmark at the path ``results.json``
names; when it is gone, the failures are skipped with a note rather than guessed.
"""

from __future__ import annotations

import io
import json
import logging
import os
from html import escape
from pathlib import Path
from typing import Any

from graft.files import write_text_atomic
from graft.report import demo as report_demo
from graft.report import expert as expert_report
from graft.report.headline import CATEGORY_MEASURES, HEADLINES, headline_and_categories
from graft.report.model import (
    Failure,
    RunReport,
    TaskReport,
    data_uri,
    figure,
    fmt,
    md_table,
    png,
)

logger = logging.getLogger(__name__)


def _failures(task: str, results: dict[str, Any], folder: Path, limit: int) -> tuple[list[Failure], str]:
    """Up to ``limit`` wrong samples, or none and a note saying why."""
    from graft.eval.answers import mme_yes_no, pope_yes_no
    from graft.eval.readers import ReadResult
    from graft.eval.score import read_predictions, score_samples
    from graft.eval.tasks import get_task

    if task not in ("pope", "mme", "scienceqa_img", "mmbench"):
        return [], "no per-sample right/wrong for this family"
    data, preds_path = results.get("data"), folder / "predictions.jsonl"
    if not data or not Path(data).exists() or not preds_path.exists():
        return [], f"benchmark data {data!r} or {preds_path.name} not found; failures not listed"
    # re-read through the run's own task (a user task file may prompt differently)
    spec = get_task(results.get("task_file") or results.get("task", task))
    preds = read_predictions(preds_path)
    # a limited run (``--limit``) answered only some of the benchmark: judge those, as its scores did
    full = spec.read(data, skip_bad=True)
    read = ReadResult([s for s in full.samples if str(s.id) in preds], full.bad)
    if task in ("scienceqa_img", "mmbench"):
        verdicts = score_samples(spec, read, preds, keep_samples=True)["samples"]
        wrong = {str(v["id"]) for v in verdicts if not v["correct"]}
    else:
        parse = pope_yes_no if task == "pope" else mme_yes_no
        wrong = {str(s.id) for s in read.samples if parse(preds[str(s.id)]) != str(s.target).strip().lower()}
    out = []
    for s in read.samples:
        if str(s.id) in wrong and len(out) < limit:
            out.append(Failure(str(s.id), s.prompt, preds.get(str(s.id), ""), str(s.target), list(s.images)))
    of_all = "" if len(read.samples) == len(full.samples) else f", of {len(full.samples)} in the benchmark"
    return out, f"{len(wrong)} wrong of {len(read.samples)} answered{of_all}"


def load_run(path: str | os.PathLike, max_failures: int = 5) -> RunReport:
    """A run folder (``*/results.json``), a demo folder or a demo ``summary.json`` -> its report."""
    path = Path(path)
    summary = path if path.is_file() else path / "summary.json"
    run = RunReport(name=(path.parent if path.is_file() else path).name, source=path)
    if summary.is_file():
        report_demo.add_demo(run, summary)
    if path.is_dir():
        for results_path in sorted(path.glob("*/results.json")):
            results = json.loads(results_path.read_text(encoding="utf-8"))
            name = results.get("run", results.get("task", results_path.parent.name))
            family = results.get("family") or results.get("task", name)
            head, cats = headline_and_categories(family, results.get("metrics", {}))
            failures, note = _failures(family, results, results_path.parent, max_failures)
            run.tasks[name] = TaskReport(name, head, cats, failures, note, kind=family)
            run.config_hash = run.config_hash or results.get("model_config_hash", "")
            run.version = run.version or results.get("graft_version", "")
    if not run.tasks:
        raise FileNotFoundError(f"{path}: neither a summary.json nor any */results.json found")
    return run


def _families(runs: list[RunReport]) -> list[str]:
    return list(dict.fromkeys(f for run in runs for f in run.tasks))


def _kind(family: str, runs: list[RunReport]) -> str:
    """A results column's scoring family (``pope`` for a run named ``binary`` scored as POPE)."""
    return next((r.tasks[family].kind for r in runs if family in r.tasks), "") or family


def _measure(family: str, runs: list[RunReport]) -> str:
    """What a results column's headline measures (its scoring family's)."""
    return HEADLINES.get(_kind(family, runs), "score")


def _category_measure(family: str, runs: list[RunReport]) -> str:
    """What a family's per-category numbers measure."""
    return CATEGORY_MEASURES.get(_kind(family, runs), "score")


def _headlines(run: RunReport, families: list[str]) -> list[str]:
    return [fmt(run.tasks[f].headline) if f in run.tasks else "-" for f in families]


def render_markdown(runs: list[RunReport]) -> str:
    families = _families(runs)
    head = ["model", *(f"{f} ({_measure(f, runs)})" for f in families)]
    lines = [
        "# graft evaluation report",
        "",
        *md_table(head, [[r.name, *_headlines(r, families)] for r in runs]),
    ]
    lines += ["", "Sources:"] + [
        f"- {r.name}: `{r.source}` {r.config_hash} {r.version}".rstrip() for r in runs
    ]
    for family in families:
        if family in report_demo.FAMILIES:
            lines += report_demo.category_markdown(family, runs)
            continue
        cats = sorted({c for r in runs if family in r.tasks for c in r.tasks[family].categories})
        rows = [
            [c, *(fmt(r.tasks[family].categories.get(c)) if family in r.tasks else "-" for r in runs)]
            for c in cats
        ]
        if rows:
            lines += [
                "",
                f"## {family} per category: {_category_measure(family, runs)}",
                "",
                *md_table(["category", *(r.name for r in runs)], rows),
            ]
    lines += report_demo.render_markdown(runs)
    lines += ["", "## Failures"]
    for run in runs:
        for family, task in run.tasks.items():
            if task.failures or task.note:
                lines += ["", f"### {run.name} / {family}" + (f" ({task.note})" if task.note else "")]
            for f in task.failures:
                imgs = ", ".join(f"`{p}`" for p in f.images)
                answer = f"**{_one_line(f.prediction)}** (target {f.target})"
                lines.append(f"- `{f.id}`: {_one_line(f.question)} -> {answer} {imgs}")
    return "\n".join(lines) + "\n"


def _one_line(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def bar_chart_png(family: str, runs: list[RunReport]) -> bytes | None:
    """Grouped bars, one group per category and one bar per run; None when no run has categories."""
    runs = [r for r in runs if family in r.tasks]  # the legend names only the runs that have bars
    cats = sorted({c for r in runs for c in r.tasks[family].categories})
    if not cats:
        return None
    fig = figure(max(4.0, 0.6 * len(cats) * max(1, len(runs)) + 1.5), 3.2, "tight")
    ax = fig.subplots()
    width = 0.8 / max(1, len(runs))
    for i, run in enumerate(runs):
        # a category a run lacks gets no bar (NaN), not a misleading zero
        values = [run.tasks[family].categories.get(c, float("nan")) for c in cats]
        drawn = ax.bar([x + i * width for x in range(len(cats))], values, width, label=run.name)
        # a value on every bar: a zero must read as 0, not as a bar that is missing
        ax.bar_label(drawn, ["" if v != v else f"{v:.3g}" for v in values], fontsize=6)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(cats))], cats, rotation=30, ha="right", fontsize=8)
    ax.margins(y=0.12)  # room for the top bar's label (bars keep their floor at zero)
    ax.set_ylabel(_category_measure(family, runs), fontsize=8)
    ax.set_title(f"{family} per category")
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


def _header(family: str, runs: list[RunReport]) -> str:
    """A results column's heading: the name, breakable at its separators, over what it measures."""
    name = escape(family).replace("/", "/<wbr>").replace("_", "_<wbr>")
    return f"{name}<br><small>{escape(_measure(family, runs))}</small>"


def render_html(runs: list[RunReport]) -> str:
    """One page with everything inline: table, charts and thumbnails as data URIs, no links out."""
    families = _families(runs)
    many = len(families) > 5  # then: fixed layout, smaller type, wrapped headers
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>graft evaluation report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>graft evaluation report</h1><div class='wide'>",
        f"<table class='results{' many' if many else ''}' style='min-width:{8 + 4.5 * len(families):g}em'>"
        "<colgroup><col class='model'></colgroup><tr><th>model</th>",
    ]
    parts += [f"<th>{_header(f, runs)}</th>" for f in families] + ["</tr>"]
    for run in runs:
        cells = "".join(f"<td>{cell}</td>" for cell in _headlines(run, families))
        title = escape(f"{run.source} {run.config_hash} {run.version}".strip())
        parts.append(f"<tr><td title='{title}'>{escape(run.name)}</td>{cells}</tr>")
    parts.append("</table></div><h2>Per category</h2>")
    for family in families:
        demo = report_demo.FAMILIES.get(family)  # "binary" for "demo/binary"
        png = report_demo.bar_chart_png(demo, runs) if demo else bar_chart_png(family, runs)
        if png:
            parts.append(f"<div><img alt='{escape(family)} per category' src='{data_uri(png)}'></div>")
    parts += report_demo.render_html(runs)
    parts.append("<h2>Failures</h2>")
    for run in runs:
        for family, task in run.tasks.items():
            if not (task.failures or task.note):
                continue
            note = f" <small>({escape(task.note)})</small>" if task.note else ""
            parts.append(f"<details><summary>{escape(run.name)} / {escape(family)}{note}</summary>")
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
    runs = [load_run(s, max_failures) for s in sources]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md, page = out / "report.md", out / "report.html"
    write_text_atomic(md, render_markdown(runs))
    write_text_atomic(page, render_html(runs))
    # expert pipelines among the runs: end-to-end vs expert per run, with cost (expert_comparison.md)
    expert_report.write_comparison(sources, out)
    return md, page
