"""LLaVA-format records: read JSON / JSONL files and check each record before anything is tokenized.

A record is ``{"id", "image" | "images" | neither, "conversations": [{"from", "value"}, ...]}``
with one ``<image>`` marker per image, anywhere in any user turn. Every problem is a
``RecordError`` whose message names the file, the line (or list index), the record id and
the field, and whose ``reason`` is a short key the dataset counts when it skips bad records.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graft.config import DEFAULT_IMAGE_TOKEN
from graft.processing import ImageMarkerError, demon_to_markers, has_demon_placeholders
from graft.templates import Message, messages_from_llava


class RecordError(ValueError):
    """A record (or a line of a data file) that cannot be used; ``reason`` names the kind."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class Record:
    id: str
    #: image paths as written in the record (relative to the dataset's image root)
    images: list[str]
    messages: list[Message]
    #: where the record came from: "file.jsonl:line 12" or "file.json[37]"
    source: str


def iter_records(
    path: str | os.PathLike, on_bad: Callable[[RecordError], None] | None = None
) -> Iterator[tuple[str, Any]]:
    """``(source, raw record)`` for every record of a LLaVA JSON list or a JSONL file.

    A JSON file that does not parse is always an error (nothing in it can be trusted). A JSONL
    line that does not parse is an error too, unless ``on_bad`` is given: then it is handed
    the error and reading goes on with the next line.
    """
    path = Path(path)
    if path.suffix == ".jsonl":
        yield from _iter_jsonl(path, on_bad)
        return
    with path.open(encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as err:
            raise RecordError(
                f"{path}:line {err.lineno} column {err.colno}: invalid JSON: {err.msg}", "malformed_json"
            ) from None
    if not isinstance(data, list):
        raise RecordError(
            f"{path}: expected a JSON list of records (LLaVA format), got {type(data).__name__}; "
            "use the .jsonl suffix for one record per line",
            "malformed_json",
        )
    for i, raw in enumerate(data):
        yield f"{path}[{i}]", raw


def _iter_jsonl(path: Path, on_bad: Callable[[RecordError], None] | None) -> Iterator[tuple[str, Any]]:
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as err:
                error = RecordError(
                    f"{path}:line {lineno} column {err.colno}: invalid JSON: {err.msg}", "malformed_json"
                )
                if on_bad is None:
                    raise error from None
                on_bad(error)
                continue
            yield f"{path}:line {lineno}", raw


def read_records(path: str | os.PathLike) -> list[dict]:
    """All raw records of a LLaVA JSON list or a JSONL file (errors name the file and line)."""
    return [raw for _, raw in iter_records(path)]


def parse_record(raw: Any, where: str, image_token: str = DEFAULT_IMAGE_TOKEN) -> Record:
    """Check one raw record and turn it into a ``Record``; ``where`` is its source."""
    if not isinstance(raw, dict):
        raise RecordError(f"{where}: a record must be a JSON object, got {type(raw).__name__}", "bad_field")
    rid = raw.get("id", where)
    if not isinstance(rid, (str, int)) or isinstance(rid, bool):
        raise RecordError(f"{where}: field 'id' must be a string or an integer, got {rid!r}", "bad_field")
    rid = str(rid)
    here = f"{where} (id {rid!r})"

    images = _images(raw, here)
    conversations = raw.get("conversations")
    if conversations is None or conversations == []:
        raise RecordError(f"{here}: field 'conversations' is missing or empty", "empty_conversation")
    if not isinstance(conversations, list):
        raise RecordError(f"{here}: field 'conversations' must be a list of turns", "bad_field")
    for i, turn in enumerate(conversations):
        if isinstance(turn, dict) and not isinstance(turn.get("from", ""), str):
            raise RecordError(f"{here}: field conversations[{i}].from must be a string", "bad_field")
    try:
        messages = messages_from_llava(conversations, where=here)
    except ValueError as err:
        # its message reads "{here}: conversations[i].x ...": say that this is the bad field
        detail = str(err).removeprefix(f"{here}: ")
        raise RecordError(f"{here}: field {detail}", "bad_field") from None
    _check_turns(messages, here)
    if any(has_demon_placeholders(m.content) for m in messages):
        messages, images = _from_demon(messages, images, here, image_token)
    _check_markers(messages, images, here, image_token)
    return Record(rid, images, messages, where)


def _from_demon(
    messages: list[Message], images: list[str], here: str, image_token: str
) -> tuple[list[Message], list[str]]:
    """DEMON's ``{image#k}`` placeholders become markers; images follow marker order."""
    try:
        texts, order = demon_to_markers([m.content for m in messages], len(images), image_token, here)
    except ImageMarkerError as err:
        raise RecordError(str(err), "image_marker_mismatch") from None
    converted = [Message(m.role, t) for m, t in zip(messages, texts, strict=True)]
    return converted, [images[i] for i in order]


def _images(raw: dict, here: str) -> list[str]:
    if "image" in raw and "images" in raw:
        raise RecordError(f"{here}: give either field 'image' or field 'images', not both", "bad_field")
    if "image" in raw:
        if not isinstance(raw["image"], str) or not raw["image"]:
            raise RecordError(
                f"{here}: field 'image' must be a non-empty string, got {raw['image']!r}", "bad_field"
            )
        return [raw["image"]]
    images = raw.get("images", [])
    if not isinstance(images, list):
        raise RecordError(
            f"{here}: field 'images' must be a list of paths, got {type(images).__name__}", "bad_field"
        )
    for k, image in enumerate(images):
        if not isinstance(image, str) or not image:
            raise RecordError(
                f"{here}: field images[{k}] must be a non-empty string, got {image!r}", "bad_field"
            )
    return list(images)


def _check_turns(messages: list[Message], here: str) -> None:
    """An optional system turn, then user / assistant alternating, starting with the user and
    ending with an answer: anything else would train on nothing or on the wrong side."""
    turns = messages[1:] if messages and messages[0].role == "system" else messages
    roles = [m.role for m in turns]
    offset = len(messages) - len(turns)
    if "assistant" not in roles or "user" not in roles:
        missing = "assistant ('gpt')" if "assistant" not in roles else "user ('human')"
        raise RecordError(f"{here}: field 'conversations' has no {missing} turn", "one_sided_conversation")
    for i, role in enumerate(roles):
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            what = "the first turn must be from 'human'" if i == 0 else "turns must alternate human / gpt"
            raise RecordError(
                f"{here}: field conversations[{i + offset}].from is a {role} turn; {what}", "bad_turn_order"
            )
    if roles[-1] != "assistant":
        raise RecordError(
            f"{here}: field conversations[{len(messages) - 1}] is a human turn with no answer",
            "bad_turn_order",
        )


def _check_markers(messages: list[Message], images: list[str], here: str, image_token: str) -> None:
    for i, m in enumerate(messages):
        if m.role == "assistant" and image_token in m.content:
            raise RecordError(
                f"{here}: field conversations[{i}].value: {image_token} marker in an answer",
                "image_marker_mismatch",
            )
    markers = sum(m.content.count(image_token) for m in messages)
    if markers != len(images):
        raise RecordError(
            f"{here}: field 'conversations' holds {markers} {image_token} marker(s) but the record has "
            f"{len(images)} image(s); put one marker where each image goes",
            "image_marker_mismatch",
        )
