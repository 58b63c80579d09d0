"""``graft plan RECIPE --gpus N --gpu-memory 80GB``: memory per GPU of each distributed strategy,
the smallest that fits with its micro-batch and accumulation, and the hours of the stage.

An estimate from published accounting (docs/plan.md), made on the meta device: no weights, no
GPU. The model is measured as ``graft inspect`` measures it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from graft.cli.app import RECIPE_HELP, app, fail, parse_overrides

if TYPE_CHECKING:
    from graft.train.plan import Plan

GB = 1e9


def _gb(value: float) -> str:
    return f"{value / GB:.1f}"


def _summary(plan: Plan) -> list[str]:
    s, shape, tokens = plan.settings, plan.shape, plan.tokens
    lora = f", LoRA adapters {shape.lora:,}" if shape.lora else ""
    lines = [
        f"{plan.recipe}: {shape.total:,} parameters, {shape.trainable:,} trainable{lora}",
        f"{s.gpus} x {s.gpu_type} with {_gb(s.gpu_memory)} GB each, {s.mfu:.0%} of "
        f"{s.gpu_type}'s peak bf16 rate; global batch {plan.global_batch}",
        f"tokens: {tokens.source}",
        f"memory at the longest sample, {tokens.max_tokens} tokens "
        f"({'every position' if s.all_logits else f'up to {tokens.max_supervised} labelled'} in the logits)",
    ]
    if plan.total_tokens is not None and plan.flops is not None:
        bound = " (upper bound)" if tokens.upper_bound else ""
        lines.append(
            f"{tokens.samples:,} samples x {plan.epochs:g} epoch(s) = {plan.total_tokens / 1e6:,.0f}M "
            f"tokens{bound}, {plan.flops:.3g} FLOPs"
        )
    else:
        lines.append("hours: unknown sample count; give --data or --samples")
    return lines + [f"note: {note}" for note in shape.notes]


def render(plan: Plan) -> None:
    """The plan as a rich table, with what it assumes above and the advice below."""
    from rich.console import Console
    from rich.table import Table

    width = shutil.get_terminal_size((160, 24)).columns
    console = Console(width=max(width, 150), highlight=False)
    for line in _summary(plan):
        console.print(line, soft_wrap=True)
    table = Table(title="per-GPU memory (GB) and time by strategy", title_justify="left")
    for column in ("strategy", "states", "frozen", "activations", "logits", "overhead", "total"):
        table.add_column(column, justify="left" if column == "strategy" else "right")
    for column in ("fits", "micro x accum", "hours", "host RAM/GPU", "graft"):
        table.add_column(column, justify="right")
    for row in plan.strategies:
        m = row.memory
        hours = "?" if row.hours is None else f"{row.hours:.1f}"
        if row.hours is not None and "offload" in row.strategy:
            hours = f">={hours}"  # host-device traffic and the CPU optimizer step are not modelled
        table.add_row(
            row.label,
            _gb(m.states + m.gathered),
            _gb(m.frozen),
            _gb(m.activations),
            _gb(m.logits),
            _gb(m.overhead),
            _gb(m.total),
            "yes" if row.fits else "no",
            f"{row.micro_batch} x {row.grad_accum}" if row.fits else "-",
            hours,
            _gb(m.cpu) if m.cpu else "-",
            {None: "-", "zero3": "zero3|fsdp2"}.get(row.graft, row.graft),
        )
    console.print(table)
    best = plan.best
    if best is None:
        console.print(
            f"nothing fits in {_gb(plan.settings.gpu_memory)} GB at micro-batch 1: more GPUs, larger "
            "GPUs, gradient checkpointing, a shorter max_length or LoRA (--set llm.mode=lora)"
        )
    else:
        console.print(
            f"smallest that fits: {best.label}, micro-batch {best.micro_batch} x accumulation "
            f"{best.grad_accum} x {plan.settings.gpus} GPUs = {plan.global_batch}: graft train "
            f"RECIPE --set distributed.strategy={best.graft} --set batch_size={best.micro_batch}"
            f"{'' if plan.fixed_global_batch else f' --set grad_accum={best.grad_accum}'}",
            soft_wrap=True,
        )
    console.print(
        "states: 16-bit weights + gradients + fp32 Adam (16 B per trainable parameter, ZeRO's K=12), "
        "with ZeRO-3's gathered layers, and under DDP 4 B more for its gradient buckets; frozen: 16-bit "
        "frozen weights; a row that does not fit shows micro-batch 1; "
        "offload hours leave out host transfers and the CPU optimizer step (>=); graft: "
        "the distributed.strategy that runs the row (-: none graft ships; never advised). "
        "Estimates, not measurements: docs/plan.md."
    )


@app.command("plan")
def plan_cmd(
    recipe: Annotated[Path, typer.Argument(help=RECIPE_HELP)],
    gpus: Annotated[int, typer.Option("--gpus", help="Data-parallel GPUs (all nodes).")],
    gpu_memory: Annotated[str, typer.Option("--gpu-memory", help="Memory per GPU: 80GB, 141GB, 80GiB.")],
    gpu_type: Annotated[str, typer.Option("--gpu-type", help="A100, H100 or H200 (peak bf16).")] = "A100",
    mfu: Annotated[float, typer.Option("--mfu", help="Sustained share of the peak bf16 rate.")] = 0.4,
    data: Annotated[
        Path | None, typer.Option("--data", help="LLaVA JSON/JSONL: the dataset or a sample of it.")
    ] = None,
    samples: Annotated[int | None, typer.Option("--samples", help="Samples per epoch.")] = None,
    tokens_per_sample: Annotated[
        float | None, typer.Option("--tokens-per-sample", help="Average tokens per sample, images included.")
    ] = None,
    seq_len: Annotated[
        int | None, typer.Option("--seq-len", help="Longest sample for memory (default: max_length).")
    ] = None,
    all_logits: Annotated[
        bool, typer.Option("--all-logits", help="Logits at every position (graft: labelled ones only).")
    ] = False,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a recipe field: --set llm.mode=lora (repeatable)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
) -> None:
    """Memory per GPU of DDP / ZeRO-2 / ZeRO-3 (FSDP2), with and without CPU offload; the smallest
    strategy that fits, its micro-batch x accumulation, and the stage's hours. No weights, no GPU."""
    from graft.train.plan import PlanError, PlanSettings, make_plan, parse_memory
    from graft.train.recipe import load_recipe

    try:
        settings = PlanSettings(
            gpus=gpus,
            gpu_memory=parse_memory(gpu_memory),
            gpu_type=gpu_type,
            mfu=mfu,
            data=str(data) if data is not None else None,
            samples=samples,
            tokens_per_sample=tokens_per_sample,
            seq_len=seq_len,
            all_logits=all_logits,
        )
        plan = make_plan(load_recipe(recipe, parse_overrides(set_ or [])), settings)
    except (PlanError, ValueError, OSError) as err:
        fail(str(err))
    if as_json:
        typer.echo(json.dumps(plan.to_dict(), indent=2))
        return
    render(plan)
