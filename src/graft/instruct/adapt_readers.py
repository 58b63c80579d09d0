"""Readers of benchmark-style data for ``graft adapt``: each turns one source format into ``Item``s.

* ``vqa``: JSON Lines of ``{"image", "question", "answer"}``, or VQAv2's ``"answers": [{"answer"}]``
  (the most frequent answer wins, ties by first occurrence); ids from ``question_id`` or ``id``.
* ``caption``: COCO captions (``{"images": [{"id", "file_name"}], "annotations": [{"image_id",
  "caption"}]}``); one item per caption.
* ``mc``: JSON Lines of ``{"image", "question", "options" | "choices", "answer"}``; the options a
  list or ``{"A": ..., "B": ...}``, the answer an upper-case letter, a 0-based index or an option's
  text; an optional ``hint`` (or ``context``) goes before the question.

The question files may also be one JSON list. Every bad record is a ``RecordError`` naming the
file, the line (or list index) and the field, handed to ``on_bad`` (which raises or counts it).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graft.prompts import OPTION_LETTERS, has_demon_placeholders
from graft.record_files import (
    OnBad,
    RecordError,
    UniqueIds,
    check_id,
    first_char,
    iter_jsonl,
    iter_objects,
    iter_records,
    load_json,
)

FORMATS = ("vqa", "caption", "mc")
#: the image marker; a question's own markers are dropped, the record places one itself
MARKER = "<image>"


@dataclass(frozen=True)
class Item:
    """One question (or caption) about one image, whatever format it came from."""

    kind: str  # "vqa" | "caption" | "mc"
    image: str  # the path as written in the source
    question: str  # "" for a caption
    answer: str  # for "mc": the right option's text
    source_id: str
    where: str  # "file.jsonl:12", "file.json[3]" or "captions.json:annotations[3]"
    options: tuple[str, ...] | None = None
    correct: int | None = None  # for "mc": the index of the right option


def _text(raw: dict, key: str, where: str, empty: str = "missing_field", numbers: bool = False) -> str:
    value = raw.get(key)
    if value is None:
        raise RecordError(f"{where}: field {key!r} is missing", "missing_field")
    kinds = (str, int) if numbers else (str,)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise RecordError(f"{where}: field {key!r} must be a string, got {value!r:.80}", "bad_field")
    return _clean(str(value), where, f"field {key!r}", empty)


def _clean(text: str, where: str, what: str, empty: str, markers_ok: bool = False) -> str:
    if markers_ok:
        text = text.replace(MARKER, "")
    text = text.strip()
    if not text:
        raise RecordError(f"{where}: {what} is empty", empty)
    if MARKER in text or has_demon_placeholders(text):
        raise RecordError(f"{where}: {what} holds an image marker or placeholder: {text!r:.80}", "bad_field")
    return text


def _image(raw: dict, where: str, key: str = "image") -> str:
    value = raw.get(key)
    if value is None:
        raise RecordError(f"{where}: field {key!r} is missing", "missing_field")
    if not isinstance(value, str) or not value.strip():
        raise RecordError(f"{where}: field {key!r} must be a non-empty path, got {value!r:.80}", "bad_field")
    return value


def _question(raw: dict, where: str) -> str:
    if raw.get("question") is None:
        raise RecordError(f"{where}: field 'question' is missing", "missing_field")
    if not isinstance(raw["question"], str):
        raise RecordError(f"{where}: field 'question' must be a string", "bad_field")
    question = _clean(raw["question"], where, "field 'question'", "empty_question", markers_ok=True)
    for key in ("hint", "context"):  # MMBench's hint, ScienceQA's context
        if isinstance(raw.get(key), str) and raw[key].strip():
            return f"{_clean(raw[key], where, f'field {key!r}', 'bad_field', markers_ok=True)}\n{question}"
    return question


def _source_id(raw: dict, where: str, keys: tuple[str, ...], fallback: str) -> str:
    for key in keys:
        if raw.get(key) is not None:
            return str(check_id(raw[key], where, key))
    return fallback


def _fallback_id(path: Path, where: str) -> str:
    """``stem-12`` from ``file.jsonl:12`` or ``file.json[12]``: the record's place in its file."""
    return f"{path.stem}-{where[len(str(path)) :].strip(':[]')}"


