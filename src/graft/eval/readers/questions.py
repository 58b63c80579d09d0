"""graft's own question files (the demo's ``eval/binary.jsonl`` and ``eval/mcq.jsonl``, or a
user's): JSON Lines or a JSON list, one single-image question per record::

    {"id", "image", "question", "answer", "qtype"}

Multiple-choice records add ``"choices": [...]`` and their answer is the option's letter. The
question is the whole user turn (answer-format suffix included); its image goes where an
``<image>`` marker stands, else first. ``qtype`` groups the scores (colour, count ...). Image
paths are relative to ``image_root`` (default: the file's folder).
"""

from __future__ import annotations

import os
from pathlib import Path

from graft.eval.readers.base import IMAGE_MARKER, Collector, ReadResult, Sample, need
from graft.prompts import OPTION_LETTERS, place_images
from graft.record_files import RecordError, check_id, iter_records


def _sample(record: dict, where: str, root: Path, out: Collector) -> Sample:
    rid = check_id(record.get("id"), where)
    where = f"{where} (id {rid!r})"
    image, question, answer, qtype = (
        need(record, k, str, where) for k in ("image", "question", "answer", "qtype")
    )
    choices = record.get("choices")
    meta: dict = {"qtype": qtype, "question": question}
    if choices is not None:
        if not isinstance(choices, list) or not choices or not all(isinstance(c, str) for c in choices):
            raise RecordError(f"{where}: field 'choices' must be a non-empty list of strings")
        if len(choices) > len(OPTION_LETTERS):
            raise RecordError(
                f"{where}: field 'choices': {len(choices)} options; at most {len(OPTION_LETTERS)}"
            )
        answer = answer.strip().upper()
        if answer not in OPTION_LETTERS[: len(choices)]:
            raise RecordError(f"{where}: field 'answer' of a multiple-choice record must be an option letter")
        meta["choices"] = choices
    path = out.image(root / image, f"{where}: field 'image'")
    prompt, _ = place_images(question, 1, where, IMAGE_MARKER)
    return Sample(rid, prompt, [path], answer, meta, where)


def read_questions(
    path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    skip_bad: bool = False,
    check_images: bool = True,
) -> ReadResult:
    """Every question of a question file; bad records raise ``RecordError`` naming file, line
    and field (or, with ``skip_bad``, are counted)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"question file not found: {path}")
    root = Path(image_root) if image_root is not None else path.parent
    out = Collector(skip_bad, check_images)
    return out.collect(iter_records(path), lambda record, where: _sample(record, where, root, out))
