"""The demo's LLM-free stages, which fit the connector alone without a recipe: the snap (the
``lexical`` connector onto ``swiglu``) and the grounding (each image cell's token onto the LLM's
words for what the world's annotations put there). Each takes the stage before's model folder
and writes its own; ``graft.pipelines.demo`` runs them in place of a recipe."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path


def snap_step(
    src: Path, dst: Path, records: Path, world: Path, cache: str, steps: int | None, seed: int
) -> None:
    """The demo's snap: the ``lexical`` model in ``src`` -> a ``swiglu`` one writing its tokens,
    trained on the cached features of ``records``' images."""
    from graft.train.snap import SnapSettings, snap_model

    settings = SnapSettings(seed=seed)
    if steps is not None:
        settings.steps = steps
    snap_model(src, records, world, dst, cache, settings)


#: optimizer steps of the demo's grounding (``ground_step``): with the class loss, 500 steps read
#: object cells' shape at 0.848 (48 s on the EPYC) and 1000 at 0.877 (103 s)
GROUND_STEPS = 600
#: weight of the grounding's class loss (``FitSettings.contrast``): SmolLM2's four shape words lie
#: close together, and by squared error alone the tokens of held-out object cells were nearest
#: their own shape's words for 0.56 of the cells (colour 0.96); with it 0.88 (colour 0.98), about
#: what a classifier of the same width reads from the same features (0.86). Demo's world, EPYC.
GROUND_CONTRAST = 0.3
#: the grounding's learning rate where a cell's input reads a margin around it (``reduction_margin``,
#: 9/4 as many inputs at margin 1): at ``FitSettings``' 2e-3 margin 1 stalled (loss 0.43, object
#: cells' shape 0.86); at 1e-3 it read them at 0.938 against margin 0's 0.906 (seed-1 world, EPYC)
GROUND_MARGIN_LR = 1.0e-3


def ground_step(
    src: Path,
    dst: Path,
    records: Path,
    world: Path,
    cache: str,
    steps: int | None,
    seed: int,
    cells: str | None = None,
) -> None:
    """The demo's grounding: the connector of the model in ``src`` learns, LLM-free, to write
    each image cell's words from the world's annotations (``graft.world.grounding``; a cell names
    the object of ``cells``, ``labels.CELL_TARGETS``, by default ``grounding.CELLS``), on the cached
    features of ``records``' images; saved with the rest of the model into ``dst``."""
    from graft.inference import load_for_inference
    from graft.train.snap import FitSettings, TokenClasses, cached_features, fit_connector, save_fitted
    from graft.world.grounding import (
        CELLS,
        CellLayout,
        cell_accuracy,
        cell_words,
        grounding_classes,
        marker_words,
        scenes_of_images,
    )

    settings = FitSettings(steps=steps or GROUND_STEPS, seed=seed, contrast=GROUND_CONTRAST)
    cells = cells or CELLS
    model, processor = load_for_inference(src)
    if model.config.connector.get("reduction_margin"):
        settings.lr = GROUND_MARGIN_LR
    if not model.connector.spatial:
        raise ValueError(
            f"grounding teaches a connector whose tokens are image cells (a projector's), not "
            f"{model.config.connector['name']!r}"
        )
    features, files = cached_features(model, processor, records, world, cache)
    settings.heldout = min(settings.heldout, len(features) // 4)  # a small world's
    table = model.get_input_embeddings().weight.detach().float()
    scenes = scenes_of_images(world, files)
    layout = CellLayout.of(model.config.connector)
    labels = grounding_classes(scenes, model.config.image_seq_length, cells, layout)
    words = cell_words(processor.tokenizer, table, layout)
    # the markers are constants: set to their digits and kept there (fitted, they stayed half their size)
    if markers := layout.markers:
        model.connector.markers.data.copy_(marker_words(processor.tokenizer, table, markers))
        model.connector.markers.requires_grad_(False)
    result = fit_connector(
        model.connector,
        features,
        words[labels],
        table,
        settings,
        partial(cell_accuracy, words=words, layout=layout),
        TokenClasses(labels, words),
    )
    model.connector.requires_grad_(True)
    save_fitted(
        model, processor, dst, {"settings": asdict(settings), "cells": cells, "fidelity": result}, "ground"
    )


#: the stages that fit the connector alone, LLM-free, without a recipe
FITS: dict[str, Callable[..., None]] = {"ground": ground_step, "snap": snap_step}
