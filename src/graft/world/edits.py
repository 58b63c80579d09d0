"""The shapes world's editor for synthetic discriminative pairs: an exact re-render of the scene.

Each edit changes the symbolic scene and renders it again, so the second image differs from the
first in exactly what the description says: modify (a new colour or a new shape), swap (two
objects exchange places), delete, add (a new object in free background).
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import replace
from pathlib import Path

from PIL import Image

from graft.data.pairs import EditResult, PairError, Region, Source

from .describe import named, noun_phrase, where
from .scene import COLORS, SHAPES, SIZES, Scene, place_object

SECOND = "in the second image"


def world_sources(world_dir: str | os.PathLike, split: str) -> list[Source]:
    """Every image of a world split as a pair source, its objects as regions."""
    path = Path(world_dir) / "meta" / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no {split!r} split metadata (build the world first)")
    sources = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        row = json.loads(line)
        scene = Scene.from_dict(row["scene"])
        regions = [Region(noun_phrase(o, det=False), o.box()) for o in scene.objects]
        sources.append(Source(row["id"], row["image"], regions, {"scene": row["scene"]}, f"{path}:line {n}"))
    return sources


class ShapesEditor:
    name = "shapes"

    def edit(
        self, image: Image.Image, source: Source, target: int, kind: str, rng: random.Random
    ) -> EditResult | None:
        if "scene" not in source.meta:
            raise PairError(f"{source.where}: the shapes editor needs the scene (a shapes-world source)")
        scene = Scene.from_dict(source.meta["scene"])
        if scene.image_size != image.width:
            raise PairError(
                f"{source.where}: the scene renders at {scene.image_size} px but {source.image} is "
                f"{image.width} px wide: not this scene's image"
            )
        edited = getattr(self, f"_{kind}")(scene, target, rng)
        if edited is None:
            return None
        new_scene, description = edited
        before, after = scene.categories, new_scene.categories
        only_in = (tuple(sorted(before - after)), tuple(sorted(after - before)))
        return EditResult(new_scene.render(), description, only_in)

    @staticmethod
    def _modify(scene: Scene, i: int, rng: random.Random) -> tuple[Scene, str] | None:
        obj = scene.objects[i]
        name = named(scene, obj)
        if rng.random() < 0.5:
            color = rng.choice([c for c in COLORS if c != obj.color])
            new, text = replace(obj, color=color), f"The {name} is {color} {SECOND}."
        else:
            shape = rng.choice([s for s in SHAPES if s != obj.shape])
            new, text = replace(obj, shape=shape), f"The {name} is a {shape} {SECOND}."
        return scene.with_objects([new if j == i else o for j, o in enumerate(scene.objects)]), text

    @staticmethod
    def _swap(scene: Scene, i: int, rng: random.Random) -> tuple[Scene, str] | None:
        a = scene.objects[i]
        others = [j for j, o in enumerate(scene.objects) if j != i and o.category != a.category]
        rng.shuffle(others)
        for j in others:
            b = scene.objects[j]
            moved = {i: replace(a, x=b.x, y=b.y), j: replace(b, x=a.x, y=a.y)}
            objects = [moved.get(k, o) for k, o in enumerate(scene.objects)]
            trial = scene.with_objects(objects)
            if all(trial.fits(o, ignore=k) for k, o in enumerate(objects)):  # sizes differ: may collide
                first, second = noun_phrase(a, det=False), noun_phrase(b, det=False)
                return trial, f"The {first} and the {second} have swapped places."
        return None

    @staticmethod
    def _delete(scene: Scene, i: int, rng: random.Random) -> tuple[Scene, str] | None:
        if len(scene.objects) < 2:  # an empty picture teaches nothing about details
            return None
        obj = scene.objects[i]
        text = f"The {noun_phrase(obj, det=False)} {where(obj)} is gone {SECOND}."
        return scene.with_objects([o for j, o in enumerate(scene.objects) if j != i]), text

    @staticmethod
    def _add(scene: Scene, i: int, rng: random.Random) -> tuple[Scene, str] | None:
        # a new object in free background; the target only chose that this source gets an addition
        obj = place_object(rng, scene, rng.choice(SHAPES), rng.choice(list(COLORS)), rng.choice(list(SIZES)))
        if obj is None:
            return None
        text = f"{noun_phrase(obj).capitalize()} has been added {where(obj)} {SECOND}."
        return scene.with_objects([*scene.objects, obj]), text
