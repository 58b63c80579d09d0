"""The word alignment's data on the shapes world: each training image with its naming caption.

``graft.word_alignment`` pulls an image's soft tokens onto the content words of its caption.
Stage 1's captions also name every object's size and place, and then the tokens spend
themselves on "large", "top" and "right" (measured: docs/demo-history.md);
the world's first caption of each image names each object's colour and shape only ("A blue
square, a blue diamond and a purple circle."), the words a question matches.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

from graft.world.instructions import stage1_record


def naming_records(world_dir: str | os.PathLike, seed: int = 0) -> list[dict[str, Any]]:
    """One stage-1-style record per training image (``text/captions.jsonl``), with its first
    caption."""
    rng = random.Random(f"naming-{seed}")
    path = Path(world_dir) / "text" / "captions.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [stage1_record(f"{i:06d}-n", row["image"], row["captions"][0], rng) for i, row in enumerate(rows)]
