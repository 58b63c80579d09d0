"""The results table's columns, shared by the markdown and the HTML page.

A column is one task name and what its headline measures (``Column``): two runs share it only
when both agree, so a limited POPE (``F1, adversarial only``) never stands under a full one's
``mean F1``, nor ``graft evaluate``'s ``binary`` accuracy under the demo's POPE-scored ``binary``.
"""

from __future__ import annotations

from typing import NamedTuple

from graft.report.headline import HEADLINES
from graft.report.model import RunReport, TaskReport, fmt


class Column(NamedTuple):
    """A results column: a task name and what its headline is; runs share one only when both agree."""

    name: str
    kind: str
    measure: str


def column_of(name: str, task: TaskReport) -> Column:
    kind = task.kind or name
    return Column(name, kind, task.measure or HEADLINES.get(kind, "score"))


def columns(runs: list[RunReport]) -> list[Column]:
    return list(dict.fromkeys(column_of(name, task) for run in runs for name, task in run.tasks.items()))


def task_in(run: RunReport, col: Column) -> TaskReport | None:
    """``run``'s task in column ``col``; None when it has none, or one that measures otherwise."""
    task = run.tasks.get(col.name)
    return task if task is not None and column_of(col.name, task) == col else None


def name(col: Column, cols: list[Column]) -> str:
    """The column's task name, with its scoring family when another column of that name has another."""
    shared = any(c.name == col.name and c.kind != col.kind for c in cols)
    return f"{col.name} ({col.kind})" if shared else col.name


def label(col: Column, cols: list[Column]) -> str:
    """A results column's heading: ``pope (mean F1)``, ``binary (questions, accuracy)``."""
    named = name(col, cols)
    return f"{named[:-1]}, {col.measure})" if named != col.name else f"{named} ({col.measure})"


def title(col: Column, cols: list[Column]) -> str:
    """A per-category section's name: the task's, or its column's heading when the name is shared."""
    return label(col, cols) if sum(c.name == col.name for c in cols) > 1 else col.name


def headlines(run: RunReport, cols: list[Column]) -> list[str]:
    return [fmt(task.headline) if (task := task_in(run, c)) else "-" for c in cols]


def scopes(runs: list[RunReport], cols: list[Column]) -> list[str]:
    """``run / task: limited run: ...`` for every task that answered only part of its benchmark,
    and ``run / task: ...`` for every task folder that has answers but no results yet."""
    limited = [
        f"{r.name} / {title(column_of(n, t), cols)}: {t.scope}"
        for r in runs
        for n, t in r.tasks.items()
        if t.scope
    ]
    return limited + [f"{r.name} / {what}" for r in runs for what in r.unfinished]


def categories(col: Column, runs: list[RunReport]) -> list[str]:
    return sorted({c for r in runs if (t := task_in(r, col)) for c in t.categories})


def category_table(col: Column, runs: list[RunReport]) -> tuple[list[str], list[list[str]]]:
    """Column ``col``'s per-category numbers: the header (category, then each run that has the
    column) and one row per category; no rows when no run has categories."""
    having = [(r, t) for r in runs if (t := task_in(r, col))]
    rows = [[c, *(fmt(t.categories.get(c)) for _, t in having)] for c in categories(col, runs)]
    return ["category", *(r.name for r, _ in having)], rows
