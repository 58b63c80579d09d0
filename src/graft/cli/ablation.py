"""``graft ablation``: parse the options and run the ablation pipeline (``graft.pipelines.ablation``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from graft.cli.app import app, fail
from graft.pipelines.ablation import AblationSettings, run_ablation
from graft.pipelines.demo_settings import DemoSettings
from graft.pipelines.run_folder import RunFolderError


@app.command("ablation")
def ablation_cmd(
    out: Annotated[Path, typer.Option(help="Folder for the ablation's models and results.")] = Path(
        "runs/ablation"
    ),
    demo: Annotated[
        Path, typer.Option(help="Demo folder whose world and backbones are used (built there if missing).")
    ] = Path("runs/demo"),
    images: Annotated[int, typer.Option(help="Images in the world, when it has to be built.")] = 8000,
    seed: Annotated[int, typer.Option(help="Random seed of the whole run.")] = 0,
    train_pairs: Annotated[
        int, typer.Option(help="Synthetic pairs from training images.")
    ] = AblationSettings.train_pairs,
    test_pairs: Annotated[
        int, typer.Option(help="Held-out pairs from test images.")
    ] = AblationSettings.test_pairs,
    vpgc_steps: Annotated[
        int, typer.Option(help="Optimizer steps of each VPG-C row.")
    ] = AblationSettings.vpgc_steps,
    mix: Annotated[
        str,
        typer.Option(
            help="Captions : synthetic pairs : which-image questions made from the pairs, per batch of "
            "the pairs row (Cheetah's captions : pairs is 64:24; the questions are off at 0)."
        ),
    ] = ":".join(f"{share:g}" for share in AblationSettings.mix),
    eval_limit: Annotated[int | None, typer.Option(help="Score only the first N samples per task.")] = 100,
    vision_steps: Annotated[
        int | None, typer.Option(help="Vision-tower pretraining steps, if not built.")
    ] = None,
    llm: Annotated[
        str, typer.Option(help="The demo's LLM: smollm2, tiny, a .gguf file or a folder.")
    ] = "smollm2",
    vision: Annotated[
        str, typer.Option(help="The demo's vision tower: packaged, train or a folder.")
    ] = "packaged",
    llm_steps: Annotated[int | None, typer.Option(help="Tiny Llama pretraining steps, if not built.")] = None,
    stage1_steps: Annotated[int, typer.Option(help="The base's stage-1 steps (half the demo's 100).")] = 50,
    stage2_steps: Annotated[int, typer.Option(help="The base's stage-2 steps (fewer than the demo's).")] = 40,
) -> None:
    """Q-Former base vs + VPG-C on captions vs + VPG-C with synthetic pairs; prints the table."""
    from graft.world.build import world_size_problem
    from graft.world.pretrain import check_llm

    if problem := world_size_problem(images):
        fail(problem)
    try:
        check_llm(llm)
        shares = parse_mix(mix)
    except (ValueError, OSError) as err:
        fail(str(err))
    base = DemoSettings(
        images=images,
        seed=seed,
        llm=llm,
        vision=vision,
        eval_limit=eval_limit,
        vision_steps=vision_steps,
        llm_steps=llm_steps,
        stage1_steps=stage1_steps,
        stage2_steps=stage2_steps,
        curve_points=0,
    )
    settings = AblationSettings(train_pairs, test_pairs, vpgc_steps, shares)
    try:
        summary = run_ablation(out, demo, base, settings)
    except RunFolderError as err:
        fail(str(err))
    typer.echo((out / "summary.md").read_text())
    typer.echo(f"summary: {out / 'summary.json'} (total {summary['time/total_s']:.0f}s)")


def parse_mix(text: str) -> tuple[float, float, float]:
    """``--mix CAPTIONS:PAIRS:WHICH``: three shares, the captions' above zero, none below."""
    parts = text.split(":")
    try:
        shares = tuple(float(p) for p in parts)
    except ValueError:
        shares = ()
    if len(shares) != 3 or shares[0] <= 0 or min(shares) < 0:
        raise ValueError(
            f"--mix {text!r}: expected CAPTIONS:PAIRS:WHICH, three numbers, captions > 0 (e.g. 64:24:0)"
        )
    return shares[0], shares[1], shares[2]
