"""MME scores by the rules of the official ``eval_tool/calculation.py``.

An answer is lower-cased; exactly "yes" / "no" is that, otherwise its first four characters
decide ("yes" in them -> yes, else "no" in them -> no), otherwise it is "other", which is wrong.
Per subtask: acc = right questions / questions, acc+ = images with both questions right /
images, each x100; the subtask's score is their sum (max 200). Perception = the sum over its 10
subtasks, cognition over its 4. Answers are stripped first, as LLaVA's answer files are.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from graft.eval.answers import mme_yes_no
from graft.eval.readers.mme import COGNITION, PERCEPTION, MMEResult


def mme_scores(rows: Iterable[MMEResult]) -> dict[str, Any]:
    """``{"perception", "cognition", <subtask>: score, ..., "details": {<subtask>: {...}}}``.

    A total covers the subtasks present; ``details["missing"]`` lists the official subtasks
    absent, so a partial total is never mistaken for a full one.
    """
    by_image: dict[str, dict[str, list[MMEResult]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by_image[r.subtask][r.image].append(r)
    details: dict[str, Any] = {}
    scores: dict[str, float] = {}
    for subtask, images in by_image.items():
        right = total = both = other = 0
        for image, qs in images.items():
            if len(qs) != 2:
                where = ", ".join(q.where for q in qs if q.where)
                raise ValueError(f"MME {subtask}/{image}: {len(qs)} question(s), expected a pair ({where})")
            parsed = [mme_yes_no(q.prediction) for q in qs]
            hits = [p == q.answer for p, q in zip(parsed, qs, strict=True)]
            right += sum(hits)
            total += len(qs)
            both += all(hits)
            other += parsed.count("other")
        acc, acc_plus = 100.0 * right / total, 100.0 * both / len(images)
        scores[subtask] = acc + acc_plus
        details[subtask] = {"acc": acc, "acc_plus": acc_plus, "images": len(images), "other": other}
    out: dict[str, Any] = {
        "perception": sum(scores[s] for s in PERCEPTION if s in scores),
        "cognition": sum(scores[s] for s in COGNITION if s in scores),
    }
    ordered = [s for s in PERCEPTION + COGNITION if s in scores] + sorted(
        set(scores) - set(PERCEPTION + COGNITION)
    )
    out.update({s: scores[s] for s in ordered})
    details["missing"] = [s for s in PERCEPTION + COGNITION if s not in scores]
    out["details"] = details
    return out
