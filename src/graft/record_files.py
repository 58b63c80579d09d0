"""Record files (a JSON list, or JSON Lines) read one way, with one error type.

``iter_records`` reads either kind: a ``.jsonl`` file holds one record per line, any other file
one JSON list of records, unless its first line is a whole JSON object and more lines follow (JSON
Lines under another suffix). ``iter_jsonl`` reads JSON Lines whatever the suffix (POPE ships its
question lines as ``.json``). Both yield ``(record, where)``, ``where`` being ``"file.jsonl:12"``
(a line) or ``"file.json[3]"`` (an item of the list).

Every problem with a record is a ``RecordError`` whose message starts with that place, then names
the record's id where known, then the field; its ``reason`` is a short key that a reader which
skips bad records counts them under. Ids are checked one way (``check_id``) and must be unique
(``UniqueIds``): they key predictions, resumption and scoring.
"""

from __future__ import annotations

import codecs
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

logger = logging.getLogger(__name__)
T = TypeVar("T")


class RecordError(ValueError):
    """A record (or a line of a record file) that cannot be used; the message names the file,
    the line or list index, the record and the field; ``reason`` names the kind of problem."""

    def __init__(self, message: str, reason: str = "bad_field") -> None:
        super().__init__(message)
        self.reason = reason


OnBad = Callable[[RecordError], None]


