"""Benchmark adaptation (``graft adapt``): benchmark-style data made LLaVA instruction records.

The readers (``adapt_readers``) turn VQA question/answer lines, COCO captions or multiple-choice
lines into ``Item``s; ``render`` makes them records with LLaVA-1.5's response-format prompts:

* a short-answer question gets ``SHORT_ANSWER`` after it;
* a multiple-choice question gets its options lettered one per line (shuffled, seeded, the
  answer letter following its option), then ``MC_ANSWER``; the answer is the letter;
* a caption gets a brief-description instruction drawn (seeded) from ``BRIEF_CAPTION``.

With ``templates="instructblip"`` the questions go through InstructBLIP-style templates instead.
Questions on one image may be merged into one multi-turn record (LLaVA-1.5 does this for VQA):
the ``<image>`` marker in the first human turn only, the turns in a seeded order, at most
``max_turns`` of them a record. Every choice is seeded by the seed and the item's id, so the same
inputs and seed give byte-identical output, and every record passes ``parse_record``.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graft.data.records import parse_record
from graft.files import write_text_atomic
from graft.instruct.adapt_readers import FORMATS, MARKER, Item, detect_format, read_items
from graft.prompts import MC_ANSWER, OPTION_LETTERS, SHORT_ANSWER
from graft.record_files import RecordError, UniqueIds

logger = logging.getLogger(__name__)

#: graft's brief-description instructions for captions (in the spirit of LLaVA's list)
BRIEF_CAPTION = (
    "Describe the image concisely.",
    "Give a short description of this picture.",
    "Summarize what the image shows in one sentence.",
    "Write a brief caption for this photo.",
    "In a few words, what does the image show?",
    "Offer a one-sentence account of the picture.",
    "Caption the image briefly.",
    "Provide a short summary of the visual content.",
)
#: InstructBLIP-style templates (the image comes first, as InstructBLIP's ``<Image>``)
INSTRUCTBLIP_VQA = (
    "Question: {question} Short answer:",
    "{question} Answer in a few words:",
    "Look at the image and answer briefly: {question}",
    "Given the image, give a short answer to the question: {question}",
    "Q: {question} A:",
    "Using the image, answer this question as briefly as possible. {question}",
)
INSTRUCTBLIP_MC = (
    "Question: {question}\nOptions:\n{options}\nAnswer with the letter:",
    "{question}\nChoose from:\n{options}\nThe letter of the answer is",
    "Question: {question}\nChoices:\n{options}\nReply with the letter of the correct choice:",
    "Pick the right option for the question about the image. {question}\n{options}\nAnswer:",
)
INSTRUCTBLIP_CAPTION = (
    "A brief caption of the image:",
    "A short description of the picture:",
    "Write a one-sentence caption for the image.",
    "What does the photo show? Answer in one sentence.",
    "Briefly describe the image:",
)
TEMPLATES = ("llava", "instructblip")
#: how many skipped records are logged one by one (all are counted)
LOGGED_SKIPS = 20


@dataclass
class AdaptSettings:
    format: str = "auto"  # "auto" or one of FORMATS: vqa, caption, mc
    templates: str = "llava"  # or "instructblip"
    seed: int = 0
    #: merge the questions on one image into multi-turn records; None: on for vqa and mc
    merge_per_image: bool | None = None
    #: at most this many question/answer turns a merged record (more become several records)
    max_turns: int | None = None
    #: at most this many captions of one image (a seeded choice); None: every caption
    captions_per_image: int | None = None
    shuffle_options: bool = True
    #: put before every record id (to keep ids unique when files are mixed)
    id_prefix: str = ""
    #: count and log bad records instead of stopping at the first
    skip_bad: bool = False
    #: check that every image exists under ``image_root`` (default: the source file's folder)
    check_images: bool = False
    image_root: Path | None = None

    def check(self) -> None:
        if self.format not in ("auto", *FORMATS):
            raise ValueError(f"unknown format {self.format!r}: choose auto, {', '.join(FORMATS)}")
        if self.templates not in TEMPLATES:
            raise ValueError(f"unknown templates {self.templates!r}: choose {' or '.join(TEMPLATES)}")
        for name in ("max_turns", "captions_per_image"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")


@dataclass
class AdaptStats:
    format: str = ""
    records_in: int = 0  # source records (lines, list items, caption annotations), good and bad
    questions: int = 0  # items that became turns
    records_out: int = 0
    merged: int = 0  # records holding more than one question
    over_limit: int = 0  # captions left out by captions_per_image
    skipped: Counter = field(default_factory=Counter)  # bad records by reason

    def summary(self) -> dict[str, Any]:
        keys = ("format", "records_in", "questions", "records_out", "merged", "over_limit")
        return {**{k: getattr(self, k) for k in keys}, "skipped": dict(sorted(self.skipped.items()))}


def adapt(source: str | os.PathLike, settings: AdaptSettings) -> tuple[list[dict], AdaptStats]:
    """The instruction records made from ``source``, and what was read, merged and skipped.

    A bad record raises ``RecordError`` (file, line, field), or with ``skip_bad`` is counted."""
    settings.check()
    source, stats = Path(source), AdaptStats()

    def on_bad(err: RecordError) -> None:
        if not settings.skip_bad:
            raise err
        stats.skipped[err.reason] += 1
        if sum(stats.skipped.values()) <= LOGGED_SKIPS:
            logger.warning("skipping: %s", err)

    stats.format = detect_format(source) if settings.format == "auto" else settings.format
    items, stats.records_in = read_items(source, stats.format, on_bad)
    items = _checked(items, settings, settings.image_root or source.parent, on_bad)
    if stats.format == "caption" and settings.captions_per_image is not None:
        items, stats.over_limit = _limit_captions(items, settings.captions_per_image, settings.seed)
    merge = settings.merge_per_image if settings.merge_per_image is not None else stats.format != "caption"
    records = render(items, settings, merge)
    stats.questions, stats.records_out = len(items), len(records)
    stats.merged = sum(len(r["conversations"]) > 2 for r in records)
    return records, stats


def adapt_file(source: str | os.PathLike, out: str | os.PathLike, settings: AdaptSettings) -> AdaptStats:
    """``adapt`` written to ``out``: a LLaVA JSON list, or JSON Lines for a ``.jsonl`` name."""
    source, out = Path(source), Path(out)
    if out.resolve() == source.resolve():
        raise ValueError(f"the output {out} is the source file; choose another --out")
    records, stats = adapt(source, settings)
    write_records(out, records)
    return stats


def write_records(out: str | os.PathLike, records: list[dict]) -> None:
    """Written atomically: one record a line for ``.jsonl``, else one indented JSON list."""
    if Path(out).suffix == ".jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    else:
        text = json.dumps(records, ensure_ascii=False, indent=2) + "\n"
    write_text_atomic(out, text)


def render(items: list[Item], settings: AdaptSettings, merge: bool) -> list[dict]:
    """LLaVA records from ``items`` (in their order): one per item, or with ``merge`` one per image
    (split every ``max_turns`` turns), each checked by ``parse_record``."""
    groups: dict[str, list[Item]] = {}
    for item in items:
        groups.setdefault(item.image if merge else item.source_id, []).append(item)
    records, ids = [], UniqueIds("given")
    for group in groups.values():
        first = group[0]
        turns = [render_turn(item, settings) for item in group]
        random.Random(f"{settings.seed}:turns:{first.source_id}").shuffle(turns)
        size = settings.max_turns or len(turns)
        parts = [turns[i : i + size] for i in range(0, len(turns), size)]
        for k, part in enumerate(parts, start=1):
            rid = settings.id_prefix + first.source_id + (f"-part{k}" if len(parts) > 1 else "")
            record = _record(rid, first.image, part)
            ids.add(rid, f"the record made from {first.where}")
            parse_record(record, f"the record made from {first.where}")
            records.append(record)
    return records


def render_turn(item: Item, settings: AdaptSettings) -> tuple[str, str]:
    """The human prompt (without the image marker) and the answer for one item."""
    rng = random.Random(f"{settings.seed}:{item.source_id}")
    blip = settings.templates == "instructblip"
    if item.kind == "caption":
        return rng.choice(INSTRUCTBLIP_CAPTION if blip else BRIEF_CAPTION), item.answer
    if item.kind == "vqa":
        if blip:
            return rng.choice(INSTRUCTBLIP_VQA).format(question=item.question), item.answer
        return f"{item.question}\n{SHORT_ANSWER}", item.answer
    assert item.options is not None and item.correct is not None
    order = list(range(len(item.options)))
    if settings.shuffle_options:
        rng.shuffle(order)
    lines = "\n".join(
        f"{letter}. {item.options[i]}" for letter, i in zip(OPTION_LETTERS, order, strict=False)
    )
    letter = OPTION_LETTERS[order.index(item.correct)]
    if blip:
        return rng.choice(INSTRUCTBLIP_MC).format(question=item.question, options=lines), letter
    return f"{item.question}\n{lines}\n{MC_ANSWER}", letter


def _record(rid: str, image: str, turns: list[tuple[str, str]]) -> dict:
    conversations = []
    for k, (human, answer) in enumerate(turns):
        conversations.append({"from": "human", "value": f"{MARKER}\n{human}" if k == 0 else human})
        conversations.append({"from": "gpt", "value": answer})
    return {"id": rid, "image": image, "conversations": conversations}


def _checked(items: list[Item], settings: AdaptSettings, root: Path, on_bad: Any) -> list[Item]:
    """The items with a new id (and, with ``check_images``, an existing image)."""
    ids, exists, kept = UniqueIds("used"), {}, []
    for item in items:
        try:
            try:
                ids.add(item.source_id, item.where)
            except RecordError as err:
                raise RecordError(str(err), "duplicate_id") from None
            if settings.check_images:
                if item.image not in exists:
                    exists[item.image] = (root / item.image).is_file()
                if not exists[item.image]:
                    raise RecordError(
                        f"{item.where}: image {item.image!r} not found under {root}", "missing_image"
                    )
        except RecordError as err:
            on_bad(err)
            continue
        kept.append(item)
    return kept


def _limit_captions(items: list[Item], limit: int, seed: int) -> tuple[list[Item], int]:
    """At most ``limit`` captions an image, a seeded choice kept in file order; and how many went."""
    by_image: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        by_image.setdefault(item.image, []).append(i)
    keep: set[int] = set()
    for image, indices in by_image.items():
        chosen = (
            indices
            if len(indices) <= limit
            else random.Random(f"{seed}:captions:{image}").sample(indices, limit)
        )
        keep.update(chosen)
    return [item for i, item in enumerate(items) if i in keep], len(items) - len(keep)
