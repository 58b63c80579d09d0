"""The lock file of ``graft mix``: everything needed to rebuild a mixture byte for byte.

For each dataset: its name, path, sha256, strategy and the exact source ids chosen (in order,
repeated where a record was taken more than once); then the final order of the output ids. Paths
are written relative to the lock file's folder, so a lock moves with its data.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graft.files import write_text_atomic
from graft.instruct.mix_spec import MixError
from graft.record_files import RecordError, load_json

LOCK_VERSION = 1
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class LockedDataset:
    name: str
    path: Path
    sha256: str
    #: the strategy as written, with the count it came to (informative: a rebuild uses ``chosen``)
    strategy: str
    image_root: Path | None
    #: the source ids chosen, in order (an id repeats when its record was taken more than once)
    chosen: list[str]


@dataclass
class Lock:
    datasets: list[LockedDataset]
    #: the output ids in the order they are written
    order: list[str]
    seed: int = 0
    shuffle: bool = True
    absolute_images: bool = False


def _relative(path: Path, folder: Path) -> str:
    try:
        return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(folder))).as_posix()
    except ValueError:  # another drive (Windows): keep it absolute
        return Path(os.path.abspath(path)).as_posix()


def lock_text(lock: Lock, path: str | os.PathLike) -> str:
    """The lock as JSON, its paths relative to the folder of ``path`` (where it will be written)."""
    folder = Path(path).parent
    data = {
        "graft_mix_lock": LOCK_VERSION,
        "seed": lock.seed,
        "shuffle": lock.shuffle,
        "absolute_images": lock.absolute_images,
        "datasets": [
            {
                "name": d.name,
                "path": _relative(d.path, folder),
                "sha256": d.sha256,
                "strategy": d.strategy,
                "image_root": None if d.image_root is None else _relative(d.image_root, folder),
                "chosen": d.chosen,
            }
            for d in lock.datasets
        ],
        "order": lock.order,
    }
    return json.dumps(data, indent=1, ensure_ascii=False) + "\n"


def write_lock(lock: Lock, path: str | os.PathLike) -> None:
    write_text_atomic(path, lock_text(lock, path))


def _get(data: dict, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = data.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise MixError(f"{where}: field {key!r} is missing or not a {getattr(kind, '__name__', kind)}")
    return value


def _string_list(data: dict, key: str, where: str) -> list[str]:
    value = _get(data, key, list, where)
    if not all(isinstance(v, str) for v in value):
        raise MixError(f"{where}: field {key!r} must be a list of id strings")
    return value


def read_lock(path: str | os.PathLike) -> Lock:
    """A lock file written by ``write_lock``; its paths resolved against its folder."""
    path = Path(path)
    if not path.is_file():
        raise MixError(f"lock file not found: {path}")
    try:
        data = load_json(path)
    except RecordError as err:
        raise MixError(str(err)) from None
    if not isinstance(data, dict) or data.get("graft_mix_lock") != LOCK_VERSION:
        raise MixError(f"{path}: not a graft mix lock (field 'graft_mix_lock' should be {LOCK_VERSION})")
    datasets = []
    for i, d in enumerate(_get(data, "datasets", list, str(path))):
        where = f"{path}: datasets[{i}]"
        if not isinstance(d, dict):
            raise MixError(f"{where}: expected a mapping")
        sha = _get(d, "sha256", str, where)
        if not _SHA256.match(sha):
            raise MixError(f"{where}: field 'sha256' is not a sha256 hex digest: {sha!r}")
        root = d.get("image_root")
        if root is not None and not isinstance(root, str):
            raise MixError(f"{where}: field 'image_root' must be a path or null")
        datasets.append(
            LockedDataset(
                _get(d, "name", str, where),
                path.parent / _get(d, "path", str, where),
                sha,
                _get(d, "strategy", str, where),
                None if root is None else path.parent / root,
                _string_list(d, "chosen", where),
            )
        )
    return Lock(
        datasets,
        _string_list(data, "order", str(path)),
        _get(data, "seed", int, str(path)),
        _get(data, "shuffle", bool, str(path)),
        _get(data, "absolute_images", bool, str(path)),
    )
