"""Does the model know where an object is? "Where is the circle?" about one uniquely named object
of each held-out image, the reply read for the coarse place the world's descriptions use
(``describe.where``: "in the top left", "on the right", "in the center", ...).

The conversation records of stage 2 ask exactly this ("The circle is in the top left of the
image."), so a model that reads places from its image tokens answers it; one that reads an
object's colour and shape but not its place names the same place or two whatever the image: the
position questions' failure, shown one object at a time.
"""

from __future__ import annotations

import os
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any

from graft.generate import generate_answers
from graft.processing import load_image
from graft.templates import Message

from .describe import where
from .diagnostics import heldout_scenes
from .questions import refer
from .scene import Obj, Scene

#: every place ``describe.where`` says, the two-word ones first (so "in the top left" is not read
#: as "on the left")
PLACES: tuple[str, ...] = tuple(
    sorted(
        {where(Obj("circle", "red", "small", x, y)) for x in (0.1, 0.5, 0.9) for y in (0.1, 0.5, 0.9)},
        key=lambda p: (-len(p.split()), p),
    )
)


def place_said(reply: str) -> str | None:
    """The place a reply names (one of ``PLACES``, by its last two words: "top left", "right",
    "center"), or None."""
    text = " ".join(re.findall(r"[a-z]+|[^\sa-z]", reply.lower()))  # "bottom, left": no "bottom left"
    for place in PLACES:
        key = " ".join(place.split()[2:])
        if f" {key} " in f" {text} ":
            return place
    return None


def place_accuracy(
    model: Any,
    processor: Any,
    world_dir: str | os.PathLike,
    limit: int | None = 100,
    batch_size: int = 32,
    seed: int = 0,
) -> dict[str, float]:
    """``place/accuracy``: the share of held-out images (the first ``limit``) whose "Where is the
    X?" reply names the object's place; ``place/majority``, the share of the commonest true
    place, what one constant reply scores; ``place/replies_placed``, the share of replies that
    name a place at all."""
    world = Path(world_dir)
    rng = random.Random(seed)
    asked: list[tuple[dict, Obj, str]] = []
    for row in list(heldout_scenes(world).values())[:limit]:
        scene = Scene.from_dict(row["scene"])
        named = [(o, ref) for o in scene.objects if (ref := refer(scene, o))]
        if named:
            obj, ref = rng.choice(named)
            asked.append((row, obj, ref))
    convs = [[Message("user", f"{processor.image_token}\nWhere is the {ref}?")] for _, _, ref in asked]
    images = [[load_image(world / row["image"])] for row, _, _ in asked]
    replies = generate_answers(model, processor, convs, images, max_new_tokens=24, batch_size=batch_size)
    truth = [where(obj) for _, obj, _ in asked]
    said = [place_said(r) for r in replies]
    n = max(len(asked), 1)
    return {
        "place/accuracy": sum(s == t for s, t in zip(said, truth, strict=True)) / n,
        "place/majority": max(Counter(truth).values(), default=0) / n,
        "place/replies_placed": sum(s is not None for s in said) / n,
        "place/n": len(asked),
    }
