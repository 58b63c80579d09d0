"""``graft demo``: the whole job on the embedded default, the shapes world.

world -> tiny backbones -> compose -> stage 1 (alignment) -> stage 2 (instruction tuning)
-> held-out evaluation (with and without the images) -> summary.json / summary.md.

Every step leaves a finished marker; a rerun reuses finished steps and reports the wall time
each took when it ran.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from graft.cli.app import app, fail
from graft.files import write_text_atomic

#: the shapes world's Q-Former: BLIP-2's design at the tiny backbones' scale (16 queries, as many
#: tokens as the MLP demo's 2x2-pooled 8x8 grid)
SHAPES_QFORMER: dict[str, Any] = {
    "name": "qformer",
    "num_query_tokens": 16,
    "qformer_config": {
        "hidden_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 384,
        "cross_attention_frequency": 1,
    },
}
DEMO_CONNECTORS = ("mlp2x_gelu", "linear", "qformer")


def connector_spec(connector: str, reduction: str | None = None) -> dict[str, Any]:
    """The demo's connector: a projector (2x2 pooled tokens unless told) or the shapes-sized Q-Former."""
    if connector == "qformer":
        if reduction not in (None, "none"):
            raise ValueError("the qformer connector sets its own token count (queries): use --reduction none")
        return dict(SHAPES_QFORMER)
    if connector not in DEMO_CONNECTORS:
        hint = " (VPG-C guides a trained Q-Former: run `graft ablation`)" if connector == "vpgc" else ""
        raise ValueError(f"the demo grafts with one of {', '.join(DEMO_CONNECTORS)}, not {connector!r}{hint}")
    spec: dict[str, Any] = {"name": connector}
    if (reduction or "pool") != "none":
        spec.update(reduction=reduction or "pool", reduction_factor=2)
    return spec


