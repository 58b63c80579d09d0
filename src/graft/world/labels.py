"""What the world's exact annotations put in each patch and each cell of an image: the dense
targets of the tower's pretraining (``graft.world.vision``) and of the grounding
(``graft.world.grounding``), from the scene's label map and the objects' centres."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .scene import COLORS, SHAPES, SIZES, Obj, Scene

#: share of a cell's pixels an object must paint for the cell to be that object's
MIN_COVER = 0.1
#: the classes a cell can be (``cell_classes``): background, then each shape with each colour
CELL_CLASSES = 1 + len(SHAPES) * len(COLORS)


def patch_labels(scene: Scene, patch: int, min_cover: float) -> torch.Tensor:
    """``[patches, 3]`` (shape, colour, size) class of the object that covers most of each patch
    (row-major, as the ViT orders them); 0 where no object covers ``min_cover`` of it."""
    owner = np.asarray(scene.label_map(), dtype=np.int64)
    grid = scene.image_size // patch
    blocks = owner[: grid * patch, : grid * patch].reshape(grid, patch, grid, patch).transpose(0, 2, 1, 3)
    blocks = blocks.reshape(grid * grid, patch * patch)
    counts = np.stack([(blocks == i + 1).sum(1) for i in range(len(scene.objects))], 1)
    table = [(0, 0, 0)] + [
        (SHAPES.index(o.shape) + 1, list(COLORS).index(o.color) + 1, list(SIZES).index(o.size) + 1)
        for o in scene.objects
    ]
    best = counts.argmax(1) + 1
    best[counts.max(1) < min_cover * patch * patch] = 0
    return torch.tensor([table[b] for b in best], dtype=torch.long)


def class_of(shape: Any, colour: Any) -> Any:
    """The cell class of a shape and a colour, given by index (ints or tensors of them): 0 is
    background, then each shape with each colour."""
    return 1 + shape * len(COLORS) + colour


def object_class(obj: Obj) -> int:
    """The cell class that names ``obj`` (``class_of``)."""
    return class_of(SHAPES.index(obj.shape), list(COLORS).index(obj.color))


def _check_grid(scene: Scene, side: int) -> None:
    if scene.image_size % side:
        raise ValueError(f"a {scene.image_size}-pixel image does not split into a {side}x{side} grid")


def cell_classes(scene: Scene, side: int) -> torch.Tensor:
    """``[side * side]`` row-major: 0 for a background cell, else the ``object_class`` of the
    object that paints most of the cell (at least ``MIN_COVER`` of it). An object of the world
    covers 2.3 cells on average (a 4x4 grid over 64 pixels), so it is named once per cell."""
    _check_grid(scene, side)
    labels = patch_labels(scene, scene.image_size // side, MIN_COVER)  # [cells, (shape, colour, size)]
    return torch.where(labels[:, 0] > 0, class_of(labels[:, 0] - 1, labels[:, 1] - 1), 0)


def centre_classes(scene: Scene, side: int) -> torch.Tensor:
    """``[side * side]`` row-major: the ``object_class`` of an object in the cell that holds its
    centre, 0 in every other cell, so each object is named once, in reading order. Where two
    centres fall into one cell (4 of 4,967 objects of a 2,000-image world) the larger object
    keeps it (the first of two alike)."""
    _check_grid(scene, side)
    owner: dict[int, Obj] = {}
    for obj in scene.objects:
        row, col = (min(int(v * side), side - 1) for v in (obj.y, obj.x))
        cell = row * side + col
        if cell not in owner or SIZES[obj.size] > SIZES[owner[cell].size]:
            owner[cell] = obj
    classes = torch.zeros(side * side, dtype=torch.long)
    for cell, obj in owner.items():
        classes[cell] = object_class(obj)
    return classes


#: what an image cell names (``VisionArgs.cell_targets``, the grounding's ``cells``): ``cover``, the
#: object that paints most of it; ``centre``, the object whose centre it holds (one token per object)
CELL_TARGETS = {"cover": cell_classes, "centre": centre_classes}


def cell_labeller(name: str) -> Callable[[Scene, int], torch.Tensor]:
    """The function of ``CELL_TARGETS`` called ``name``, or a ValueError that lists them."""
    if name not in CELL_TARGETS:
        raise ValueError(f"unknown cell targets {name!r}; valid: {', '.join(CELL_TARGETS)}")
    return CELL_TARGETS[name]
