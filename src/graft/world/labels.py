"""What the world's exact annotations put in each patch and each cell of an image: the dense
targets of the tower's pretraining (``graft.world.vision``) and of the grounding
(``graft.world.grounding``), from the scene's label map."""

from __future__ import annotations

import numpy as np
import torch

from .scene import COLORS, SHAPES, SIZES, Scene

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


def cell_classes(scene: Scene, side: int) -> torch.Tensor:
    """``[side * side]`` row-major: 0 for a background cell, else ``1 + shape * colours + colour``
    of the object that paints most of the cell (at least ``MIN_COVER`` of it)."""
    if scene.image_size % side:
        raise ValueError(f"a {scene.image_size}-pixel image does not split into a {side}x{side} grid")
    labels = patch_labels(scene, scene.image_size // side, MIN_COVER)  # [cells, (shape, colour, size)]
    return torch.where(labels[:, 0] > 0, 1 + (labels[:, 0] - 1) * len(COLORS) + (labels[:, 1] - 1), 0)
