"""The ``graft demo`` part of ``graft report``: with-images vs blind bars, learning curve, diagnostics.

A demo output folder holds a flat ``summary.json`` (``binary/accuracy``, ``binary/accuracy_blind``,
``qtype/binary_color/accuracy``, maybe ``qtype/binary_color/accuracy_blind``, the diagnostics keys
of ``DIAGNOSTICS``) and, beside it, ``curve.jsonl``: held-out accuracy at a few steps of stage 2,
one JSON object per line (a line cut by a kill is skipped). Every accuracy is read against
guessing (``CHANCE``), so each chart draws that level.
"""

from __future__ import annotations

import json
import math
from html import escape
from pathlib import Path
from typing import NamedTuple

from graft.record_files import load_json
from graft.report.model import (
    RunReport,
    TaskReport,
    data_uri,
    figure,
    fmt,
    html_table,
    is_number,
    md_table,
    png,
)

#: accuracy of guessing, per question format: the reference every bar is read against
CHANCE = {"binary": 0.5, "mcq": 0.25}
#: the learning curve's marker per question format: told apart without their colour
CURVE_MARKERS = {"binary": "o", "mcq": "s"}
#: the report's column for each question format
FAMILIES = {f"demo/{family}": family for family in CHANCE}
_PROBE = "vision probe: each object's {} read linearly from the frozen vision tower's features"
#: the diagnostics keys, in the order shown, each with what it measures
DIAGNOSTICS = {
    **{
        f"probe/{a}_acc": _PROBE.format(a.replace("color", "colour"))
        for a in ("shape", "color", "size", "position")
    },
    "caption/exact": "caption: share of stage 1's held-out captions naming exactly the scene's objects",
    "caption/object_recall": "caption: share of the scenes' objects that stage 1's captions name",
    "caption/object_precision": "caption: share of the objects stage 1's captions name that are in the scene",
    "ground/object_shape_acc": "grounding: share of held-out object cells whose token is nearest to its "
    "object's words with the right shape",
    "ground/object_colour_acc": "grounding: the same, with the right colour",
    "ground/cell_acc": "grounding: share of held-out cells whose token is nearest to exactly its words "
    "(background included)",
    "ground/cosine": "grounding: mean cosine of a held-out cell's token with its target",
    "words/colour_recall": "words: share of the scenes' colours that the aligned model's soft tokens say "
    "(each token read as its nearest word)",
    "words/colour_precision": "words: share of the colours the soft tokens say that are in the scene",
    "words/shape_recall": "words: share of the scenes' shapes that the soft tokens say",
    "words/shape_precision": "words: share of the shapes the soft tokens say that are in the scene",
    "words/cosine": "words: mean cosine of a soft token with its nearest word (1: the tokens are words)",
    "stage1/final_loss": "stage 1 (caption pretraining): training loss at its last logged step",
    "reliance/stage1_gain": "image use: stage 1's caption loss with another image minus with its own "
    "(0: the model ignores the image)",
    "reliance/stage2_gain": "image use: stage 2's training-record loss with another image minus with "
    "its own (0: the model ignores the image)",
    "binary/accuracy_text": "text upper bound: the same yes/no questions answered with the scene's "
    "description in place of the image",
    "mcq/accuracy_text": "text upper bound: the same multiple-choice questions answered with the scene's "
    "description in place of the image",
    "binary/accuracy_exact_tokens": "exact-token bound: the held-out yes/no questions answered with the "
    "grounding's exact tokens in place of the connector's (perfect perception)",
    "mcq/accuracy_exact_tokens": "exact-token bound: the held-out multiple-choice questions answered with "
    "the grounding's exact tokens in place of the connector's (perfect perception)",
}
_NAN = float("nan")


