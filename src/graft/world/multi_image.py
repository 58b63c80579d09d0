"""Multi-image instruction records for stage 2, worded as the world's DEMON tasks word them.

- which image shows a category (2-3 train scenes, the category in one of them only), answered
  with the image's letter ("Image B");
- what changed between a scene and its exact re-render after one edit (a new colour or shape,
  an object gone or added), answered with one sentence.

They are drawn from train images only; the benchmark's tasks use test images.
"""

from __future__ import annotations

import random
from pathlib import Path

from .bench_demon import DIFF_INSTRUCTION, WHICH_INSTRUCTION
from .bench_files import save_render
from .edits import ShapesEditor
from .instructions import IMAGE
from .scene import Scene

LETTERS = "ABC"


def which_image_record(rid: str, rows: list[dict], row: dict, rng: random.Random) -> dict | None:
    """``row``'s scene among 1-2 others; the asked category is in ``row``'s scene only."""
    group = [row, *rng.sample([r for r in rows if r is not row], rng.randint(1, 2))]
    cats = [{f"{o['color']} {o['shape']}" for o in r["scene"]["objects"]} for r in group]
    only = sorted(cats[0] - set().union(*cats[1:]))
    if not only:
        return None
    rng.shuffle(group)
    letter = LETTERS[group.index(row)]
    listing = "".join(f"Image {LETTERS[i]}: {IMAGE}\n" for i in range(len(group)))
    question = f"{WHICH_INSTRUCTION}{listing}Which image shows a {rng.choice(only)}?"
    return {
        "id": rid,
        "images": [r["image"] for r in group],
        "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": f"Image {letter}"}],
        "qtype": "which_image",
    }


def difference_record(rid: str, row: dict, world: Path, rng: random.Random) -> dict | None:
    """``row``'s image and its re-render after one edit (written under ``images/edits/``)."""
    scene = Scene.from_dict(row["scene"])
    kind = rng.choice(("modify", "modify", "delete", "add"))
    edited = getattr(ShapesEditor, f"_{kind}")(scene, rng.randrange(len(scene.objects)), rng)
    if edited is None:
        return None
    new_scene, description = edited
    rel = f"images/edits/{row['id']}.png"
    save_render(new_scene, world / rel)
    return {
        "id": rid,
        "images": [row["image"], rel],
        "conversations": [
            {"from": "human", "value": f"{DIFF_INSTRUCTION}{IMAGE} {IMAGE}"},
            {"from": "gpt", "value": description},
        ],
        "qtype": "difference",
    }