def _majority(answers: Any, where: str) -> str:
    if not isinstance(answers, list) or not answers:
        raise RecordError(f"{where}: field 'answers' must be a non-empty list", "missing_field")
    texts = []
    for k, entry in enumerate(answers):
        value = entry.get("answer") if isinstance(entry, dict) else entry
        if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).strip():
            texts.append(_clean(str(value), where, f"field answers[{k}]", "missing_field"))
    if not texts:
        raise RecordError(f"{where}: field 'answers' holds no answer text", "missing_field")
    counts = Counter(texts)
    return max(counts, key=counts.__getitem__)  # the first of the most frequent (insertion order)


def _vqa_item(raw: dict, where: str, path: Path) -> Item:
    image, question = _image(raw, where), _question(raw, where)
    if raw.get("answer") is None and raw.get("answers") is not None:
        answer = _majority(raw["answers"], where)
    else:
        answer = _text(raw, "answer", where, numbers=True)
    sid = _source_id(raw, where, ("question_id", "id"), _fallback_id(path, where))
    return Item("vqa", image, question, answer, sid, where)


def _options(raw: dict, where: str) -> list[str]:
    key = "options" if "options" in raw or "choices" not in raw else "choices"
    value = raw.get(key)
    if value is None:
        raise RecordError(f"{where}: field 'options' is missing", "missing_field")
    if isinstance(value, dict):
        letters = sorted(value)
        if letters != list(OPTION_LETTERS[: len(letters)]):
            raise RecordError(f"{where}: field {key!r} must be keyed A, B, C ... in turn, got {letters}")
        value = [value[letter] for letter in letters]
    if not isinstance(value, list) or not 2 <= len(value) <= len(OPTION_LETTERS):
        raise RecordError(f"{where}: field {key!r} must hold 2 to {len(OPTION_LETTERS)} options")
    options = []
    for k, option in enumerate(value):
        if isinstance(option, bool) or not isinstance(option, (str, int, float)):
            raise RecordError(f"{where}: field {key}[{k}] must be a string, got {option!r:.80}")
        options.append(_clean(str(option), where, f"field {key}[{k}]", "missing_field"))
    return options


def _correct(raw: dict, options: list[str], where: str) -> int:
    answer, n = raw.get("answer"), len(options)
    if answer is None:
        raise RecordError(f"{where}: field 'answer' is missing", "missing_field")
    if isinstance(answer, int) and not isinstance(answer, bool):
        if 0 <= answer < n:
            return answer
        raise RecordError(
            f"{where}: field 'answer' is index {answer} but there are {n} options (0..{n - 1})",
            "answer_out_of_range",
        )
    if not isinstance(answer, str):
        raise RecordError(f"{where}: field 'answer' must be a letter, an index or an option's text")
    text = answer.strip()
    if len(text) == 1 and text in OPTION_LETTERS:
        if OPTION_LETTERS.index(text) < n:
            return OPTION_LETTERS.index(text)
        raise RecordError(
            f"{where}: field 'answer' is {text!r} but there are {n} options (A-{OPTION_LETTERS[n - 1]})",
            "answer_out_of_range",
        )
    if text in options:
        return options.index(text)
    raise RecordError(
        f"{where}: field 'answer' {text!r:.80} is neither a letter, an index nor one of the options",
        "answer_not_in_options",
    )


def _mc_item(raw: dict, where: str, path: Path) -> Item:
    image, question = _image(raw, where), _question(raw, where)
    options = _options(raw, where)
    correct = _correct(raw, options, where)
    sid = _source_id(raw, where, ("question_id", "id", "index"), _fallback_id(path, where))
    return Item("mc", image, question, options[correct], sid, where, tuple(options), correct)


