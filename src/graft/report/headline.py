"""Which number heads each task family in a report (``HEADLINES``: what it measures), what its
per-category numbers measure (``CATEGORY_MEASURES``), how both are read from a run's
``results.json`` metrics (``headline_and_categories``) and what one run's headline is when it
measured less than the family's headline (``headline_measure``: a limited run's POPE splits, an
MMBench without its rotated copies, a user task's first metric)."""

from __future__ import annotations

from typing import Any

from graft.report.model import is_number

HEADLINES = {
    "pope": "mean F1",
    "mme": "perception",
    "scienceqa_img": "accuracy",
    "mmbench": "circular accuracy",
    "demon": "mean category score",
    "coco_caption": "CIDEr",
    "llava_bench": "relative score",
    "questions": "accuracy",
    "demo/binary": "accuracy",
    "demo/binary_blind": "accuracy, images blanked",
    "demo/mcq": "accuracy",
    "demo/mcq_blind": "accuracy, images blanked",
}
# what the numbers in a family's per-category chart and table are (the scorers' own units)
CATEGORY_MEASURES = {
    "pope": "F1",
    "mme": "MME score, accuracy + accuracy+",
    "scienceqa_img": "accuracy %",
    "mmbench": "accuracy % per question",
    "demon": "ROUGE-L or accuracy x 100",
    "coco_caption": "metric",
    "llava_bench": "relative score",
    "questions": "accuracy per question type",
}
#: POPE's three splits: a run with fewer (a limited run takes the first samples) is labelled so
POPE_SPLITS = ("adversarial", "popular", "random")
_CAPTION_KEYS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")


def _pope_splits(metrics: dict[str, Any]) -> dict[str, float]:
    return {s: v["f1"] for s, v in metrics.items() if isinstance(v, dict) and is_number(v.get("f1"))}


def _user_numbers(metrics: dict[str, Any]) -> dict[str, float]:
    """A user task's numbers, sample counts (``n``, ``.../n``) left out: they are no scores."""
    return {k: v for k, v in metrics.items() if is_number(v) and k != "n" and not k.endswith("/n")}


def headline_measure(task: str, metrics: dict[str, Any]) -> str:
    """What this run's headline number is: the family's measure (``HEADLINES``), said exactly
    when the run measured less. POPE with only some of its three splits (a ``--limit`` run
    answers the first samples: adversarial ones) is ``F1, adversarial only``; MMBench whose every
    question came without its rotated copies (``groups`` equal to ``n``) has a circular accuracy
    that is plain accuracy; a user task's headline is its first metric, named."""
    if task == "pope":
        splits = sorted(_pope_splits(metrics))
        if splits and set(splits) < set(POPE_SPLITS):
            return f"F1, {splits[0]} only" if len(splits) == 1 else f"mean F1, {' + '.join(splits)} only"
    if task == "mmbench" and is_number(metrics.get("n")) and metrics.get("groups") == metrics["n"]:
        return "accuracy, no circular copies"
    if task not in HEADLINES and _user_numbers(metrics):
        return next(iter(_user_numbers(metrics)))
    return HEADLINES.get(task, "score")


def headline_and_categories(task: str, metrics: dict[str, Any]) -> tuple[float | None, dict[str, float]]:
    """The family's headline number and its per-category numbers: POPE's mean F1 over the splits
    present, MME's perception total, ScienceQA's accuracy, MMBench's circular accuracy, DEMON's mean
    category score, CIDEr, LLaVA-Bench's overall relative score, the accuracy of graft's question
    files (``graft evaluate``: per question type ``qtype/{type}/accuracy``); for a user task its
    first metric, its other metrics its categories.
    DEMON's categories are its tasks' when the run's tasks all fall in one category (a world's own
    DEMON-format tasks): one bar named "Other" would hide which task fails."""
    if task == "pope":
        splits = _pope_splits(metrics)
        return (sum(splits.values()) / len(splits) if splits else None), splits
    if task == "mme":
        skip = {"perception", "cognition", "details", "counts"}
        return metrics.get("perception"), {k: v for k, v in metrics.items() if k not in skip and is_number(v)}
    if task in ("scienceqa_img", "mmbench"):
        head = metrics.get("circular_accuracy", metrics.get("accuracy"))
        return head, dict(metrics.get("per_category", {}))
    if task == "demon":
        cats = {k: v for k, v in metrics.get("categories", {}).items() if is_number(v)}
        head = sum(cats.values()) / len(cats) if cats else None
        tasks = {k: v for k, v in metrics.get("tasks", {}).items() if is_number(v)}
        return head, (tasks if len(cats) == 1 and tasks else cats)
    if task == "coco_caption":
        return metrics.get("CIDEr"), {k: metrics[k] for k in _CAPTION_KEYS if is_number(metrics.get(k))}
    if task == "llava_bench":
        skip = {"all", "details", "counts", "samples"}
        return metrics.get("all"), {k: v for k, v in metrics.items() if k not in skip and is_number(v)}
    if task == "questions":
        start, end = "qtype/", "/accuracy"
        types = {
            k[len(start) : -len(end)]: v
            for k, v in metrics.items()
            if k.startswith(start) and k.endswith(end)
        }
        return metrics.get("accuracy"), {t: v for t, v in types.items() if is_number(v)}
    # a user task scored by simple metrics: the first one heads, the rest are its categories
    numbers = _user_numbers(metrics)
    return (next(iter(numbers.values())) if numbers else None), dict(list(numbers.items())[1:])
