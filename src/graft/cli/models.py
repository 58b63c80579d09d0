"""Verbs that build, train and convert models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from graft.cli.app import RECIPE_HELP, app, check_out_folder, fail, parse_overrides
from graft.config import DEFAULT_CONNECTOR
from graft.templates import DEFAULT_TEMPLATE, TEMPLATE_NAMES


@app.command("compose")
def compose_cmd(
    vision: Annotated[str, typer.Option(help="Vision tower: local folder or hub id (CLIP, SigLIP ...).")],
    llm: Annotated[str, typer.Option(help="Causal LM: local folder or hub id.")],
    out: Annotated[Path, typer.Option(help="Folder to save the grafted (untrained-connector) model.")],
    connector: Annotated[
        str,
        typer.Option(
            help="Connector name: linear, mlp2x_gelu, swiglu, lexical, qformer, qformer_instruct, vpgc "
            "(graft.connectors.CONNECTORS)."
        ),
    ] = DEFAULT_CONNECTOR,
    reduction: Annotated[
        str, typer.Option(help="Token reduction before the connector: none, pool, pixel_shuffle.")
    ] = "none",
    reduction_factor: Annotated[int, typer.Option(help="k for k x k token reduction.")] = 2,
    reduction_margin: Annotated[
        int,
        typer.Option(
            help="Rings of patches around each pixel_shuffle group that it also reads (overlapping "
            "windows; 0, as transformers' pixel shuffle, is the only margin that exports without "
            "graft's code)."
        ),
    ] = 0,
    layer_norm: Annotated[
        bool,
        typer.Option(
            help="LayerNorm the (reduced) features before the projector, as Aya Vision's adapter "
            "does (swiglu with it exports to AyaVisionForConditionalGeneration)."
        ),
    ] = False,
    tokens_per_group: Annotated[
        int,
        typer.Option(
            help="Tokens a projector writes per (reduced) patch group, one after another (1: as "
            "LLaVA and Aya Vision, the only count that exports without graft's code)."
        ),
    ] = 1,
    marker_grid: Annotated[
        int,
        typer.Option(
            help="Side of the pixel_shuffle grid of groups whose row and column two learned markers "
            "say before each group's tokens, or after them with --markers-after (0: none, the only "
            "setting that exports without graft's code)."
        ),
    ] = 0,
    markers_after: Annotated[
        bool,
        typer.Option(
            help="Put --marker-grid's markers after each group's tokens, not before them (the demo's "
            "layout: a reply that names an object then copies its digits)."
        ),
    ] = False,
    template: Annotated[
        str, typer.Option(help=f"Conversation template: {TEMPLATE_NAMES}.")
    ] = DEFAULT_TEMPLATE,
    feature_layer: Annotated[int, typer.Option(help="Vision layer whose features are used.")] = -2,
    pad_to_square: Annotated[bool, typer.Option(help="Pad images to square with the mean colour.")] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Replace a non-empty --out folder (in one rename, once written).")
    ] = False,
) -> None:
    """Graft a vision tower onto an LLM through a fresh connector and save the result."""
    from graft.backbones import compose_from_pretrained, save_composed
    from graft.connectors import connector_class
    from graft.files import atomic_dir
    from graft.templates import get_template

    spec = {"name": connector}
    if reduction != "none":
        spec.update(reduction=reduction, reduction_factor=reduction_factor)
    if reduction_margin:
        spec["reduction_margin"] = reduction_margin
    if layer_norm:
        spec["layer_norm"] = True
    if tokens_per_group != 1:
        spec["tokens_per_group"] = tokens_per_group
    if marker_grid:
        spec["marker_grid"] = marker_grid
    if markers_after:
        if not marker_grid:
            fail("--markers-after places --marker-grid's markers: give --marker-grid too")
        spec["markers_after"] = True
    try:  # names first, so a typo fails before any weights load
        get_template(template)
        connector_class(connector)
    except ValueError as err:
        fail(str(err))
    check_out_folder(out, overwrite, "the grafted model")
    try:
        model, tokenizer, image_processor = compose_from_pretrained(
            vision, llm, connector=spec, vision_feature_layer=feature_layer
        )
        with atomic_dir(out, overwrite) as tmp:  # a replaced folder keeps nothing of the old one
            save_composed(
                model, tokenizer, image_processor, tmp, template=template, pad_to_square=pad_to_square
            )
    except FileExistsError:  # filled while the weights loaded
        fail(f"--out {out} exists and is not empty; pass --overwrite to replace it")
    except (ValueError, OSError) as err:
        fail(str(err))
    typer.echo(f"saved {out} ({model.config.image_seq_length} tokens per image)")


@app.command("train")
def train_cmd(
    recipe: Annotated[Path, typer.Argument(help=RECIPE_HELP)],
    out: Annotated[
        Path | None, typer.Option(help="Output folder (overrides the recipe's output_dir).")
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue from the newest checkpoint in the output folder.")
    ] = False,
    skip_bad: Annotated[
        bool, typer.Option(help="Skip (and count in the log) bad samples instead of stopping.")
    ] = False,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a recipe field: --set optim.lr=1e-4 (repeatable)."),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Start over in an output folder that holds an earlier run (it is removed).")
    ] = False,
) -> None:
    """Train a stage of a recipe (alignment, instruction tuning, LoRA ...) through accelerate.

    An output folder that holds a run is continued with --resume (with the run's own recipe) or
    replaced with --overwrite; two runs never write one folder at once."""
    from graft.train import load_recipe, train
    from graft.train.resume import start_over

    overrides = parse_overrides(set_ or [])
    if out is not None:
        overrides["output_dir"] = str(out)
    if resume:
        overrides["resume"] = True
    if skip_bad:
        overrides["data.skip_bad"] = True
    if resume and overwrite:
        fail("--resume continues the run in the output folder, --overwrite removes it: give one")
    try:
        loaded = load_recipe(recipe, overrides)
        if not resume:
            start_over(loaded.output_dir, overwrite)
        result = train(loaded)
    except (ValueError, OSError) as err:  # OSError: a model or data file that does not load
        fail(str(err))
    from accelerate import PartialState

    if PartialState().is_main_process:  # once, not once per process of a distributed launch
        typer.echo(json.dumps(result.summary(), indent=2))


@app.command("export-hf")
def export_hf_cmd(
    model: Annotated[Path, typer.Option(help="A graft model folder.")],
    out: Annotated[Path, typer.Option(help="Folder for the transformers checkpoint.")],
    overwrite: Annotated[
        bool, typer.Option(help="Replace a non-empty --out folder (in one rename, once written).")
    ] = False,
) -> None:
    """Write a transformers checkpoint (config, weights, processor) that AutoModelForImageTextToText
    loads: LlavaForConditionalGeneration (linear, mlp2x_gelu), AyaVisionForConditionalGeneration
    (swiglu with layer_norm, token reduction by pixel shuffle), or, for the demo's cell connectors
    (several tokens per cell, a margin, markers), Aya Vision with graft's cell adapter as code the
    folder carries: load that one with trust_remote_code=True."""
    from graft.export import export_hf

    check_out_folder(out, overwrite, "the transformers checkpoint")
    try:
        written = export_hf(model, out, overwrite=overwrite)
    except FileExistsError:  # filled while the model loaded
        fail(f"--out {out} exists and is not empty; pass --overwrite to replace it")
    except (ValueError, OSError) as err:  # OSError: a model folder that is missing files
        fail(str(err))
    config = json.loads((written / "config.json").read_text())
    remote = "; its code is in the folder: load it with trust_remote_code=True" * ("auto_map" in config)
    typer.echo(f"exported {model} -> {out} ({config['architectures'][0]}{remote})")


@app.command("snap")
def snap_cmd(
    model: Annotated[Path, typer.Option(help="A graft model folder (its connector: lexical).")],
    data: Annotated[
        Path, typer.Option(help="LLaVA JSON records whose images the new connector learns on (stage 1's).")
    ],
    image_root: Annotated[Path, typer.Option(help="Folder the records' image paths are relative to.")],
    out: Annotated[Path, typer.Option(help="Folder for the snapped model.")],
    connector: Annotated[str | None, typer.Option(help="The new connector (default: swiglu).")] = None,
    steps: Annotated[int | None, typer.Option(help="Optimizer steps (default: 400).")] = None,
    feature_cache: Annotated[
        Path | None, typer.Option(help="Vision-feature cache folder (default: OUT/feature_cache).")
    ] = None,
) -> None:
    """Give a model a connector that exports: a swiglu learns, LLM-free, to write the soft tokens of
    its lexical connector (graft.train.snap); prints how close it comes on held-out images."""
    from graft.train.snap import SnapSettings, snap_model

    given = {"connector": connector, "steps": steps}
    settings = SnapSettings(**{k: v for k, v in given.items() if v is not None})
    try:
        fidelity = snap_model(model, data, image_root, out, feature_cache, settings)
    except (ValueError, OSError) as err:
        fail(str(err))
    typer.echo(json.dumps(fidelity, indent=2))


@app.command("import-hf")
def import_hf_cmd(
    model: Annotated[
        Path,
        typer.Option(
            "--model",
            "--llava",
            help="A transformers LLaVA (llava-hf layout) or Aya Vision checkpoint folder.",
        ),
    ],
    out: Annotated[Path, typer.Option(help="Folder for the graft model.")],
    template: Annotated[
        str | None,
        typer.Option(
            help=f"Conversation template of that checkpoint: {TEMPLATE_NAMES} (default: the one its "
            f"chat template renders, else {DEFAULT_TEMPLATE}, with a warning)."
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace a non-empty --out folder (in one rename, once written).")
    ] = False,
) -> None:
    """Turn a transformers LLaVA or Aya Vision checkpoint (what `graft export-hf` writes, too) into
    a graft model folder, ready to fine-tune."""
    from graft.export import import_from_hf
    from graft.templates import get_template

    try:  # the template name first, so a typo fails before any weights load
        if template is not None:
            get_template(template)
    except ValueError as err:
        fail(str(err))
    check_out_folder(out, overwrite, "the graft model")
    try:
        import_from_hf(model, out_dir=out, template=template, overwrite=overwrite)
    except FileExistsError:  # filled while the weights loaded
        fail(f"--out {out} exists and is not empty; pass --overwrite to replace it")
    except (ValueError, OSError) as err:
        fail(str(err))
    typer.echo(f"imported {model} -> {out}")
