"""The response cache, the failure log and the run lock of an output folder.

``cache.jsonl`` holds one line per answer received, keyed by a hash of the request's content
(model, messages, sampling parameters): append-only, each line flushed and fsynced before the
next request's answer is written, so a run killed at any moment (even ``kill -9``) leaves at
most one torn last line, which the next run cuts off and asks again. Failures (after their
retries) go to ``failures.jsonl`` and are never cached, so a rerun asks them again. A second
run on the same folder fails at once: the folder is locked (``fcntl.flock``) for the run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import IO, Any

from graft.files import BusyError, FileLock, cut_partial_last_line

from .gen_settings import GenError

logger = logging.getLogger(__name__)

CACHE_FILE = "cache.jsonl"
FAILURES_FILE = "failures.jsonl"
LOCK_FILE = ".gen-data.lock"


def request_key(request: dict[str, Any]) -> str:
    """The hash of a request's content: the same request always has the same key."""
    canonical = json.dumps(request, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class RunLock(FileLock):
    """The output folder's lock for the life of a `graft gen-data` run (``FileLock``); a second
    run on the folder fails at once with a ``GenError``."""

    def __init__(self, out: Path) -> None:
        super().__init__(out / LOCK_FILE, "`graft gen-data` run")

    def __enter__(self) -> RunLock:
        try:
            super().__enter__()
        except BusyError as err:
            raise GenError(str(err)) from None
        return self


def _append(f: IO[str], row: dict[str, Any]) -> None:
    f.write(json.dumps(row, ensure_ascii=False) + "\n")
    f.flush()
    os.fsync(f.fileno())


class ResponseCache:
    """Answers by request key, read from ``OUT/cache.jsonl``; ``put`` appends (and fsyncs) one."""

    def __init__(self, out: Path, readonly: bool = False) -> None:
        self.path = out / CACHE_FILE
        self.entries: dict[str, dict[str, Any]] = {}
        self.readonly = readonly
        self._file: IO[str] | None = None
        if self.path.is_file():
            if readonly:  # a dry run changes nothing: a torn last line is only skipped
                text = self.path.read_text(encoding="utf-8")
                text = text[: text.rfind("\n") + 1]
            else:
                text = cut_partial_last_line(self.path)
            for n, line in enumerate(text.splitlines(), 1):
                try:
                    entry = json.loads(line)
                    self.entries[entry["key"]] = entry
                except (json.JSONDecodeError, KeyError, TypeError):
                    logger.warning(
                        "%s:%d: not a cache entry; ignored (its request is asked again)", self.path, n
                    )

    def get(self, key: str) -> dict[str, Any] | None:
        return self.entries.get(key)

    def put(self, entry: dict[str, Any]) -> None:
        if self.readonly:
            raise RuntimeError("the cache was opened read-only")
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")
        _append(self._file, entry)
        self.entries[entry["key"]] = entry

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class FailureLog:
    """``OUT/failures.jsonl``: one line per request that failed for good (appended, fsynced)."""

    def __init__(self, out: Path) -> None:
        self.path = out / FAILURES_FILE
        self._file: IO[str] | None = None

    def add(self, row: dict[str, Any]) -> None:
        if self._file is None:
            if self.path.is_file():
                cut_partial_last_line(self.path)
            self._file = self.path.open("a", encoding="utf-8")
        _append(self._file, {"time": round(time.time(), 3)} | row)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
