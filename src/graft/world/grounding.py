"""Grounded word tokens on the shapes world: what each image token should say, from the world's
exact annotations.

A projector with pixel-shuffle reduction gives one token per cell of a square grid over the
image, in row-major order (the ViT's patch order). The grounding target of a cell is the LLM's
own input embeddings of what the world puts there: the mean of its colour word and its shape
word (" red", " circle", as a question says them) for the object the cell names, the embedding of
``BACKGROUND_WORD`` for a cell that names none. Which object a cell names is ``cells``
(``labels.CELL_TARGETS``): the one whose centre it holds (``centre``, the default: each object is
one token, and the tokens list the objects in reading order), or the one covering most of it
(``cover``: an object is said once per cell it covers, 2.3 on average). A connector taught to write these
tokens (``graft.train.snap.fit_connector``, LLM-free) hands the LLM each object's colour and
shape bound in one token, at its place: the dense, region-level supervision that real models
get from grounded caption data, here exact. The word alignment from captions
(``graft.word_alignment``) only ever learned colour words at the objects and a blur of shape
words around them (docs/demo-history.md).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .labels import cell_labeller
from .scene import COLORS, SHAPES, Scene

#: what a cell without an object says
BACKGROUND_WORD = " background"


def word_embedding(tokenizer: Any, embeddings: torch.Tensor, word: str) -> torch.Tensor:
    """The input embedding of ``word``: its token's, or the mean of its tokens' where the LLM's
    vocabulary splits it (SmolLM2 has each of the world's words as one token)."""
    ids = tokenizer.encode(word, add_special_tokens=False)
    if not ids:
        raise ValueError(f"the LLM's tokenizer gives no token for {word!r}")
    return embeddings[ids].mean(0)


def grid_side(tokens_per_image: int) -> int:
    """The side of the square token grid, or a ValueError for a token count that is not one."""
    side = math.isqrt(tokens_per_image)
    if side * side != tokens_per_image:
        raise ValueError(
            f"grounding needs one token per cell of a square grid; this connector gives {tokens_per_image} "
            "tokens per image"
        )
    return side


def cell_words(tokenizer: Any, embeddings: torch.Tensor) -> torch.Tensor:
    """``[1 + shapes * colours, d]``: what a cell can say, the background word first, then each
    shape's words with each colour's (``labels.class_of``' order), from ``embeddings`` ``[V, d]``,
    the LLM's input embedding table."""
    table = embeddings.detach().float()
    background = word_embedding(tokenizer, table, BACKGROUND_WORD)
    shapes = torch.stack([word_embedding(tokenizer, table, f" {s}") for s in SHAPES])
    colours = torch.stack([word_embedding(tokenizer, table, f" {c}") for c in COLORS])
    objects = 0.5 * (shapes[:, None] + colours[None, :])
    return torch.cat([background[None], objects.reshape(-1, table.shape[1])])


#: what a cell names by default (module docstring): what the packaged tower was refined for
CELLS = "centre"


def grounding_classes(scenes: Sequence[Scene], tokens_per_image: int, cells: str = CELLS) -> torch.Tensor:
    """``[len(scenes), tokens_per_image]``: each cell's class (``labels.CELL_TARGETS[cells]``),
    indexing ``cell_words``."""
    classes_of = cell_labeller(cells)
    side = grid_side(tokens_per_image)
    return torch.stack([classes_of(scene, side) for scene in scenes])


def grounding_targets(
    scenes: Sequence[Scene],
    tokens_per_image: int,
    tokenizer: Any,
    embeddings: torch.Tensor,
    cells: str = CELLS,
) -> torch.Tensor:
    """``[len(scenes), tokens_per_image, d]`` target tokens (module docstring)."""
    return cell_words(tokenizer, embeddings)[grounding_classes(scenes, tokens_per_image, cells)]


def cell_names(scene: Scene, side: int, cells: str = CELLS) -> list[str]:
    """What each cell of a ``side`` x ``side`` grid names, in words, row-major: "background" or
    its object's "colour shape" (``cells``: which object a cell names, as ``grounding_classes``):
    the grounding's target tokens written as text, two words per object."""
    names = []
    for k in cell_labeller(cells)(scene, side).tolist():
        shape, colour = divmod(k - 1, len(COLORS))
        names.append(BACKGROUND_WORD.strip() if k == 0 else f"{list(COLORS)[colour]} {SHAPES[shape]}")
    return names


def cell_accuracy(tokens: torch.Tensor, targets: torch.Tensor, words: torch.Tensor) -> dict[str, float]:
    """How often a token is nearest (by distance) to its target's cell words: over every cell
    (``cell_acc``) and, on the cells of objects, the shape's and the colour's share."""

    def classify(x: torch.Tensor) -> torch.Tensor:
        return torch.cdist(x.reshape(-1, x.shape[-1]).float(), words.float()).argmin(-1)

    truth, said = classify(targets), classify(tokens)
    objects = truth > 0
    shape = (truth[objects] - 1) // len(COLORS) == (said[objects] - 1) // len(COLORS)
    colour = (truth[objects] - 1) % len(COLORS) == (said[objects] - 1) % len(COLORS)
    return {
        "cell_acc": float((truth == said).float().mean()),
        "object_shape_acc": float((shape & (said[objects] > 0)).float().mean()),
        "object_colour_acc": float((colour & (said[objects] > 0)).float().mean()),
    }


def scenes_of_images(world_dir: str | os.PathLike, images: Sequence[str | os.PathLike]) -> list[Scene]:
    """The scene of each image file (a path inside the world's folder: absolute, relative to the
    working folder or relative to the world's), from the world's ``meta/{split}.jsonl``; a
    KeyError names an image the world does not know."""
    world = Path(world_dir).resolve()
    known: dict[Path, dict] = {}
    for meta in sorted((world / "meta").glob("*.jsonl")):
        for line in meta.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                known[(world / row["image"]).resolve()] = row["scene"]
    scenes = []
    for image in images:
        # as a dataset names it (absolute, or relative to the working folder), or as a record does
        scene = known.get(Path(image).resolve()) or known.get((world / image).resolve())
        if scene is None:
            raise KeyError(f"{image}: no scene for this image in {world / 'meta'}")
        scenes.append(Scene.from_dict(scene))
    return scenes
