"""LLaVA-format records: check each record of a training file before anything is tokenized.

A record is ``{"id", "image" | "images" | neither, "conversations": [{"from", "value"}, ...]}``
with one ``<image>`` marker per image, anywhere in any user turn. Files are read by
``graft.record_files``; every problem is its ``RecordError``, whose message names the file, the
line (or list index), the record id and the field, and whose ``reason`` is a short key the
dataset counts when it skips bad records.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from graft.config import DEFAULT_IMAGE_TOKEN
from graft.prompts import ImageMarkerError, check_marker_count, markers_in_order
from graft.record_files import RecordError, check_id
from graft.templates import Message, messages_from_llava


@dataclass
class Record:
    id: str
    #: image paths as written in the record (relative to the dataset's image root)
    images: list[str]
    messages: list[Message]
    #: where the record came from: "file.jsonl:12" or "file.json[37]"
    source: str


def parse_record(raw: Any, where: str, image_token: str = DEFAULT_IMAGE_TOKEN) -> Record:
    """Check one raw record and turn it into a ``Record``; ``where`` is its source."""
    if not isinstance(raw, dict):
        raise RecordError(f"{where}: a record must be a JSON object, got {type(raw).__name__}", "bad_field")
    rid = str(check_id(raw.get("id", where), where))
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
    # DEMON's {image#k} placeholders become markers, the images follow the markers' order
    texts, order = markers_in_order([m.content for m in messages], len(images), here, image_token)
    messages = [Message(m.role, t) for m, t in zip(messages, texts, strict=True)]
    images = [images[i] for i in order]
    _check_markers(messages, images, here, image_token)
    return Record(rid, images, messages, where)


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


#: "a user turn", "an assistant turn"
_ARTICLE = {"user": "a", "assistant": "an", "system": "a"}


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
                f"{here}: field conversations[{i + offset}].from is {_ARTICLE[role]} {role} turn; {what}",
                "bad_turn_order",
            )
    if roles[-1] != "assistant":
        raise RecordError(
            f"{here}: field conversations[{len(messages) - 1}] is a human turn with no answer",
            "bad_turn_order",
        )


def _check_markers(messages: list[Message], images: list[str], here: str, image_token: str) -> None:
    for i, m in enumerate(messages):
        if m.role == "assistant" and image_token in m.content:
            raise ImageMarkerError(
                f"{here}: field conversations[{i}].value: {image_token} marker in an answer"
            )
    markers = sum(m.content.count(image_token) for m in messages)
    check_marker_count(markers, len(images), here, image_token, "field 'conversations'", images_first=False)
