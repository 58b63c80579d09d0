"""JSON Lines reading with errors that name ``file:line``: shared by question files,
prediction files and the benchmark readers."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

logger = logging.getLogger(__name__)
T = TypeVar("T")


class BadRecordError(ValueError):
    """A row of a file is malformed or points at a missing image; the message names file:line."""


def iter_jsonl(
    path: str | os.PathLike, on_bad: Callable[[BadRecordError], None] | None = None
) -> Iterator[tuple[dict, str]]:
    """``(record, "file:line")`` for every non-blank line. A line that is not a JSON object
    raises ``BadRecordError``, or, with ``on_bad``, is handed to it and skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise BadRecordError(
                        f"{where}: not valid JSON ({err.msg} at column {err.colno})"
                    ) from None
                if not isinstance(record, dict):
                    raise BadRecordError(f"{where}: expected a JSON object, got {type(record).__name__}")
            except BadRecordError as err:
                if on_bad is None:
                    raise
                on_bad(err)
                continue
            yield record, where


def load_records(
    path: str | os.PathLike, parse: Callable[[dict, str], T], skip_bad: bool = False
) -> tuple[list[T], int]:
    """Parse every non-blank line of a JSONL file with ``parse(record, where)``.

    ``where`` is ``"file:line"``; ``parse`` raises ``BadRecordError`` for a bad row. Returns the
    parsed rows and how many bad rows were skipped (always 0 unless ``skip_bad``).
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"question file not found: {path}")
    rows: list[T] = []
    bad = 0

    def skip(err: BadRecordError) -> None:
        nonlocal bad
        if not skip_bad:
            raise err
        bad += 1
        logger.warning("skipping bad row: %s", err)

    for record, where in iter_jsonl(path, on_bad=skip):
        try:
            rows.append(parse(record, where))
        except BadRecordError as err:
            skip(err)
    return rows, bad