def add_demo(run: RunReport, summary_path: Path) -> None:
    """The demo's two question formats as tasks of ``run``, its summary and its learning curve."""
    doc = load_json(summary_path)
    if not isinstance(doc, dict):
        raise ValueError(
            f"{summary_path}: expected a JSON object (a demo's summary), got {type(doc).__name__}"
        )
    summary = {k: v for k, v in doc.items() if is_number(v)}
    run.summary, run.curve = summary, read_curve(summary_path.parent / "curve.jsonl")
    for family in CHANCE:
        if f"{family}/accuracy" in summary:
            cats = per_type(summary, family)
            run.tasks[f"demo/{family}"] = TaskReport(f"demo/{family}", summary[f"{family}/accuracy"], cats)
        if f"{family}/accuracy_blind" in summary:
            blind = f"demo/{family}_blind"
            run.tasks[blind] = TaskReport(blind, summary[f"{family}/accuracy_blind"])


def per_type(summary: dict[str, float], family: str, suffix: str = "") -> dict[str, float]:
    """Accuracy per question type of ``family`` (``suffix="_blind"``: with the images blanked)."""
    prefix, end = f"qtype/{family}_", f"/accuracy{suffix}"
    names = {
        k[len(prefix) : -len(end)]: v for k, v in summary.items() if k.startswith(prefix) and k.endswith(end)
    }
    return {name: v for name, v in names.items() if name and "/" not in name}


def read_curve(path: Path) -> list[dict[str, float]]:
    """The learning curve's points in step order; lines that do not parse (a kill) are skipped."""
    points: dict[int, dict[str, float]] = {}
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and not isinstance(row["step"], bool):
            points[row["step"]] = {k: v for k, v in row.items() if is_number(v)}
    return [points[step] for step in sorted(points)]


class Series(NamedTuple):
    label: str
    values: list[float]
    blind: bool
    #: index of the demo run it belongs to (its colour)
    run: int


class Bars(NamedTuple):
    """One demo format's chart: groups on the x axis, per series one value per group, and chance;
    ``labels`` name the groups for a reader (``group_label``)."""

    groups: list[str]
    series: list[Series]
    chance: float
    labels: list[str]


def group_label(runs: list[RunReport], family: str, group: str) -> str:
    """The group's name with how many questions it holds when every run asked as many ("position
    (15)"): a type asked 15 times moves by 0.067 a question."""
    key = f"{family}/n" if group == "all" else f"qtype/{family}_{group}/n"
    counts = {r.summary.get(key) for r in runs}
    n = counts.pop() if len(counts) == 1 else None
    return group if n is None else f"{group} ({n:.0f})"


def group_value(summary: dict[str, float], family: str, group: str, blind: bool = False) -> float | None:
    """Accuracy of group "all" (the whole format) or of one question type; None when not measured."""
    suffix = "_blind" if blind else ""
    if group == "all":
        return summary.get(f"{family}/accuracy{suffix}")
    return per_type(summary, family, suffix).get(group)


def bar_series(family: str, runs: list[RunReport]) -> Bars | None:
    """Group "all" (the format's overall accuracy) then one group per question type; per demo run
    a with-images series and a blind one (per type where ``..._blind`` keys exist, else NaN: no
    bar). None when no run has this format."""
    demos = [r for r in runs if f"{family}/accuracy" in r.summary or f"{family}/accuracy_blind" in r.summary]
    if not demos:
        return None
    types = sorted({t for r in demos for s in ("", "_blind") for t in per_type(r.summary, family, s)})
    groups, series = ["all", *types], []
    for i, run in enumerate(demos):
        label = f"{run.name}: " if len(demos) > 1 else ""
        for blind, what in ((False, "with images"), (True, "blind (images blanked)")):
            values = [group_value(run.summary, family, g, blind) for g in groups]
            if any(v is not None for v in values):
                series.append(Series(label + what, [_NAN if v is None else v for v in values], blind, i))
    return Bars(groups, series, CHANCE[family], [group_label(demos, family, g) for g in groups])


def curve_series(curve: list[dict[str, float]]) -> list[tuple[str, list[int], list[float], str]]:
    """The learning curve's lines: (label, steps, accuracies, line style); blind ones dashed."""
    lines = []
    for family in CHANCE:
        for suffix, style, what in (("", "-", "with images"), ("_blind", "--", "blind")):
            key = f"{family}/accuracy{suffix}"
            points = [(int(row["step"]), row[key]) for row in curve if key in row]
            if points:
                lines.append((f"{family} {what}", [p[0] for p in points], [p[1] for p in points], style))
    return lines


