"""POPE scores by the rules of LLaVA's ``eval_pope.py`` (the numbers papers report).

An answer is cut at its first ".", commas are dropped, it is split on spaces, and it means "no"
when one of the words is exactly "No", "no" or "not"; anything else means "yes" (an empty answer
too, as in the reference; such answers are counted under ``empty``). Yes is the positive class.
Per split: accuracy, precision, recall, F1 and the ratio of *predicted* yes, as fractions.
Where the reference divides by zero (no predicted or no true yes), the value is 0.0.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from graft.eval.answers import pope_yes_no
from graft.eval.readers.pope import SPLITS


def binary_scores(labels: list[str], answers: list[str]) -> dict[str, Any]:
    """Scores of parsed answers (yes|no) against labels (yes|no)."""
    tp = sum(a == "yes" and g == "yes" for a, g in zip(answers, labels, strict=True))
    fp = sum(a == "yes" and g == "no" for a, g in zip(answers, labels, strict=True))
    tn = sum(a == "no" and g == "no" for a, g in zip(answers, labels, strict=True))
    fn = sum(a == "no" and g == "yes" for a, g in zip(answers, labels, strict=True))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    n = len(labels)
    return {
        "accuracy": (tp + tn) / n if n else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "yes_ratio": answers.count("yes") / n if n else 0.0,
        "n": n,
        "TP": tp,
        "FP": fp,
        "TN": tn,
        "FN": fn,
    }


def pope_scores(rows: Iterable[tuple[str, str, str]]) -> dict[str, Any]:
    """``{split: scores}`` from ``(split, label, raw answer)`` rows, splits in POPE's order."""
    by_split: dict[str, tuple[list[str], list[str]]] = defaultdict(lambda: ([], []))
    empty: dict[str, int] = defaultdict(int)
    for split, label, answer in rows:
        by_split[split][0].append(label)
        by_split[split][1].append(pope_yes_no(answer))
        empty[split] += not answer.strip()
    order = [s for s in SPLITS if s in by_split] + sorted(set(by_split) - set(SPLITS))
    return {s: binary_scores(*by_split[s]) | {"empty": empty[s]} for s in order}
