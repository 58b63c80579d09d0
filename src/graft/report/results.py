"""A run's ``results.json`` as the report reads it: the document (``read_results``: an unreadable
one is an error naming the file and line) and the benchmark data it names (``data_path``).

``graft eval`` wrote the data path as it was given, so an older ``results.json`` may hold one
relative to the folder ``graft eval`` ran in (the demo's ``runs/demo/world/bench/pope``). Such a
path is tried as it stands (relative to where ``graft report`` runs), then against each folder
above the run's own (``runs/demo/pope/`` -> ``runs/demo``, ``runs``, the folder holding ``runs``...),
nearest first; the first that exists is the data.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from graft.record_files import load_json


def read_results(path: str | os.PathLike) -> dict[str, Any]:
    """``path``'s object; not JSON, or not an object with an object of ``metrics``, is a
    ``ValueError`` naming the file (and, for bad JSON, the line)."""
    doc = load_json(path)
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a JSON object (a run's results), got {type(doc).__name__}")
    if not isinstance(doc.get("metrics", {}), dict):
        raise ValueError(f"{path}: field 'metrics' must be an object, got {type(doc['metrics']).__name__}")
    return doc


def data_path(data: Any, run_folder: Path) -> Path | None:
    """The benchmark data ``data`` names, found as the module says; None when it is nowhere."""
    if not isinstance(data, str) or not data:
        return None
    path = Path(data)
    if path.exists():
        return path
    if path.is_absolute():
        return None
    for folder in run_folder.resolve().parents:
        if (folder / path).exists():
            return folder / path
    return None