def bar_chart_png(family: str, runs: list[RunReport]) -> bytes | None:
    """``bar_series`` drawn: seeing bars solid, blind ones hatched in the same colour, chance dashed."""
    bars = bar_series(family, runs)
    if bars is None:
        return None
    n, k = len(bars.groups), max(1, len(bars.series))
    # the legend sits below in two columns: wide enough for its longest label (~0.06 in a letter)
    legend = 2 * (0.06 * max(len(s.label) for s in bars.series) + 0.5)
    fig = figure(max(4.5, 0.35 * n * k + 2.0, legend), 3.2 + 0.15 * math.ceil(k / 2), "constrained")
    ax = fig.subplots()
    width = 0.8 / k
    for i, (label, values, blind, run) in enumerate(bars.series):
        color = f"C{run}"
        style = (
            {"color": color, "alpha": 0.45, "hatch": "//", "edgecolor": color} if blind else {"color": color}
        )
        xs = [g + (i - (k - 1) / 2) * width for g in range(n)]
        drawn = ax.bar(xs, values, width, label=label, **style)
        ax.bar_label(drawn, ["" if math.isnan(v) else f"{v:.2f}" for v in values], fontsize=7)
    ax.axhline(bars.chance, color="0.3", linestyle="--", linewidth=1)
    ax.text(
        1.0, bars.chance, " chance", transform=ax.get_yaxis_transform(), va="center", fontsize=7, color="0.3"
    )
    if n > 1:
        ax.axvline(0.5, color="0.8", linewidth=0.8)  # "all" apart from the question types
    ax.set_xticks(range(n), bars.labels, rotation=30, ha="right", fontsize=8)
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("held-out accuracy", fontsize=8)
    ax.set_title(f"demo/{family}: with images vs blind (chance {bars.chance:g})", fontsize=9)
    fig.legend(fontsize=7, loc="outside lower center", ncols=2, frameon=False)
    return png(fig)


