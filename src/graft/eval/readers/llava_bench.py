"""LLaVA-Bench (COCO and In-the-Wild): questions, image contexts and reference answers, as JSONL.

A folder with ``questions.jsonl`` (``{"question_id", "image", "text", "category": conv | detail
| complex}``), ``context.jsonl`` (per image: ``{"image", "caption"}`` (a string or a list), or
the COCO form ``{"image", "captions": [...], "instances": [{"category", "bbox"}]}``),
``answers_gpt4.jsonl`` (``{"question_id", "text"}``: the reference answers the judge compares
against) and ``images/``. The judge's context is the captions, then one ``category: bbox`` line
per object when the context has boxes.
"""

from __future__ import annotations

import os
from pathlib import Path

from graft.eval.readers.base import IMAGE_MARKER, Collector, ReadResult, Sample, need
from graft.record_files import RecordError, iter_jsonl

CATEGORIES = ("conv", "detail", "complex")


def _context_text(record: dict, where: str) -> tuple[str, bool]:
    """(the judge's context for one image, whether it lists boxes)."""
    if "captions" in record or "instances" in record:
        captions = need(record, "captions", list, where)
        boxes = need(record, "instances", list, where)
        lines = []
        for j, inst in enumerate(boxes):
            if not isinstance(inst, dict) or "category" not in inst or "bbox" not in inst:
                raise RecordError(f"{where}: instances[{j}] needs 'category' and 'bbox'")
            lines.append(f"{inst['category']}: {inst['bbox']}")
        return "\n".join(map(str, captions)) + "\n\n" + "\n".join(lines), True
    caption = need(record, "caption", (str, list), where)
    # a single caption is one line, not one line per character
    return (caption if isinstance(caption, str) else "\n".join(map(str, caption))), False


def read_llava_bench(
    folder: str | os.PathLike,
    questions: str = "questions.jsonl",
    context: str = "context.jsonl",
    answers: str = "answers_gpt4.jsonl",
    image_root: str | os.PathLike | None = None,
    skip_bad: bool = False,
    check_images: bool = True,
) -> ReadResult:
    """Questions with their context and reference answer; ids are the ``question_id``."""
    folder = Path(folder)
    image_root = Path(image_root) if image_root is not None else folder / "images"
    contexts: dict[str, tuple[str, bool]] = {}
    for record, where in iter_jsonl(folder / context):
        contexts[need(record, "image", str, where)] = _context_text(record, where)
    references: dict[str | int, str] = {}
    for record, where in iter_jsonl(folder / answers):
        references[need(record, "question_id", (int, str), where)] = need(record, "text", str, where)

    out = Collector(skip_bad, check_images)

    def sample(record: dict, where: str) -> Sample:
        qid = need(record, "question_id", (int, str), where)
        image = need(record, "image", str, where)
        text = need(record, "text", str, where)
        category = need(record, "category", str, where)
        if category not in CATEGORIES:
            raise RecordError(f"{where}: category {category!r} is not one of {CATEGORIES}")
        if image not in contexts:
            raise RecordError(f"{where}: image {image!r} has no entry in {folder / context}")
        if qid not in references:
            raise RecordError(f"{where}: question_id {qid!r} has no reference answer in {folder / answers}")
        path = out.image(image_root / image, where)
        ctx, has_boxes = contexts[image]
        # LLaVA's judge rules: the in-the-wild prompts describe a caption context, the COCO ones boxes
        rule = category if has_boxes else f"llava_bench_{category}"
        meta = {"category": category, "question": text, "context": ctx, "rule": rule}
        return Sample(qid, f"{IMAGE_MARKER}\n{text}", [path], references[qid], meta, where)

    return out.collect(iter_jsonl(folder / questions), sample)