def _objects(path: Path, on_bad: OnBad) -> Iterator[tuple[dict, str]]:
    """The objects of a JSON Lines file, or of a JSON list (whatever the suffix). One JSON object
    over several lines (COCO captions' layout) is neither: an error that says so."""
    first = first_char(path)
    if path.suffix != ".jsonl" and first == "[":
        return iter_records(path, on_bad)
    if path.suffix != ".jsonl" and first == "{" and _one_document(path):
        raise RecordError(
            f"{path}: one JSON object over several lines, not JSON Lines or a list of records "
            "(COCO captions: --format caption)"
        )
    return iter_jsonl(path, on_bad)


def _one_document(path: Path) -> bool:
    """Whether the file is one JSON object spread over several lines."""
    try:
        return isinstance(load_json(path), dict) and path.read_bytes().strip().count(b"\n") > 0
    except RecordError:
        return False


def _read_lines(
    path: Path, on_bad: OnBad, parse: Callable[[dict, str, Path], Item]
) -> tuple[list[Item], int]:
    seen = 0

    def bad_line(err: RecordError) -> None:
        nonlocal seen
        seen += 1
        on_bad(err)

    items = []
    for raw, where in _objects(path, bad_line):
        seen += 1
        try:
            items.append(parse(raw, where, path))
        except RecordError as err:
            on_bad(err)
    return items, seen


def read_captions(path: Path, on_bad: OnBad) -> tuple[list[Item], int]:
    """One item per caption of a COCO captions file, and the number of annotations."""
    doc = load_json(path)
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), list) for k in ("images", "annotations")):
        raise RecordError(f"{path}: expected COCO captions: an object with lists 'images' and 'annotations'")
    files: dict[str | int, str] = {}
    image_ids = UniqueIds()
    for raw, where in iter_objects(doc["images"], f"{path}:images", on_bad):
        try:
            image_id = check_id(raw.get("id"), where)
            image_ids.add(image_id, where)  # a repeated id: whose are its captions? (the first's, skipped)
            files[image_id] = _image(raw, where, "file_name")
        except RecordError as err:
            on_bad(err)
    items = []
    for k, (raw, where) in enumerate(iter_objects(doc["annotations"], f"{path}:annotations", on_bad)):
        try:
            image_id = check_id(raw.get("image_id"), where, "image_id")
            if image_id not in files:
                raise RecordError(
                    f"{where}: field 'image_id' {image_id!r} is not among the images", "bad_field"
                )
            caption = _text(raw, "caption", where, empty="empty_caption")
            sid = _source_id(raw, where, ("id",), f"{image_id}-{k}")
            items.append(Item("caption", files[image_id], "", caption, sid, where))
        except RecordError as err:
            on_bad(err)
    return items, len(doc["annotations"])


def detect_format(path: str | os.PathLike) -> str:
    """``caption`` for a JSON object with images and annotations, else ``mc`` or ``vqa`` from the
    first readable record's fields; a ``RecordError`` when that tells nothing."""
    path = Path(path)
    if path.suffix != ".jsonl" and first_char(path) == "{":
        try:
            doc = load_json(path)
        except RecordError:  # JSON Lines under another suffix
            doc = None
        if isinstance(doc, dict) and "annotations" in doc and "images" in doc:
            return "caption"
    unreadable: list[RecordError] = []
    for raw, where in _objects(path, unreadable.append):
        if "options" in raw or "choices" in raw:
            return "mc"
        if "question" in raw and ("answer" in raw or "answers" in raw):
            return "vqa"
        raise RecordError(f"{where}: cannot tell the format from fields {sorted(raw)[:8]}; pass --format")
    if unreadable:  # no line could be read: say why (not JSON, not UTF-8 ...), not just "nothing"
        raise unreadable[0]
    raise RecordError(f"{path}: no record to tell the format from; pass --format")


def read_items(path: str | os.PathLike, fmt: str, on_bad: OnBad) -> tuple[list[Item], int]:
    """The items of ``path`` in format ``fmt`` (one of ``FORMATS``), in file order, and the number
    of source records seen (good and bad)."""
    path = Path(path)
    if fmt == "caption":
        return read_captions(path, on_bad)
    if fmt == "vqa":
        return _read_lines(path, on_bad, _vqa_item)
    if fmt == "mc":
        return _read_lines(path, on_bad, _mc_item)
    raise ValueError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