def curve_png(curve: list[dict[str, float]], title: str) -> bytes | None:
    """Accuracy over stage-2 steps: binary and mcq (each its colour and marker), with images solid
    and blind dashed, chance dotted and named at the right."""
    lines = curve_series(curve)
    if not lines:
        return None
    fig = figure(6.0, 3.4, "constrained")  # room for outside legends
    ax = fig.subplots()
    colors = {family: f"C{i}" for i, family in enumerate(CHANCE)}
    for label, steps, values, style in lines:
        family = label.split()[0]
        marker = CURVE_MARKERS[family]
        ax.plot(steps, values, style, marker=marker, markersize=4, color=colors[family], label=label)
    for family, chance in CHANCE.items():
        ax.axhline(chance, color=colors[family], linestyle=":", linewidth=1, label=f"{family} chance")
        at = ax.get_yaxis_transform()
        ax.text(1.0, chance, f" {family} chance", transform=at, va="center", fontsize=7, color=colors[family])
    ax.set_xlabel("stage-2 step", fontsize=8)
    ax.set_ylabel("held-out accuracy", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_title(title, fontsize=9)
    ax.xaxis.get_major_locator().set_params(integer=True)
    fig.legend(fontsize=7, loc="outside right center", frameon=False)
    return png(fig)


def _diagnostic_cell(summary: dict[str, float], key: str) -> str:
    """The value, with what it is read against: the probe's chance or the seeing accuracy."""
    if key not in summary:
        return "-"
    ref = ""
    if key.startswith("probe/") and key.endswith("_acc"):
        chance = summary.get(key.removesuffix("_acc") + "_chance")
        ref = f" (chance {fmt(chance)})" if chance is not None else ""
    elif key.endswith(("/accuracy_text", "/accuracy_exact_tokens")):
        seeing = summary.get(key.split("/")[0] + "/accuracy")
        ref = f" (with images {fmt(seeing)})" if seeing is not None else ""
    elif key.startswith("reliance/") and key.endswith("_gain"):
        own, other = (summary.get(key.replace("_gain", f"_loss_{w}")) for w in ("own", "other"))
        ref = f" (loss {fmt(own)} own, {fmt(other)} other)" if own is not None else ""
    return fmt(summary[key]) + ref


def _diagnostics(runs: list[RunReport]) -> tuple[list[RunReport], list[str]]:
    demos = [r for r in runs if any(k in r.summary for k in DIAGNOSTICS)]
    return demos, [k for k in DIAGNOSTICS if any(k in r.summary for r in demos)]


def _blind_columns(runs: list[RunReport], family: str) -> list[RunReport]:
    return [
        r for r in runs if f"{family}/accuracy_blind" in r.summary or per_type(r.summary, family, "_blind")
    ]


def category_table(column: str, runs: list[RunReport]) -> tuple[list[str], list[list[str]]]:
    """``column`` (``demo/binary``...) overall and per question type: each demo run with images,
    then blind, then chance; no rows when no run has this format."""
    family = FAMILIES[column]
    bars = bar_series(family, runs)
    if bars is None:
        return ["category"], []
    demos = [r for r in runs if _has(r, family)]
    blinds = _blind_columns(demos, family)
    head = ["category", *(r.name for r in demos), *(f"{r.name} blind" for r in blinds), "chance"]
    rows = [
        [label, *(fmt(group_value(r.summary, family, group)) for r in demos)]
        + [fmt(group_value(r.summary, family, group, blind=True)) for r in blinds]
        + [f"{CHANCE[family]:.2f}"]
        for group, label in zip(bars.groups, bars.labels, strict=True)
    ]
    return head, rows


def _has(run: RunReport, family: str) -> bool:
    return any(group_value(run.summary, family, "all", blind) is not None for blind in (False, True))


def category_markdown(column: str, runs: list[RunReport]) -> list[str]:
    """``column`` (``demo/binary``...) per question type, with images and blind, and chance."""
    head, rows = category_table(column, runs)
    if len(rows) < 2:  # "all" alone is the results table's
        return []
    return ["", f"## {column} per category (with images vs blind)", "", *md_table(head, rows)]


def _curve_rows(curve: list[dict[str, float]]) -> list[list[str]]:
    keys = [f"{f}/accuracy{s}" for f in CHANCE for s in ("", "_blind")]
    return [[str(int(row["step"]))] + [fmt(row.get(k)) for k in keys] for row in curve]


_CURVE_HEAD = ["step", "binary", "binary blind", "mcq", "mcq blind"]


def render_markdown(runs: list[RunReport]) -> list[str]:
    """The learning curves' points and the diagnostics, as markdown lines."""
    lines: list[str] = []
    for run in runs:
        if run.curve:
            lines += ["", f"## {run.name}: learning curve (stage 2, held-out accuracy)", ""]
            lines += md_table(_CURVE_HEAD, _curve_rows(run.curve))
    demos, keys = _diagnostics(runs)
    if keys:
        head = ["measurement", *(r.name for r in demos), "meaning"]
        rows = [[key, *(_diagnostic_cell(r.summary, key) for r in demos), DIAGNOSTICS[key]] for key in keys]
        lines += ["", "## Demo diagnostics", "", *md_table(head, rows)]
    return lines


def render_html(runs: list[RunReport]) -> list[str]:
    """The learning curves (plot and points) and the diagnostics table, as HTML parts."""
    parts: list[str] = []
    curves = [r for r in runs if r.curve]
    if curves:
        parts.append("<h2>Learning curve (stage 2, held-out accuracy)</h2>")
    for run in curves:
        title = f"{run.name}: accuracy during stage 2"
        parts.append(f"<h3>{escape(title)}</h3>")
        png = curve_png(run.curve, title)
        if png:
            alt = f"Line chart: {title}; its points are in the table below"
            parts.append(f"<div><img alt='{escape(alt)}' src='{data_uri(png)}'></div>")
        table = html_table(_CURVE_HEAD, _curve_rows(run.curve))
        parts.append(f"<details><summary>points</summary>{table}</details>")
    demos, keys = _diagnostics(runs)
    if keys:
        head = ["measurement", *(r.name for r in demos), "meaning"]
        rows = [[key, *(_diagnostic_cell(r.summary, key) for r in demos), DIAGNOSTICS[key]] for key in keys]
        parts += ["<h2>Demo diagnostics</h2>", html_table(head, rows, "diag")]
    return parts
