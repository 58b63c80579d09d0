"""MMBench-style TSV: one question per row, the image inline as base64, options in columns A–D.

Columns: ``index, question, hint?, A, B, C?, D?, answer?, category?, l2-category?, image`` (more
are kept in ``meta``). Options stop at the first empty one. Circular copies of a question (its
options rotated) carry ``index + k * 1e6``; ``index % 1e6`` groups them for circular
evaluation. A copy's ``image`` may hold just the index of the row whose image it shares.
Images are decoded once into ``image_dir`` (default: ``{tsv stem}_images/`` beside the file);
a reading for scoring (``check_images=False``) leaves the image column alone and writes nothing.
"""

from __future__ import annotations

import base64
import binascii
import csv
import os
import sys
from pathlib import Path

from graft.eval.readers.base import IMAGE_MARKER, Collector, ReadResult, Sample
from graft.prompts import MC_ANSWER, OPTION_LETTERS
from graft.record_files import RecordError

OPTION_COLUMNS = OPTION_LETTERS[:9]  # the TSV's option columns, A-I
CIRCULAR_STRIDE = 1_000_000


def _missing(value: str | None) -> bool:
    return value is None or value.strip().lower() in ("", "nan")


#: what a decoded picture starts with -> its file suffix (PIL reads any by content whatever the name)
_SUFFIXES = {b"\x89PNG": ".png", b"\xff\xd8": ".jpg", b"GIF8": ".gif"}


def _image_file(row: dict, images_by_index: dict[str, str], image_dir: Path, index: int, where: str) -> Path:
    """The row's picture decoded into ``image_dir`` (written once), as a file path."""
    encoded = row["image"] or ""
    if len(encoded) <= 64:
        # a circular copy pointing at the row that holds the picture
        encoded = images_by_index.get(encoded.strip(), "")
    if not encoded:
        raise RecordError(f"{where}: empty 'image' (no base64 data, no index of a row with one)")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise RecordError(f"{where}: column 'image' is not valid base64") from None
    suffix = next((s for magic, s in _SUFFIXES.items() if data.startswith(magic)), ".img")
    image = image_dir / f"{index}{suffix}"
    if not image.is_file() or image.stat().st_size != len(data):
        image.write_bytes(data)
    return image


def build_prompt(question: str, hint: str | None, choices: list[str], suffix: str = MC_ANSWER) -> str:
    """LLaVA's MMBench prompt: hint, question, one ``X. option`` line per option, the suffix."""
    text = f"{hint}\n{question}" if hint else question
    for letter, option in zip(OPTION_COLUMNS, choices, strict=False):
        text += f"\n{letter}. {option}"
    return f"{IMAGE_MARKER}\n{text}" + (f"\n{suffix}" if suffix else "")


def read_mmbench(
    path: str | os.PathLike,
    image_dir: str | os.PathLike | None = None,
    suffix: str = MC_ANSWER,
    skip_bad: bool = False,
    check_images: bool = True,
) -> ReadResult:
    """Every row of an MMBench TSV; images are written to ``image_dir`` as files (unless
    ``check_images`` is off: then no image is decoded or written)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    image_dir = Path(image_dir) if image_dir is not None else path.with_name(f"{path.stem}_images")
    if check_images:
        image_dir.mkdir(parents=True, exist_ok=True)
    csv.field_size_limit(sys.maxsize)  # base64 images far exceed csv's default field limit
    with path.open(encoding="utf-8", newline="") as f:
        # pandas (which writes these files) quotes fields holding tabs, quotes or newlines
        reader = csv.DictReader(f, delimiter="\t")
        header = reader.fieldnames or []
        for column in ("index", "question", "A", "B", *(["image"] if check_images else [])):
            if column not in header:
                raise RecordError(f"{path}:1: missing column {column!r} (header: {header})")
        rows = [(row, f"{path}:{n}") for n, row in enumerate(reader, start=2)]
    images_by_index = {
        row["index"]: row["image"] for row, _ in rows if row.get("image") and len(row["image"]) > 64
    }

    out = Collector(skip_bad, check_images)

    def sample(row: dict, where: str) -> Sample:
        if None in row:
            raise RecordError(f"{where}: more fields than the header has columns")
        try:
            index = int(float(row["index"]))
        except (TypeError, ValueError):
            raise RecordError(f"{where}: column 'index' must be an integer, got {row['index']!r}") from None
        where = f"{where} (index {index})"
        choices = []
        for letter in OPTION_COLUMNS:
            if letter not in row or _missing(row[letter]):
                break
            choices.append(row[letter])
        if len(choices) < 2:
            raise RecordError(f"{where}: fewer than two options in columns A, B, ...")
        answer = None if _missing(row.get("answer")) else row["answer"].strip().upper()
        if answer is not None and answer not in OPTION_COLUMNS[: len(choices)]:
            raise RecordError(f"{where}: answer {row['answer']!r} is not one of the option letters")
        if check_images:
            image = _image_file(row, images_by_index, image_dir, index, where)
        else:
            image = image_dir / str(index)  # never written: scoring needs no picture
        hint = None if _missing(row.get("hint")) else row["hint"]
        extra = {k: v for k, v in row.items() if k not in ("image", "index", "answer", *OPTION_COLUMNS)}
        meta = extra | {"choices": choices, "index": index, "group": index % CIRCULAR_STRIDE}
        return Sample(
            index, build_prompt(row["question"], hint, choices, suffix), [image], answer, meta, where
        )

    return out.collect(rows, sample)