class StepClock:
    """Wall time per step, persisted so that a rerun that reuses a step still reports it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.times: dict[str, float] = json.loads(path.read_text()) if path.exists() else {}
        self.reused: set[str] = set()

    def run(self, name: str, done: Callable[[], bool], work: Callable[[], Any]) -> None:
        if done() and name in self.times:
            self.reused.add(name)
            typer.echo(f"[{name}] reused ({self.times[name]:.1f}s when it ran)")
            return
        typer.echo(f"[{name}] running ...")
        start = time.perf_counter()
        work()
        self.times[name] = round(time.perf_counter() - start, 2)
        write_text_atomic(self.path, json.dumps(self.times, indent=2))
        typer.echo(f"[{name}] done in {self.times[name]:.1f}s")


def run_demo(
    out: Path,
    images: int,
    seed: int,
    connector: str,
    reduction: str | None,
    eval_limit: int | None,
    pretrain_steps: dict[str, int | None] | None = None,
    world: Path | None = None,
    backbones: Path | None = None,
    bench_limit: int | None = 200,
    bench: bool = True,
) -> dict[str, float]:
    """The demo in ``out``; ``world`` and ``backbones`` default to folders inside it (give another
    run's to share them: the ablation does). With ``bench`` the model also answers every task of
    the world's benchmark suite (``graft eval --bench``; ``bench_limit`` samples per run), into
    ``out/{run}/``, and the report shows them beside the demo's own numbers."""
    from graft.backbones import compose_from_pretrained, save_composed
    from graft.train import load_recipe, train
    from graft.train.recipe import packaged_recipe
    from graft.world import build_world
    from graft.world.pretrain import backbones_finished, pretrain_backbones

    out.mkdir(parents=True, exist_ok=True)
    clock = StepClock(out / "steps.json")
    world, backbones = world or out / "world", backbones or out / "backbones"
    spec = connector_spec(connector, reduction)
    composed, stage1, stage2 = out / "composed", out / "stage1", out / "stage2"

    clock.run(
        "world",
        lambda: (world / "world.json").exists(),
        lambda: build_world(world, num_images=images, seed=seed),
    )
    clock.run(
        "backbones",
        lambda: backbones_finished(backbones),
        lambda: pretrain_backbones(world, backbones, seed=seed, **(pretrain_steps or {})),
    )

    def do_compose() -> None:
        from transformers import set_seed

        # the new connector's initial weights come from the global RNG: seed it here, or they
        # would depend on whatever ran before in this process (pretraining, or nothing on a rerun)
        set_seed(seed)
        model, tokenizer, image_processor = compose_from_pretrained(
            str(backbones / "vision"), str(backbones / "llm"), connector=spec
        )
        save_composed(model, tokenizer, image_processor, composed, template="vicuna_v1")

    clock.run("compose", lambda: (composed / "config.json").exists(), do_compose)

    cache = str(out / "feature_cache")
    for name, src, dst, data in (
        ("stage1", composed, stage1, world / "stage1.json"),
        ("stage2", stage1, stage2, world / "stage2.json"),
    ):
        overrides = {
            "model.init_from": str(src),
            "data.train": [str(data)],
            "data.image_root": str(world),
            "output_dir": str(dst),
            "feature_cache.dir": cache,
            "seed": seed,
            "resume": True,
        }
        recipe = load_recipe(packaged_recipe(f"shapes-{name}"), overrides)
        clock.run(name, lambda dst=dst: (dst / "config.json").exists(), lambda recipe=recipe: train(recipe))

    summary_path = out / "summary.json"

    def do_eval() -> None:
        from graft.cli.inference import load_for_inference

        summary = evaluate_demo(*load_for_inference(stage2), world, eval_limit)
        write_text_atomic(out / "metrics.json", json.dumps(summary, indent=2))

    clock.run("eval", lambda: (out / "metrics.json").exists(), do_eval)

    def do_bench() -> None:
        from graft.cli.inference import load_for_inference
        from graft.eval.runner import run_bench

        results = run_bench(*load_for_inference(stage2), world / "bench", out, limit=bench_limit)
        failed = {run: r["error"] for run, r in results.items() if "error" in r}
        if failed:
            raise RuntimeError(f"benchmark runs failed: {failed}")
        skipped = {run: r["skipped"] for run, r in results.items() if "skipped" in r}
        write_text_atomic(
            out / "bench.json", json.dumps({"runs": sorted(results), "skipped": skipped}, indent=2)
        )

    if bench:
        clock.run("bench", lambda: (out / "bench.json").exists(), do_bench)
    summary = json.loads((out / "metrics.json").read_text())
    summary.update({f"time/{k}_s": v for k, v in clock.times.items()})
    summary["time/total_s"] = round(sum(clock.times.values()), 2)
    write_text_atomic(summary_path, json.dumps(summary, indent=2, sort_keys=True) + "\n")
    write_text_atomic(out / "summary.md", summary_markdown(summary, clock.reused))
    from graft.eval.report import build_report

    build_report([out], out / "report")  # the demo's numbers and every benchmark run's
    return summary


def evaluate_demo(
    model: Any, processor: Any, world: Path, limit: int | None, blind: bool = True
) -> dict[str, float]:
    """Held-out binary and multiple-choice accuracy, with the images and (``blind``) without."""
    from graft.eval.questions import evaluate_questions

    metrics: dict[str, float] = {}
    for family in ("binary", "mcq"):
        path = world / "eval" / f"{family}.jsonl"
        for blanked in (False, True) if blind else (False,):
            res = evaluate_questions(model, processor, path, world, blind=blanked, limit=limit)
            suffix = "_blind" if blanked else ""
            metrics[f"{family}/accuracy{suffix}"] = res["accuracy"]
            metrics[f"{family}/n"] = res["n"]
            for key, value in res.items():
                if key.startswith("qtype/") and key.endswith("/accuracy") and not blanked:
                    # question types repeat across families (colour yes/no, colour MCQ)
                    metrics[key.replace("qtype/", f"qtype/{family}_", 1)] = value
    return metrics


def summary_markdown(summary: dict[str, float], reused: set[str]) -> str:
    lines = ["# graft demo: shapes world", "", "| metric | with images | images blanked |", "|---|---|---|"]
    for family in ("binary", "mcq"):
        seen, blind = summary.get(f"{family}/accuracy"), summary.get(f"{family}/accuracy_blind")
        lines.append(f"| {family}/accuracy | {seen:.3f} | {blind:.3f} |")
    lines += ["", "| question type | accuracy |", "|---|---|"]
    lines += [
        f"| {k.split('/')[1]} | {v:.3f} |" for k, v in sorted(summary.items()) if k.startswith("qtype/")
    ]
    lines += ["", "| step | wall time (s) |", "|---|---|"]
    for key, value in summary.items():
        if key.startswith("time/"):
            step = key.removeprefix("time/").removesuffix("_s")
            lines.append(f"| {step}{' (reused)' if step in reused else ''} | {value:.1f} |")
    return "\n".join(lines) + "\n"


@app.command("demo")
def demo_cmd(
    out: Annotated[Path, typer.Option(help="Folder for every artefact of the run.")] = Path("runs/demo"),
    images: Annotated[int, typer.Option(help="Images in the shapes world.")] = 8000,
    seed: Annotated[int, typer.Option(help="Random seed of the whole run.")] = 0,
    connector: Annotated[
        str, typer.Option(help="Connector: mlp2x_gelu, linear or qformer (VPG-C: graft ablation).")
    ] = "mlp2x_gelu",
    reduction: Annotated[
        str | None, typer.Option(help="Projectors' token reduction: none, pool (default), pixel_shuffle.")
    ] = None,
    eval_limit: Annotated[int | None, typer.Option(help="Score only the first N questions per file.")] = None,
    vision_steps: Annotated[int | None, typer.Option(help="CLIP pretraining steps (default 600).")] = None,
    llm_steps: Annotated[int | None, typer.Option(help="Llama pretraining steps (default 1800).")] = None,
    bench_limit: Annotated[
        int | None, typer.Option(help="Samples per benchmark run of the world's suite (graft eval --bench).")
    ] = 200,
) -> None:
    """World, tiny backbones, stage 1, stage 2, held-out evaluation; prints the results table."""
    steps = {"vision_steps": vision_steps, "llm_steps": llm_steps}
    try:
        connector_spec(connector, reduction)
    except ValueError as err:
        fail(str(err))
    summary = run_demo(out, images, seed, connector, reduction, eval_limit, steps, bench_limit=bench_limit)
    typer.echo((out / "summary.md").read_text())
    typer.echo(f"summary: {out / 'summary.json'} (total {summary['time/total_s']:.0f}s)")
