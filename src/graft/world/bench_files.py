"""Atomic file writing for the benchmark writers: every file lands under its final name whole
or not at all, so an interrupted run never leaves a half-written file that a rerun would trust.

Thousands of small files are written, so each helper makes as few system calls as it can:
folders are created only when a write finds them missing.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from .scene import Scene


def _in_folder(path: Path, write: Callable[[], None]) -> None:
    """Run ``write``; if ``path``'s folder is missing, create it and run it again."""
    try:
        write()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        write()


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def place_image(src: Path, dst: Path) -> None:
    """A hard link when the filesystem allows (free, and atomic by itself), else a copy to a
    temporary name renamed into place; a file already at ``dst`` is kept."""

    def link() -> None:
        try:
            os.link(src, dst)
        except FileExistsError:
            pass

    try:
        _in_folder(dst, link)
    except OSError:  # no hard links here (another filesystem, or none supported)
        if dst.exists():
            return
        tmp = dst.with_name(dst.name + ".tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)


def save_render(scene: Scene, dst: Path) -> None:
    """Render ``scene`` to ``dst`` (PNG), atomically; a file already there is kept."""
    if dst.exists():
        return
    tmp = dst.with_name(dst.name + ".tmp")
    image = scene.render()
    # fast compression: these files are tiny and saving dominates the cost of writing them
    _in_folder(tmp, lambda: image.save(tmp, format="PNG", compress_level=1))
    os.replace(tmp, dst)
