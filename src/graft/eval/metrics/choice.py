"""Multiple choice: which option an answer picks, plain and circular accuracy.

Letter extraction (``graft.eval.answers.parse_choice``): the first standalone option letter
("B", "B.", "(B)", "The answer is B"; a capital "A" starting a phrase is read as the article),
else the one option whose text the answer contains. When that finds nothing an optional
``fallback(answer, choices) -> letter | None`` (an LLM, see ``metrics.judge.LLMChoiceMatcher``)
may decide. Circular evaluation (MMBench): the copies of a question with rotated options share
``index % 1e6``; the question counts as right only when every copy is. ``answers.sqa_letter`` is
LLaVA's stricter ScienceQA reading, used for that benchmark so its numbers compare.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from graft.eval.answers import parse_choice
from graft.prompts import OPTION_LETTERS

Fallback = Callable[[str, Sequence[str]], "str | None"]


def extract_choice(answer: str, choices: Sequence[str], fallback: Fallback | None = None) -> str | None:
    """The option letter ``answer`` picks among ``choices`` (A, B, ... in order), or None."""
    letter = parse_choice(answer, list(choices))
    if letter is None and fallback is not None and answer.strip():
        letter = fallback(answer, choices)
        if letter is not None and letter not in OPTION_LETTERS[: len(choices)]:
            letter = None
    return letter


@dataclass
class ChoiceRow:
    id: Any
    answer: str  # the model's raw answer
    target: str  # the right letter
    choices: Sequence[str]
    group: Any = None  # circular group (index % 1e6); None: the row is its own group
    category: str | None = None


def choice_scores(
    rows: Iterable[ChoiceRow],
    fallback: Fallback | None = None,
    circular: bool = False,
    extract: Fallback | None = None,
) -> dict[str, Any]:
    """``{"accuracy" (x100), "n", "unparsed", "per_category": {...}}``; with ``circular`` also
    ``"circular_accuracy"`` over groups and ``"groups"``. Per-sample picks under ``"samples"``.
    ``extract(answer, choices)`` replaces the default letter extraction (e.g. ``sqa_letter``)."""
    rows = list(rows)
    picks = [
        extract(r.answer, r.choices) if extract else extract_choice(r.answer, r.choices, fallback)
        for r in rows
    ]
    samples = [{"id": r.id, "picked": p, "correct": p == r.target} for r, p in zip(rows, picks, strict=True)]
    n = len(rows)
    out: dict[str, Any] = {
        "accuracy": 100.0 * sum(s["correct"] for s in samples) / n if n else 0.0,
        "n": n,
        "unparsed": picks.count(None),
    }
    # (category, right) per question: per row, or with ``circular`` per group of rotated copies
    units = [(r.category, s["correct"]) for r, s in zip(rows, samples, strict=True)]
    if circular:
        groups: dict[Any, list[bool]] = defaultdict(list)
        group_cat: dict[Any, str | None] = {}
        for r, s in zip(rows, samples, strict=True):
            key = r.group if r.group is not None else ("row", r.id)
            groups[key].append(s["correct"])
            group_cat[key] = r.category
        units = [(group_cat[k], all(v)) for k, v in groups.items()]
        out["circular_accuracy"] = 100.0 * sum(ok for _, ok in units) / len(units) if units else 0.0
        out["groups"] = len(units)
    by_cat: dict[str, list[bool]] = defaultdict(list)
    for category, ok in units:
        if category is not None:
            by_cat[category].append(ok)
    if by_cat:
        out["per_category"] = {c: 100.0 * sum(v) / len(v) for c, v in sorted(by_cat.items())}
    out["samples"] = samples
    return out
