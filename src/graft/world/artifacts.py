"""Finished-or-not folders for pretrained artifacts: build in a temporary sibling, rename at the end.

A folder holding the marker file was completed (the marker is written last, before the
rename), so a rerun can skip the work; a half-written run never looks finished.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MARKER = "graft_world_done.json"


def is_finished(out_dir: str | os.PathLike) -> bool:
    return (Path(out_dir) / MARKER).exists()


@contextmanager
def building(out_dir: str | os.PathLike, info: dict) -> Iterator[Path]:
    """Yield a temporary folder to save into; on success write the marker and move it to `out_dir`."""
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    yield tmp
    (tmp / MARKER).write_text(json.dumps(info, indent=2))
    if out.exists():  # an unfinished earlier attempt
        shutil.rmtree(out)
    os.replace(tmp, out)
