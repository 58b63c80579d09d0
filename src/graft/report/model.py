"""What a report is made of: runs, their tasks, their failures, and the number and image
formatting that the report's markdown and HTML (``build.py``, ``demo.py``) share."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
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


def md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table's lines."""
    return [f"| {' | '.join(head)} |", "|---" * len(head) + "|", *(f"| {' | '.join(r)} |" for r in rows)]


def figure(width: float, height: float, layout: str) -> Any:
    """A matplotlib figure drawn without a display (the Figure API never touches pyplot's state)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout=layout)


def png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return buf.getvalue()
