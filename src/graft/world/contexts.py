"""The contexts file of a world (``contexts.jsonl``): what ``graft gen-data`` tells a text-only
model about each train image, from the scene's exact annotations.

One line per train image, in LLaVA's context schema: ``{"id", "image", "captions", "boxes"}``;
the captions are the world's own (``describe.captions``), each box is ``{"category", "bbox"}``
with ``bbox = [x1, y1, x2, y2]`` computed from the object's position and size, in 0..1 with
three decimals (``describe.boxes``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from graft.files import write_text_atomic

from .describe import boxes, captions
from .scene import Scene

CONTEXTS_FILE = "contexts.jsonl"


def context_row(image_id: str, image: str, scene: Scene) -> dict:
    return {
        "id": image_id,
        "image": image,
        "captions": captions(scene),
        "boxes": [{"category": c, "bbox": b} for c, b in boxes(scene)],
    }


def write_contexts(world_dir: str | os.PathLike, train_rows: list[dict] | None = None) -> Path:
    """Write ``world_dir/contexts.jsonl`` for the train images; ``train_rows`` are the rows of
    ``meta/train.jsonl`` (``{"id", "image", "scene"}``), read from it when not given."""
    world = Path(world_dir)
    if train_rows is None:
        lines = (world / "meta" / "train.jsonl").read_text(encoding="utf-8").splitlines()
        train_rows = [json.loads(line) for line in lines if line.strip()]
    rows = [context_row(r["id"], r["image"], Scene.from_dict(r["scene"])) for r in train_rows]
    path = world / CONTEXTS_FILE
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))
    return path
