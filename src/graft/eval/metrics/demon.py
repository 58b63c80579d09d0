"""DEMON scoring as the benchmark defines it, without its scripts' bugs.

Every answer, reference and option is first normalised the benchmark's way (VQA-style
punctuation handling, periods dropped, lower-cased). Then, per task:

- open-ended: ROUGE-L F of the ``rouge`` package (pltrdy, the one the benchmark uses):
  sentences split at ".", word *types* (not counts) for the lengths, the union of longest common
  subsequences across sentences, F = 2PR / (P + R + 1e-8); an empty answer scores 0.
- multi-choice: the answer picks the option with the highest TF-IDF cosine similarity
  (scikit-learn's ``TfidfVectorizer`` fitted on the answer and the options); when no vocabulary
  can be built, an exact match decides.
- image-choice (options are images): the benchmark's ``evaluate.py`` rule by default: the answer
  must begin with the right "image x" and mention no second of "image a".."image d" (plain
  substrings, so "image about" mentions image a). "The answer is Image B." is wrong. A lenient
  reading (``lenient_images``: exactly one "Image X" named anywhere, as whole words) is an
  explicit option, reported as the metric ``accuracy_lenient``.

An empty answer (empty once normalised) is wrong for every kind and counted per task as
``empty``. Category score = mean of its tasks' scores x 100. Deliberate departures from the
scripts, each a bug there (docs/tasks.md, "DEMON scoring"): every task gets its own score (the
scripts gave a category's tasks the last task's file); RecipeQA_VisualCloze is scored as
image-choice (misspelt there, so it fell to TF-IDF matching, which ignores one-letter words
and cannot tell "Image A" from "Image B"); ALFRED's empty question_type is inferred (the
reader does it); all periods not followed by a digit are dropped (``re.sub`` got
``re.UNICODE`` as its count, so only the first 32 were); an answer that shares no word with
any option (an empty one included), or ties between options, picks none instead of the first
option (the argmax of an all-zero similarity vector).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from graft.eval.answers import image_choice, named_image
from graft.eval.readers.demon import CATEGORIES, TASK_CATEGORY

_PUNCT = list(';/[]"{}()=+\\_-><@`,?!')
_COMMA_IN_NUMBER = re.compile(r"(\d)(,)(\d)")
_PERIOD = re.compile(r"\.(?!\d)")


def normalize(text: str) -> str:
    """The benchmark's answer normalisation."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    out = text
    for p in _PUNCT:
        # a mark next to a space (or any text with a 1,000-style number) is dropped; else it splits
        if p + " " in text or " " + p in text or _COMMA_IN_NUMBER.search(text):
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    out = _PERIOD.sub("", out)
    return out.strip("'").strip('"').strip().lower()


def _lcs_words(ref: list[str], hyp: list[str]) -> list[str]:
    """One longest common subsequence of two word lists, chosen with the ``rouge`` package's
    tie-breaking (walk back from the end; on a tie move along ``hyp``)."""
    n, m = len(ref), len(hyp)
    table = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            if ref[i - 1] == hyp[j - 1]:
                table[i][j] = table[i - 1][j - 1] + 1
            else:
                table[i][j] = max(table[i - 1][j], table[i][j - 1])
    words: list[str] = []
    i, j = n, m
    while i > 0 and j > 0:
        if ref[i - 1] == hyp[j - 1]:
            words.append(ref[i - 1])
            i, j = i - 1, j - 1
        elif table[i - 1][j] > table[i][j - 1]:
            i -= 1
        else:
            j -= 1
    return words[::-1]


def _sentences(text: str) -> list[str]:
    return [" ".join(s.split()) for s in text.split(".") if len(s) > 0]


def rouge_l(hypothesis: str, reference: str) -> float:
    """ROUGE-L F (summary level) of the ``rouge`` package, on already normalised text."""
    hyp, ref = _sentences(hypothesis), _sentences(reference)
    if not hyp or not ref:
        return 0.0
    ref_types = {w for s in ref for w in s.split(" ")}
    hyp_types = {w for s in hyp for w in s.split(" ")}
    union: set[str] = set()
    hits = 0
    for r in ref:
        before = len(union)
        for h in hyp:
            union |= set(_lcs_words(r.split(" "), h.split(" ")))
        hits += len(union) - before
    recall, precision = hits / len(ref_types), hits / len(hyp_types)
    return 2.0 * (precision * recall) / (precision + recall + 1e-8)