def _existing(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.is_dir():
        raise FileNotFoundError(f"{path} is a folder; give a record file (a JSON list or JSON Lines)")
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    return path


def _invalid_json(where: str, err: json.JSONDecodeError) -> RecordError:
    return RecordError(f"{where}: not valid JSON ({err.msg} at column {err.colno})", "malformed_json")


def _not_utf8(where: str, err: UnicodeDecodeError, column: int) -> RecordError:
    byte = err.object[err.start : err.start + 1].hex()
    return RecordError(f"{where}: not valid UTF-8 (byte 0x{byte} at column {column})", "malformed_json")


def _unreadable(where: str, err: ValueError) -> RecordError:
    """A line's decoding or parsing error as a ``RecordError``."""
    if isinstance(err, UnicodeDecodeError):
        return _not_utf8(where, err, err.start + 1)
    assert isinstance(err, json.JSONDecodeError)
    return _invalid_json(where, err)


def decode_utf8(data: bytes, path: str | os.PathLike) -> str:
    """A file's text (a leading byte-order mark dropped); bytes that are not UTF-8 are a
    ``RecordError`` naming the file and line."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise _not_utf8(f"{path}:{line}", err, err.start - data.rfind(b"\n", 0, err.start)) from None


def first_char(path: str | os.PathLike) -> str:
    """The file's first character past a byte-order mark and white space (``[`` for a JSON list,
    ``{`` for JSON Lines or one object), read as bytes: a file that is not UTF-8 fails later, where
    its lines are read and named."""
    with _existing(path).open("rb") as f:
        return f.read(4096).removeprefix(codecs.BOM_UTF8).lstrip()[:1].decode("ascii", errors="replace")


def load_json(path: str | os.PathLike) -> Any:
    """One JSON document; an unreadable one is a ``RecordError`` naming the file and line."""
    path = _existing(path)
    try:
        return json.loads(decode_utf8(path.read_bytes(), path))
    except json.JSONDecodeError as err:
        raise _invalid_json(f"{path}:{err.lineno}", err) from None


def _yield_object(record: Any, where: str, on_bad: OnBad | None) -> Iterator[tuple[dict, str]]:
    if isinstance(record, dict):
        yield record, where
        return
    error = RecordError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if on_bad is None:
        raise error
    on_bad(error)


def iter_objects(items: list, prefix: str, on_bad: OnBad | None = None) -> Iterator[tuple[dict, str]]:
    """``(item, "prefix[i]")`` for every item of a list of records read from a document; an item
    that is not an object raises ``RecordError``, or is handed to ``on_bad`` and skipped."""
    for i, item in enumerate(items):
        yield from _yield_object(item, f"{prefix}[{i}]", on_bad)


def iter_jsonl(path: str | os.PathLike, on_bad: OnBad | None = None) -> Iterator[tuple[dict, str]]:
    """``(record, "file:line")`` for every non-blank line. A line that is not a JSON object raises
    ``RecordError``, or, with ``on_bad``, is handed to it and skipped."""
    path = _existing(path)
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8").rstrip("\r\n")
                if not line.strip():
                    continue
                record = json.loads(line)  # without its newline: an error's column is on this line
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                error = _unreadable(where, err)
                if on_bad is None:
                    raise error from None
                on_bad(error)
                continue
            yield from _yield_object(record, where, on_bad)


def _json_lines(path: Path) -> bool:
    """Whether a file named otherwise holds JSON Lines (POPE ships its questions as ``.json``): its
    first line is a whole JSON object and another line follows. A list, or one object over several
    lines, is one document."""
    if first_char(path) != "{":
        return False
    with path.open("rb") as f:
        lines = (raw for raw in f if raw.strip())
        first = next(lines).removeprefix(codecs.BOM_UTF8)
        try:
            whole = isinstance(json.loads(first), dict)
        except ValueError:  # not JSON, or not UTF-8
            return False
        return whole and next(lines, None) is not None


def iter_records(path: str | os.PathLike, on_bad: OnBad | None = None) -> Iterator[tuple[dict, str]]:
    """``(record, where)`` for every record of a JSON list, or of a ``.jsonl`` file (or of a file
    that holds JSON Lines under another suffix).

    A JSON list that does not parse is always an error (nothing in it can be trusted); a line of
    JSON Lines that does not parse, or an item that is not an object, is an error too, unless
    ``on_bad`` is given: then it is handed the error and reading goes on.
    """
    path = Path(path)
    if path.suffix.lower() == ".jsonl" or _json_lines(path):
        yield from iter_jsonl(path, on_bad)
        return
    data = load_json(path)
    if not isinstance(data, list):
        raise RecordError(
            f"{path}: expected a JSON list of records, got {type(data).__name__}; "
            "use the .jsonl suffix for one record per line",
            "malformed_json",
        )
    yield from iter_objects(data, str(path), on_bad)


def read_records(path: str | os.PathLike) -> list[dict]:
    """Every record of a JSON list or a ``.jsonl`` file (errors name the file and line)."""
    return [record for record, _ in iter_records(path)]


def check_id(value: Any, where: str, key: str = "id") -> str | int:
    """A record's id: a string or an integer (a bool is neither)."""
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise RecordError(f"{where}: field {key!r} must be a string or an integer, got {value!r:.80}")
    return value


class UniqueIds:
    """Ids met so far; a repeated one is a ``RecordError`` naming both places."""

    def __init__(self, verb: str = "used") -> None:
        self.verb = verb
        self._first: dict[Any, str] = {}

    def add(self, rid: Any, where: str) -> None:
        if rid in self._first:
            raise RecordError(
                f"{where}: id {rid!r} already {self.verb} at {self._first[rid]}; ids must be unique"
            )
        self._first[rid] = where


def load_records(
    path: str | os.PathLike, parse: Callable[[dict, str], T], skip_bad: bool = False
) -> tuple[list[T], int]:
    """Parse every line of a JSON Lines file with ``parse(record, where)``.

    ``parse`` raises ``RecordError`` for a bad row. Returns the parsed rows and how many bad rows
    were skipped (always 0 unless ``skip_bad``).
    """
    rows: list[T] = []
    bad = 0

    def skip(err: RecordError) -> None:
        nonlocal bad
        if not skip_bad:
            raise err
        bad += 1
        logger.warning("skipping bad row: %s", err)

    for record, where in iter_jsonl(path, on_bad=skip):
        try:
            rows.append(parse(record, where))
        except RecordError as err:
            skip(err)
    return rows, bad
