"""Which number heads each task family in a report (``HEADLINES``: what it measures), what its
per-category numbers measure (``CATEGORY_MEASURES``) and how both are read from a run's
``results.json`` metrics (``headline_and_categories``)."""

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
}
_CAPTION_KEYS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")


def headline_and_categories(task: str, metrics: dict[str, Any]) -> tuple[float | None, dict[str, float]]:
    """The family's headline number and its per-category numbers: POPE's mean F1 over the splits
    present, MME's perception total, ScienceQA's accuracy, MMBench's circular accuracy, DEMON's mean
    category score, CIDEr, LLaVA-Bench's overall relative score; for a user task its first metric.
    DEMON's categories are its tasks' when the run's tasks all fall in one category (a world's own
    DEMON-format tasks): one bar named "Other" would hide which task fails."""
    if task == "pope":
        splits = {s: v["f1"] for s, v in metrics.items() if isinstance(v, dict) and "f1" in v}
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
    # a user task scored by simple metrics: the first one heads, the rest are its categories
    numbers = {k: v for k, v in metrics.items() if is_number(v)}
    return (next(iter(numbers.values())) if numbers else None), dict(list(numbers.items())[1:])
