"""Multi-image instruction records for stage 2, worded as the world's DEMON tasks word them.

- which image shows a category (2-3 train scenes, the category in one of them only), answered
  with the image's letter ("Image B");
- what changed between a scene and its exact re-render after one edit (a new colour or shape,
  an object gone or added), answered with one sentence.

They are drawn from train images only; the benchmark's tasks use test images.
``pair_which_record`` asks the first of a synthetic pair (``graft.data.pairs``), for ``graft
ablation``'s pairs row.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
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
    return _which_record(rid, [r["image"] for r in group], group.index(row), rng.choice(only))


def pair_which_record(
    pair: dict, rng: random.Random, others: Sequence[tuple[str, frozenset[str]]] = ()
) -> dict | None:
    """A which-image record from a synthetic pair (``graft.data.pairs``) whose edit left a category
    in one of its two images only (``edit.only_in``: a recolour, a deletion, an addition); None
    when the edit left none (a swap). Half the records add a third image, one of ``others``
    (image path, the categories it shows) without that category, as the world's task asks among
    two or three; the images come in any order."""
    first, second = pair.get("edit", {}).get("only_in", ([], []))
    asked = [(0, c) for c in first] + [(1, c) for c in second]
    if not asked:
        return None
    side, category = rng.choice(asked)
    images = list(pair["images"])
    shown = images[side]
    free = [image for image, shows in others if category not in shows]
    if free and rng.random() < 0.5:
        images.append(rng.choice(free))
    rng.shuffle(images)
    return _which_record(f"{pair['id']}-which", images, images.index(shown), category)


def _which_record(rid: str, images: list[str], answer: int, category: str) -> dict:
    """Worded as the world's DEMON which-image task asks: its instruction, then the images, each
    after its letter, then the question; answered with the letter of image ``answer``."""
    listing = "".join(f"Image {LETTERS[i]}: {IMAGE}\n" for i in range(len(images)))
    question = f"{WHICH_INSTRUCTION}{listing}Which image shows a {category}?"
    return {
        "id": rid,
        "images": images,
        "conversations": [
            {"from": "human", "value": question},
            {"from": "gpt", "value": f"Image {LETTERS[answer]}"},
        ],
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
