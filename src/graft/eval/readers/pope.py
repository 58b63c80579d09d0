"""POPE: JSONL question files, one per split (``coco_pope_{random,popular,adversarial}.json``).

Each line: ``{"question_id", "image", "text", "label": "yes"|"no"}``; LLaVA's merged file
(``llava_pope_test.jsonl``) instead carries the split in ``"category"``. ``path`` may be one such
file or a folder of per-split files. In a folder the per-split files number their questions
from 1 each, so sample ids are ``"{split}/{question_id}"``; from a single file they are the
file's own ``question_id``.

The prompt is ``<image>\n`` and the bare question: LLaVA's file ends its questions with the
short-answer line (``graft.prompts.SHORT_ANSWER``), which is dropped here, so both forms read the
same; the built-in task (``task_files/pope.yaml``) adds it back as its ``post_prompt``, as
LLaVA-1.5 and lmms-eval ask POPE.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from graft.eval.readers.base import IMAGE_MARKER, Collector, ReadResult, Sample, image_folder, need
from graft.prompts import SHORT_ANSWER
from graft.record_files import RecordError, iter_jsonl

SPLITS = ("random", "popular", "adversarial")
_SUFFIX = "\n" + SHORT_ANSWER
_SPLIT_IN_NAME = re.compile(r"(?:^|_)(random|popular|adversarial)(?:\.|_|$)")


def split_from_name(path: Path) -> str | None:
    m = _SPLIT_IN_NAME.search(path.name)
    return m.group(1) if m else None


def read_pope(
    path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    skip_bad: bool = False,
    check_images: bool = True,
) -> ReadResult:
    """POPE questions from one file or a folder of per-split files.

    ``image_root`` (the COCO val2014 folder) defaults to ``images/`` beside the questions when
    that exists, else the questions' own folder.
    """
    path = Path(path)
    image_root = image_folder(path if path.is_dir() else path.parent, image_root)
    out = Collector(skip_bad, check_images)

    def sample(record: dict, where: str, file: Path) -> Sample:
        qid = need(record, "question_id", (int, str), where)
        image = need(record, "image", str, where)
        text = need(record, "text", str, where).removesuffix(_SUFFIX)
        label = need(record, "label", str, where).strip().lower()
        if label not in ("yes", "no"):
            raise RecordError(f"{where}: field 'label' must be yes or no, got {record['label']!r}")
        split = record.get("category", split_from_name(file))
        if not isinstance(split, str) or not split:
            raise RecordError(f"{where}: no split: give 'category' or name the file coco_pope_<split>.json")
        img = out.image(image_root / image, where)
        sample_id = f"{split}/{qid}" if file != path else qid
        return Sample(
            sample_id,
            f"{IMAGE_MARKER}\n{text}",
            [img],
            label,
            {"split": split, "question": text},
            where,
        )

    files = [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".json", ".jsonl") and split_from_name(p))
        if not files:
            raise FileNotFoundError(f"{path}: no POPE question file (coco_pope_<split>.json)")
    for f in files:
        out.collect(iter_jsonl(f), lambda r, w, f=f: sample(r, w, f))
    return out.result
