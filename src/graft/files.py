"""Writes that never leave a half-written file (or folder) behind, and the repair of an
append-only log that a kill cut mid-line. Every long job resumes through these."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

logger = logging.getLogger(__name__)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it into place (folders are
    made when missing). The temporary name is unique, so concurrent writers never share one; a
    write that fails leaves no temporary file, and a ``path`` that is a folder is an
    ``IsADirectoryError`` that says so."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a file path to write to")
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        try:
            tmp.write_text(text, encoding="utf-8")
        except FileNotFoundError:  # the folder is missing: make it only then (one syscall less per file)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def umask_modes(folder: str | os.PathLike) -> None:
    """Give everything under ``folder`` the modes a plain ``mkdir`` and ``open`` would have given
    (the folder's own mode, made under the umask): safetensors writes its files 0600, which would
    make a saved model private to its writer."""
    dir_mode = stat.S_IMODE(Path(folder).stat().st_mode) & 0o777
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISDIR(mode) or (stat.S_ISREG(mode) and mode & stat.S_IXUSR):
                os.chmod(path, dir_mode)
            elif stat.S_ISREG(mode):
                os.chmod(path, dir_mode & 0o666)


@contextlib.contextmanager
def atomic_dir(out_dir: str | os.PathLike, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``out_dir`` in one rename.

    The folder and the files in it end with the modes a plain ``mkdir`` and ``open`` give under the
    umask (safetensors writes its files 0600). Temporary folders (``.NAME.tmp-*``) that a killed
    run left beside ``out_dir`` are removed first; a running writer's is locked and left alone."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} is a file, not a folder; give a folder path to write to")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (pass overwrite=True to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{out.name}.tmp-"
    for stale in [p for p in out.parent.iterdir() if p.name.startswith(prefix)]:
        with contextlib.suppress(OSError):  # BlockingIOError: a live run holds it
            fd = os.open(stale, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                logger.info("removing %s, left by an interrupted run", stale)
                shutil.rmtree(stale)
            finally:
                os.close(fd)
    tmp = out.with_name(f"{prefix}{uuid.uuid4().hex[:12]}")
    tmp.mkdir()  # not tempfile.mkdtemp: its 0700 would make the result private
    lock = os.open(tmp, os.O_RDONLY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # held until the end: tells a concurrent run it is live
        yield tmp
        umask_modes(tmp)
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:12]}")
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        os.close(lock)
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def cut_partial_last_line(path: str | os.PathLike) -> str:
    """The complete lines of an append-only JSONL file; a last line without its newline (a run
    killed mid-write) is cut off the file, so appending goes on from a clean line."""
    path = Path(path)
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        logger.warning("%s: dropping a half-written last line left by an interrupted run", path)
        with path.open("r+b") as f:
            f.truncate(keep)
        data = data[:keep]
    return data.decode("utf-8")


class BusyError(ValueError):
    """Another running process holds a ``FileLock``; the message names what it is and its pid."""


class FileLock:
    """An exclusive, non-blocking lock (``fcntl.flock``) on the file ``path`` (made when missing)
    for the life of a run that writes beside it: a second run asking for it fails at once with a
    ``BusyError`` naming ``what`` holds it and its pid, instead of appending to the same files.
    The kernel drops the lock when the process dies, however it dies."""

    def __init__(self, path: str | os.PathLike, what: str) -> None:
        self.path, self.what = Path(path), what
        self._file: IO[str] | None = None

    def __enter__(self) -> FileLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = self.path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "pid unknown"
            f.close()
            raise BusyError(
                f"{self.path.parent} is in use by another {self.what} ({holder}); wait for it to end, "
                "or give this run another output folder"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}")
        f.flush()
        self._file = f
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None
