"""``graft pairs``: synthetic discriminative pairs (Cheetah) from a shapes world or boxed photos."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from graft.cli.app import app, fail


@app.command("pairs")
def pairs_cmd(
    out: Annotated[Path, typer.Option(help="Folder for pairs.jsonl (LLaVA format) and images/.")],
    world: Annotated[
        Path | None, typer.Option(help="A shapes world: its scenes are edited and re-rendered exactly.")
    ] = None,
    split: Annotated[str, typer.Option(help="World split to take source images from.")] = "train",
    regions: Annotated[
        Path | None,
        typer.Option(
            help='Photos instead: JSONL of {"image", "regions": [{"label", "box": [x1,y1,x2,y2]}]} in 0..1.'
        ),
    ] = None,
    image_root: Annotated[
        Path | None,
        typer.Option(help="With --regions: image paths are relative to this (default: its folder)."),
    ] = None,
    editor: Annotated[str, typer.Option(help="With --regions: the photo editor (opencv).")] = "opencv",
    model: Annotated[
        Path | None,
        typer.Option(help="A graft model with a Q-Former VPG: edit the objects its attention overlooks."),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N source images.")] = None,
    kinds: Annotated[str, typer.Option(help="Edit kinds to draw from.")] = "modify,swap,delete,add",
    pick_from: Annotated[int, typer.Option(help="Choose among this many least-attended objects.")] = 2,
    seed: Annotated[int, typer.Option(help="Random seed (per source, so a rerun makes the same pairs).")] = 0,
) -> None:
    """Edit one overlooked object per image and write (both images, instruction, description) samples.

    Without --model the object is chosen at random (and the run says so). A rerun resumes."""
    from graft.data.pairs import AttentionScorer, PairError, make_pairs, read_regions
    from graft.data.photo_edit import build_editor

    if (world is None) == (regions is None):
        fail("give exactly one of --world (a shapes world) or --regions (boxed photos)")
    try:
        if world is not None:
            from graft.world.edits import ShapesEditor, world_sources

            sources, edit, root = world_sources(world, split), ShapesEditor(), world
        else:
            sources, edit = read_regions(regions), build_editor(editor)
            root = image_root or regions.parent
        scorer = None
        if model is not None:
            from graft.inference import load_for_inference

            scorer = AttentionScorer(*load_for_inference(model))
        stats = make_pairs(
            sources[:limit],
            edit,
            root,
            out,
            scorer=scorer,
            seed=seed,
            pick_from=pick_from,
            kinds=[k.strip() for k in kinds.split(",") if k.strip()],
        )
    except (PairError, FileNotFoundError, ValueError) as err:
        fail(str(err))
    typer.echo(json.dumps(stats.summary()))
    typer.echo(f"pairs: {out / 'pairs.jsonl'} (train with data.image_root={out})")