def tfidf_choice(answer: str, choices: Sequence[str]) -> int | None:
    """Index of the option most TF-IDF-cosine-similar to the answer; None if none stands out."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.metrics.pairwise import cosine_similarity

    try:
        matrix = TfidfVectorizer().fit_transform([answer, *choices])
    except ValueError:  # empty vocabulary: only one-letter words or nothing at all
        exact = [i for i, c in enumerate(choices) if c == answer]
        return exact[0] if len(exact) == 1 else None
    sims = cosine_similarity(matrix[0:1], matrix[1:]).flatten()
    best = sims.max()
    if best <= 0 or (sims == best).sum() > 1:
        return None
    return int(sims.argmax())


def score_sample(
    kind: str,
    prediction: str,
    response: str,
    choices: Sequence[str] | None,
    lenient_images: bool = False,
) -> dict[str, Any]:
    """``{"score", "picked"?}`` for one sample of a task of the given kind; ``lenient_images``
    reads image choices leniently (``named_image``) instead of the benchmark's way."""
    pred, gold = normalize(prediction), normalize(response)
    if not gold:
        raise ValueError(f"the reference {response!r} is empty once normalised")
    if kind == "open-ended":
        return {"score": rouge_l(pred, gold) if pred else 0.0}
    if kind == "image-choice":
        read = named_image if lenient_images else image_choice
        want = read(gold)
        if want is None:
            where = "" if lenient_images else " at its start"
            raise ValueError(f"the reference {response!r} names no 'Image X'{where}")
        got = read(pred)
        return {"score": float(got == want), "picked": got}
    options = [normalize(c) for c in choices or []]
    if gold not in options:
        raise ValueError(f"the reference {response!r} is not one of the options {list(choices or [])}")
    picked = tfidf_choice(pred, options) if pred else None  # empty: wrong, not the first option
    return {"score": float(picked is not None and options[picked] == gold), "picked": picked}


def score_tasks(rows: Sequence[Mapping[str, Any]], lenient_images: bool = False) -> dict[str, dict[str, Any]]:
    """Per task ``{"metric", "score" (x100), "n", "empty", "unmatched"?}`` from per-sample rows
    ``{"task", "kind", "prediction", "response", "choices"?}``. Image-choice tasks read with
    ``lenient_images`` report the metric ``accuracy_lenient``."""
    per_task: dict[str, list[tuple[str, dict, bool]]] = defaultdict(list)
    for row in rows:
        result = score_sample(
            row["kind"], row["prediction"], row["response"], row.get("choices"), lenient_images
        )
        per_task[row["task"]].append((row["kind"], result, not normalize(row["prediction"])))
    out = {}
    for task, results in per_task.items():
        kind = results[0][0]
        scores = [r["score"] for _, r, _ in results]
        metric = "ROUGE_L" if kind == "open-ended" else "accuracy"
        out[task] = {
            "metric": f"{metric}_lenient" if kind == "image-choice" and lenient_images else metric,
            "score": 100.0 * sum(scores) / len(scores),
            "n": len(scores),
            "empty": sum(empty for _, _, empty in results),
        }
        if kind != "open-ended":
            out[task]["unmatched"] = sum(r["picked"] is None for _, r, _ in results)
    return out


def category_scores(task_scores: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per category: the mean of its tasks' scores (already x100) and which tasks were missing.
    Tasks outside the 29 known ones are grouped under "Other"."""
    groups: dict[str, list[str]] = defaultdict(list)
    for task in task_scores:
        groups[TASK_CATEGORY.get(task, "Other")].append(task)
    out = {}
    for category in [*CATEGORIES, "Other"]:
        tasks = groups.get(category)
        if not tasks:
            continue
        out[category] = {
            "score": sum(task_scores[t]["score"] for t in tasks) / len(tasks),
            "tasks": sorted(tasks),
            "missing": [t for t in CATEGORIES.get(category, []) if t not in task_scores],
        }
    return out
