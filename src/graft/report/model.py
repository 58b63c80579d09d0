"""What a report is made of: runs, their tasks, their failures, and the number and image
formatting that the report's markdown and HTML (``build.py``, ``page.py``, ``demo.py``) share."""

from __future__ import annotations

import base64
import io
import re
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any


@dataclass
class Failure:
    """One wrong answer, with what was asked and what was expected."""

    id: str
    question: str
    prediction: str
    target: str
    images: list[Path] = field(default_factory=list)


@dataclass
class TaskReport:
    #: the run's name for it (two runs may share a family: POPE scores both ``pope`` and ``binary``)
    family: str
    headline: float | None
    categories: dict[str, float] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    note: str = ""
    #: the scoring family, which fixes what the headline means (default: ``family``)
    kind: str = ""
    #: what this run's headline is (``headline.headline_measure``; default: the kind's ``HEADLINES``)
    measure: str = ""
    #: how much of the benchmark the run answered, when it was not all (a ``--limit`` run)
    scope: str = ""


@dataclass
class RunReport:
    name: str
    source: Path
    config_hash: str = ""
    version: str = ""
    tasks: dict[str, TaskReport] = field(default_factory=dict)
    #: task folders that hold answers but no ``results.json`` yet (a run still going, or killed)
    unfinished: list[str] = field(default_factory=list)
    #: a demo's ``summary.json`` (numbers only) and ``curve.jsonl`` points; empty for eval runs
    summary: dict[str, float] = field(default_factory=dict)
    curve: list[dict[str, float]] = field(default_factory=list)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def md_text(text: str) -> str:
    """``text`` as one line of markdown that shows as written: a model's answer or a run's name
    holding ``<script>``, ``<image>``, ``*``, ``[...]`` or a table's ``|`` is text, not markup."""
    text = " ".join(str(text).split()).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return re.sub(r"([\\`*\[\]|])", r"\\\1", text)


def md_code(text: str) -> str:
    """``text`` (a path, a sample id) as a markdown code span, whatever backticks it holds."""
    text = " ".join(str(text).split())
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table's lines, every cell ``md_text``."""

    def line(cells: list[str]) -> str:
        return f"| {' | '.join(md_text(c) for c in cells)} |"

    return [line(head), "|---" * len(head) + "|", *(line(r) for r in rows)]


def html_table(head: list[str], rows: list[list[str]], cls: str = "") -> str:
    """An HTML table (escaped) in a box that scrolls sideways on a narrow screen: a header row of
    column headers, each row headed by its first cell."""
    ths = "".join(f"<th scope='col'>{escape(h)}</th>" for h in head)
    body = "".join(
        f"<tr><th scope='row'>{escape(row[0])}</th>"
        + "".join(f"<td>{escape(c)}</td>" for c in row[1:])
        + "</tr>"
        for row in rows
    )
    klass = f" class='{cls}'" if cls else ""
    return f"<div class='wide'><table{klass}><thead><tr>{ths}</tr></thead><tbody>{body}</tbody></table></div>"


def figure(width: float, height: float, layout: str) -> Any:
    """A matplotlib figure drawn without a display (the Figure API never touches pyplot's state)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout=layout)


def png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()
