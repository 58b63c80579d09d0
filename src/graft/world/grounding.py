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

With two tokens per cell (the projector's ``tokens_per_group=2``) a cell says its object's colour
word, then its shape word, each exactly (a background cell says ``BACKGROUND_WORD`` twice): the
text grid's two words per object (``cell_names``), where one blended token per object left
SmolLM2 well below what the same grid in words taught it (docs/demo-history.md).

With the projector's ``marker_grid`` each cell's tokens follow two markers, its row's and its
column's, set to the LLM's digits ("1" to "4" on the 4 x 4 grid: "2", "3", "red", "circle" is the
red circle in the second row, third column), so where a cell lies is something its tokens say.
With ``markers_after`` the markers follow the cell's words instead ("red", "circle", "2", "3"): a
causal LLM copies what followed a word it has just written (an induction head), so a reply that
names the object ("red circle") then finds its digits, where with the markers before the words it
found them about half the time (docs/demo-history.md). ``CellLayout`` is the one description of
this layout that the grounding, its accuracy and the diagnostics read.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
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


def grid_side(tokens_per_image: int, per_cell: int = 1) -> int:
    """The side of the square grid of cells, each ``per_cell`` tokens, or a ValueError for a
    token count that is not one."""
    cells = tokens_per_image // per_cell
    side = math.isqrt(cells)
    if side * side != cells or cells * per_cell != tokens_per_image:
        raise ValueError(
            f"grounding needs {per_cell} token(s) per cell of a square grid; this connector gives "
            f"{tokens_per_image} tokens per image"
        )
    return side


def tokens_per_cell(connector: dict[str, Any]) -> int:
    """How many tokens a cell gives with this connector spec (``GraftConfig.connector``): the
    projector's ``tokens_per_group``."""
    per_cell = connector.get("tokens_per_group", 1)
    if per_cell not in (1, 2):
        raise ValueError(
            f"grounding writes one token per cell (colour and shape blended) or two (colour, then "
            f"shape); this connector gives {per_cell} per cell"
        )
    return per_cell


def cell_markers(connector: dict[str, Any]) -> int:
    """The side of the grid whose rows and columns mark each cell's tokens with this connector spec
    (the projector's ``marker_grid``), or 0 for none."""
    return int(connector.get("marker_grid", 0))


def markers_after(connector: dict[str, Any]) -> bool:
    """Whether this connector spec's markers follow each cell's words (the projector's
    ``markers_after``) rather than precede them."""
    return bool(connector.get("markers_after", False))


@dataclass(frozen=True)
class CellLayout:
    """What a projector's image tokens say of each cell, in order: ``per_cell`` word tokens (one:
    colour and shape blended; two: colour, then shape) and, on a grid of side ``markers`` (0 for
    none), the row's and the column's digit, before the words or, with ``markers_after``, after."""

    per_cell: int = 1
    markers: int = 0
    markers_after: bool = False

    @classmethod
    def of(cls, connector: dict[str, Any]) -> CellLayout:
        """The layout of a connector spec (``GraftConfig.connector``)."""
        return cls(tokens_per_cell(connector), cell_markers(connector), markers_after(connector))

    @property
    def width(self) -> int:
        """Tokens per cell, markers included."""
        return self.per_cell + 2 * bool(self.markers)

    @property
    def words(self) -> slice:
        """Where a cell's word tokens lie among its ``width``."""
        start = 0 if self.markers_after or not self.markers else 2
        return slice(start, start + self.per_cell)

    @property
    def digits(self) -> slice:
        """Where a cell's two markers lie among its ``width`` (empty without markers)."""
        if not self.markers:
            return slice(0, 0)
        return slice(self.per_cell, self.per_cell + 2) if self.markers_after else slice(0, 2)


def marker_digits(side: int) -> list[str]:
    """The words the markers of a ``side`` x ``side`` grid say: row (or column) r is the digit r."""
    if not 0 <= side <= 9:
        raise ValueError(f"cell markers say one digit per row and column: a grid of at most 9, not {side}")
    return [str(r + 1) for r in range(side)]


def cell_words(tokenizer: Any, embeddings: torch.Tensor, layout: CellLayout = CellLayout()) -> torch.Tensor:
    """``[K, d]``: what a token can say, from ``embeddings`` ``[V, d]``, the LLM's input
    embedding table. One token per cell: the background word first, then the mean of each shape's
    and each colour's word (``labels.class_of``' order). Two: the background word, each colour's
    word, each shape's word. With markers (on a grid of side ``layout.markers``) the digits they
    say last."""
    per_cell = layout.per_cell
    table = embeddings.detach().float()
    background = word_embedding(tokenizer, table, BACKGROUND_WORD)
    shapes = torch.stack([word_embedding(tokenizer, table, f" {s}") for s in SHAPES])
    colours = torch.stack([word_embedding(tokenizer, table, f" {c}") for c in COLORS])
    if per_cell == 2:
        words = torch.cat([background[None], colours, shapes])
    else:
        objects = 0.5 * (shapes[:, None] + colours[None, :])
        words = torch.cat([background[None], objects.reshape(-1, table.shape[1])])
    return torch.cat([words, _digits(tokenizer, table, layout.markers)])


def _digits(tokenizer: Any, table: torch.Tensor, side: int) -> torch.Tensor:
    """``[side, d]``: the embeddings of ``marker_digits(side)`` (``[0, d]`` for no markers)."""
    rows = [word_embedding(tokenizer, table, d) for d in marker_digits(side)]
    return torch.stack(rows) if rows else table.new_zeros(0, table.shape[1])


def marker_words(tokenizer: Any, embeddings: torch.Tensor, side: int) -> torch.Tensor:
    """``[2, side, d]``: what the projector's markers (``marker_grid``) say, each row's digit and
    each column's (the same digits: which is which is their order beside a cell's words)."""
    digits = _digits(tokenizer, embeddings.detach().float(), side)
    return torch.stack([digits, digits])


def _object_words(per_cell: int) -> int:
    """How many of ``cell_words`` come before the markers' digits."""
    return 1 + len(COLORS) + len(SHAPES) if per_cell == 2 else 1 + len(COLORS) * len(SHAPES)


def split_classes(classes: torch.Tensor) -> torch.Tensor:
    """Cell classes ``[..., cells]`` (``labels.class_of``) -> the two tokens' ``[..., 2 * cells]``
    (``cell_words(per_cell=2)``): each cell's colour word, then its shape word; background twice."""
    shape, colour = (classes - 1).div(len(COLORS), rounding_mode="floor"), (classes - 1) % len(COLORS)
    pair = torch.stack([1 + colour, 1 + len(COLORS) + shape], dim=-1)
    pair = torch.where((classes > 0)[..., None], pair, 0)
    return pair.flatten(-2)


#: what a cell names by default (module docstring): what the packaged tower was refined for
CELLS = "centre"


def grounding_classes(
    scenes: Sequence[Scene], tokens_per_image: int, cells: str = CELLS, layout: CellLayout = CellLayout()
) -> torch.Tensor:
    """``[len(scenes), tokens_per_image]``: each token's class, indexing ``cell_words`` (a cell
    names the object of ``labels.CELL_TARGETS[cells]``; with markers, its row's digit and its
    column's before or after its words, as ``layout`` says)."""
    classes_of = cell_labeller(cells)
    per_cell, markers = layout.per_cell, layout.markers
    side = grid_side(tokens_per_image, layout.width)
    if markers and markers != side:
        raise ValueError(f"markers of a {markers}x{markers} grid on a {side}x{side} grid of cells")
    classes = torch.stack([classes_of(scene, side) for scene in scenes])
    classes = split_classes(classes) if per_cell == 2 else classes
    if not markers:
        return classes
    first = _object_words(per_cell)
    row, col = torch.arange(side * side).div(side, rounding_mode="floor"), torch.arange(side * side) % side
    where = (first + torch.stack([row, col], dim=-1)).expand(len(scenes), -1, -1)
    words = classes.view(len(scenes), side * side, per_cell)
    return torch.cat([words, where] if layout.markers_after else [where, words], dim=-1).flatten(1)


def grounding_targets(
    scenes: Sequence[Scene],
    tokens_per_image: int,
    tokenizer: Any,
    embeddings: torch.Tensor,
    cells: str = CELLS,
    layout: CellLayout = CellLayout(),
) -> torch.Tensor:
    """``[len(scenes), tokens_per_image, d]`` target tokens (module docstring)."""
    words = cell_words(tokenizer, embeddings, layout)
    return words[grounding_classes(scenes, tokens_per_image, cells, layout)]


def cell_names(scene: Scene, side: int, cells: str = CELLS) -> list[str]:
    """What each cell of a ``side`` x ``side`` grid names, in words, row-major: "background" or
    its object's "colour shape" (``cells``: which object a cell names, as ``grounding_classes``):
    the grounding's target tokens written as text, two words per object."""
    names = []
    for k in cell_labeller(cells)(scene, side).tolist():
        shape, colour = divmod(k - 1, len(COLORS))
        names.append(BACKGROUND_WORD.strip() if k == 0 else f"{list(COLORS)[colour]} {SHAPES[shape]}")
    return names


def cell_accuracy(
    tokens: torch.Tensor, targets: torch.Tensor, words: torch.Tensor, layout: CellLayout = CellLayout()
) -> dict[str, float]:
    """How often a cell's tokens are each nearest (by distance) to their targets' words
    (``cell_words(layout=...)``): over every cell (``cell_acc``, markers aside) and, on the cells
    of objects, how often the shape and the colour are said right; with markers how often a
    marker says its row's or column's digit (``marker_acc``)."""
    per_cell, digits = layout.per_cell, layout.digits

    def classify(x: torch.Tensor) -> torch.Tensor:
        nearest = torch.cdist(x.reshape(-1, x.shape[-1]).float(), words.float()).argmin(-1)
        return nearest.view(-1, layout.width)

    truth, said = classify(targets), classify(tokens)
    marked: dict[str, float] = {}
    if layout.markers:
        marked["marker_acc"] = float((truth[:, digits] == said[:, digits]).float().mean())
    truth, said = truth[:, layout.words], said[:, layout.words]
    objects = truth[:, 0] > 0
    if per_cell == 2:  # (colour word, shape word)
        colour, shape = (truth[objects] == said[objects]).unbind(-1)
    else:
        truth, said = truth[:, 0], said[:, 0]
        named = said[objects] > 0
        shape = named & ((truth[objects] - 1) // len(COLORS) == (said[objects] - 1) // len(COLORS))
        colour = named & ((truth[objects] - 1) % len(COLORS) == (said[objects] - 1) % len(COLORS))
    right = (truth == said).reshape(len(truth), -1).all(-1)
    return {
        "cell_acc": float(right.float().mean()),
        "object_shape_acc": float(shape.float().mean()),
        "object_colour_acc": float(colour.float().mean()),
    } | marked


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
