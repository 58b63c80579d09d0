"""One dataset of a mixture, read and checked: LLaVA records, and text-only ShareGPT or Alpaca ones.

Files are read by ``graft.record_files.iter_records`` (a JSON list, or JSON Lines) and
every record is checked by ``graft.data.records.parse_record``. A ShareGPT record (``conversations``
or ``messages`` of ``{"from", "value"}`` or ``{"role", "content"}`` turns) and an Alpaca record
(``{"instruction", "input", "output"}``) become a LLaVA record without images. A record without an
id gets ``"{name}-{k}"``, ``k`` its place among the file's objects, so ids never depend on paths.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from graft.data.records import Record, parse_record
from graft.instruct.mix_spec import MixError
from graft.record_files import RecordError, iter_records

logger = logging.getLogger(__name__)
_ROLES = {"user": "human", "assistant": "gpt", "system": "system", "human": "human", "gpt": "gpt"}


@dataclass
class Source:
    name: str
    path: Path
    sha256: str
    #: the usable records in file order: each checked, and as the LLaVA-format dict written out
    records: list[tuple[Record, dict]] = field(default_factory=list)
    #: records skipped with ``skip_bad``, by reason
    bad: Counter = field(default_factory=Counter)


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sharegpt_turns(turns: list, where: str) -> list:
    out = []
    for i, turn in enumerate(turns):
        if isinstance(turn, dict) and "from" not in turn and "role" in turn:
            if turn["role"] not in _ROLES:
                raise RecordError(
                    f"{where}: field conversations[{i}].role is {turn['role']!r}; expected user or assistant"
                )
            turn = {"from": _ROLES[turn["role"]], "value": turn.get("content")}
        out.append(turn)
    return out


def _alpaca(raw: dict, where: str) -> dict:
    here = f"{where} (id {raw['id']!r})" if "id" in raw else where
    for key in ("instruction", "output"):
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            raise RecordError(f"{here}: field {key!r} must be a non-empty string (an Alpaca record)")
    extra = raw.get("input") or ""
    if not isinstance(extra, str):
        raise RecordError(f"{here}: field 'input' must be a string (an Alpaca record)")
    prompt = f"{raw['instruction']}\n\n{extra}" if extra.strip() else raw["instruction"]
    out = {"id": raw["id"]} if "id" in raw else {}
    out["conversations"] = [{"from": "human", "value": prompt}, {"from": "gpt", "value": raw["output"]}]
    return out


def to_llava(raw: dict, where: str) -> dict:
    """A LLaVA-format record from a LLaVA, ShareGPT or Alpaca one (not yet checked)."""
    if "conversations" not in raw and isinstance(raw.get("messages"), list):
        raw = {k: v for k, v in raw.items() if k != "messages"} | {"conversations": raw["messages"]}
    if isinstance(raw.get("conversations"), list):
        return {**raw, "conversations": _sharegpt_turns(raw["conversations"], where)}
    if "conversations" not in raw and "instruction" in raw:
        return _alpaca(raw, where)
    return raw


def image_fields(raw: dict) -> list[str]:
    """The names of a record's image fields: ``image`` or ``images[k]``."""
    if "image" in raw:
        return ["image"]
    return [f"images[{k}]" for k in range(len(raw.get("images", [])))]


def read_source(
    path: str | os.PathLike,
    name: str,
    label: str,
    skip_bad: bool = False,
    image_path: Callable[[str], Path] | None = None,
    sha256: str | None = None,
) -> Source:
    """Every usable record of one dataset file. A bad record (or a missing image, when
    ``image_path`` maps a record's image to the file to check) raises ``MixError`` prefixed with
    ``label``, or with ``skip_bad`` is counted and skipped. Ids must be unique within the file.
    ``sha256``: the file's digest when already known."""
    path = Path(path)
    if not path.is_file():
        raise MixError(f"{label}: field 'path': file not found: {path}")
    source = Source(name, path, sha256 or file_sha256(path))
    first: dict[str, str] = {}

    def skip(err: RecordError) -> None:
        if not skip_bad:
            raise MixError(f"{label}: {err}")
        source.bad[err.reason] += 1
        logger.warning("%s: skipping: %s", label, err)

    try:
        for k, (raw, where) in enumerate(iter_records(path, on_bad=skip)):
            try:
                llava = to_llava(raw, where)
                if "id" not in llava:
                    llava = {"id": f"{name}-{k}", **llava}
                record = parse_record(llava, where)
                if record.id in first:
                    raise RecordError(
                        f"{where}: id {record.id!r} is already used at {first[record.id]}; "
                        "ids must be unique within a file",
                        "duplicate_id",
                    )
                # a record skipped for its images still holds its id: a later copy is a duplicate,
                # so that a lock (which records ids) always names one record
                first[record.id] = where
                if image_path is not None:
                    check_images(record, llava, image_path)
            except RecordError as err:
                skip(err)
                continue
            source.records.append((record, llava))
    except RecordError as err:  # a JSON list that does not parse: nothing in it can be trusted
        raise MixError(f"{label}: {err}") from None
    if not source.records:
        skipped = f" ({sum(source.bad.values())} bad records skipped)" if source.bad else ""
        raise MixError(f"{label}: field 'path': the dataset has no usable records{skipped}")
    return source


def check_images(record: Record, raw: dict, image_path: Callable[[str], Path]) -> None:
    """A ``RecordError`` naming the record and the field when one of its images is missing."""
    images = [raw["image"]] if "image" in raw else raw.get("images", [])
    for key, image in zip(image_fields(raw), images, strict=True):
        if not image_path(image).is_file():
            raise RecordError(
                f"{record.source} (id {record.id!r}): field {key}: image not found: {image_path(image)}",
                "missing_image",
            )
