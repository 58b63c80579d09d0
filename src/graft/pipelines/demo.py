"""The demo pipeline (``graft demo``): the whole job on the embedded default, the shapes world.

world -> backbones -> compose -> alignment (``DemoSettings.alignment``: by default the grounding,
LLM-free, of each image cell's token onto the LLM's words for what is there, then a perception
warm-up on colour-presence questions; or the lexical connector's word alignment and snap; or
LLaVA's caption stage 1) -> stage 2 (instruction tuning) -> held-out evaluation (with and
without the images) -> summary.json / summary.md.

Every step leaves a finished marker; a rerun reuses finished steps and reports the wall time
each took when it ran.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from graft.files import write_text_atomic
from graft.pipelines.demo_fits import FITS
from graft.pipelines.demo_measure import LearningCurve, diagnose, evaluate_demo, last_step, summary_markdown
from graft.pipelines.demo_settings import ALIGNMENT_STAGES, DemoSettings, check_alignment, stages_wanted
from graft.pipelines.run_folder import StepClock, claim_folder
from graft.report.demo import read_curve


def own_data(
    path: Path, records: Callable[[Path, int], list[dict[str, Any]]], world: Path, seed: int
) -> Path:
    """A stage's training records written once to ``path`` (built from the world)."""
    if not path.exists():
        write_text_atomic(path, json.dumps(records(world, seed)))
    return path


def demo_recipe(llm: str, stage: str) -> str:
    """The packaged recipe of a stage: the tiny Llama has its own rates and template."""
    return f"shapes-tiny-{stage}" if llm == "tiny" else f"shapes-{stage}"


def frozen_llm_stage2(llm: str) -> dict[str, Any]:
    """Stage 2's recipe changes for ``DemoSettings.frozen_llm``: the LLM frozen, the connector
    learning at the rate of this LLM's stage-1 recipe."""
    from graft.train import load_recipe
    from graft.train.recipe import packaged_recipe

    rate = load_recipe(packaged_recipe(demo_recipe(llm, "stage1"))).connector.lr
    return {"llm.mode": "frozen", "llm.top_layers": None, "connector.mode": "full", "connector.lr": rate}


def demo_template(llm: str, llm_dir: Path) -> str:
    """The chat template stage 2 trains in: the LLM's own where graft knows it."""
    if llm == "tiny":
        return "vicuna_v1"
    if llm == "smollm2":
        return "smollm2"
    from graft.processing import load_tokenizer

    return "chatml" if "<|im_start|>" in load_tokenizer(str(llm_dir)).get_vocab() else "vicuna_v1"


#: the steps ``train_demo`` runs, in order
BUILD_STEPS = ("world", "backbones", "compose", *ALIGNMENT_STAGES, "stage2")


@dataclass
class DemoModels:
    """What ``train_demo`` leaves: the folders the measuring steps read, and the step clock."""

    world: Path
    vision: Path
    stage2: Path
    clock: StepClock


def train_demo(out: Path, s: DemoSettings, curve: Callable[..., None] | None = None) -> DemoModels:
    """The demo's building steps in ``out``: world, backbones, compose, the alignment's stages
    (``stages_wanted``), stage 2 (``curve`` is stage 2's ``on_step`` hook).
    ``graft ablation`` builds its Q-Former base with it."""
    from graft.backbones import compose_from_pretrained, save_composed
    from graft.eval.processes import process_state
    from graft.precision import use_bf16
    from graft.train import load_recipe, train
    from graft.train.recipe import packaged_recipe
    from graft.world import build_world
    from graft.world.naming import naming_records
    from graft.world.perception import perception_records
    from graft.world.pretrain import backbones_finished, llm_folder, pretrain_backbones, vision_folder
    from graft.world.record_kinds import ALL_KINDS, records_of_kinds

    claim_folder(out, s)
    # a CPU that only emulates bf16 trains in fp32, several times slower: say so before the
    # first step, not at the first training step minutes later (graft.precision warns once)
    device = process_state().device
    use_bf16(s.bf16, device)
    clock = StepClock(out / "steps.json")
    world, backbones = s.world_dir(out), s.backbones or out / "backbones"
    alignment = check_alignment(s.connector, s.alignment)
    spec = s.connector_spec()
    composed = out / "composed"

    clock.run(
        "world",
        lambda: (world / "world.json").exists(),
        lambda: build_world(world, num_images=s.images, seed=s.seed),
    )
    clock.run(
        "backbones",
        lambda: backbones_finished(backbones, s.llm, s.vision),
        lambda: pretrain_backbones(
            world,
            backbones,
            s.seed,
            str(device),  # the world's own pretraining (--vision train, --llm tiny): a GPU when there is one
            vision_steps=s.vision_steps,
            llm_steps=s.llm_steps,
            llm=s.llm,
            vision=s.vision,
        ),
    )
    llm_dir, vision_dir = llm_folder(backbones, s.llm), vision_folder(backbones, s.vision)
    template = demo_template(s.llm, llm_dir)

    def do_compose() -> None:
        from transformers import set_seed

        # the new connector's initial weights come from the global RNG: seed it here, or they
        # would depend on whatever ran before in this process (pretraining, or nothing on a rerun)
        set_seed(s.seed)
        model, tokenizer, image_processor = compose_from_pretrained(
            str(vision_dir), str(llm_dir), connector=spec
        )
        save_composed(model, tokenizer, image_processor, composed, template=template)

    clock.run("compose", lambda: (composed / "config.json").exists(), do_compose)

    cache = str(s.feature_cache or out / "feature_cache")
    counts = {
        "ground": s.ground_steps,
        "align": s.align_steps,
        "stage1": s.stage1_steps,
        "snap": s.snap_steps,
        "perceive": s.perceive_steps if s.perceive_steps is not None or s.warms_up() else 0,
    }
    data_of = {
        "ground": lambda: world / "stage1.json",
        "align": lambda: own_data(out / "naming.json", naming_records, world, s.seed),
        "stage1": lambda: world / "stage1.json",
        "snap": lambda: world / "stage1.json",
        "perceive": lambda: own_data(out / "perceive.json", perception_records, world, s.seed),
    }
    # each stage starts from the one before it
    stages: list[tuple[str, Path, int | None, Callable[..., None] | None]] = [
        (name, data_of[name](), counts[name], None) for name in stages_wanted(alignment, counts)
    ]
    stage2_data = world / "stage2.json"
    if (kinds := s.stage2_kinds_or_default()) != ALL_KINDS:
        stage2_data = own_data(
            out / "stage2.json", lambda w, _: records_of_kinds(w / "stage2.json", kinds), world, s.seed
        )
    stages.append(("stage2", stage2_data, s.stage2_steps, curve))
    src = composed
    for name, data, steps, hook in stages:
        dst = out / name
        work: Callable[[], Any]
        if name in FITS:  # LLM-free: no recipe
            cells = {"cells": s.cells()} if name == "ground" else {}
            work = partial(FITS[name], src, dst, data, world, cache, steps, s.seed, **cells)
            clock.run(name, lambda dst=dst: (dst / "config.json").exists(), work)
            src = dst
            continue
        overrides = {
            "model.init_from": str(src),
            "data.train": [str(data)],
            "data.image_root": str(world),
            "output_dir": str(dst),
            "feature_cache.dir": cache,
            "seed": s.seed,
            "resume": True,
        }
        if name in ("perceive", "stage2"):  # question answering, in the LLM's chat template
            overrides["template"] = template
        if steps is not None:
            overrides["max_steps"] = steps
        if name == "stage2" and s.frozen_llm:
            overrides |= frozen_llm_stage2(s.llm)
        recipe = load_recipe(packaged_recipe(demo_recipe(s.llm, name)), overrides)
        work = partial(train, recipe, on_step=hook)
        clock.run(name, lambda dst=dst: (dst / "config.json").exists(), work)
        src = dst
    return DemoModels(world, vision_dir, out / "stage2", clock)


def run_demo(out: Path, settings: DemoSettings | None = None) -> dict[str, float]:
    """The demo in ``out``. With ``settings.bench`` the model also answers every task of the
    world's benchmark suite into ``out/{run}/``, and the report shows them beside the demo's
    own numbers."""
    s = settings or DemoSettings()
    world = s.world_dir(out)
    # the curve's last point is the final evaluation's (below), not a second pass over the same model
    curve = LearningCurve(out / "curve.jsonl", world, s.curve_points, s.curve_limit, skip_last=True)
    built = train_demo(out, s, curve)
    clock, vision_dir, stage2 = built.clock, built.vision, built.stage2

    summary_path = out / "summary.json"

    def do_eval() -> None:
        from graft.inference import load_for_inference

        # answers of an earlier stage 2 (retrained since) must not be resumed: start afresh
        shutil.rmtree(out / "heldout", ignore_errors=True)
        summary = evaluate_demo(*load_for_inference(stage2, s.bf16), world, out / "heldout", s.eval_limit)
        write_text_atomic(out / "metrics.json", json.dumps(summary, indent=2))
        curve.record(last_step(stage2), summary)

    clock.run("eval", lambda: (out / "metrics.json").exists(), do_eval)

    def do_diagnose() -> None:
        write_text_atomic(
            out / "diagnostics.json",
            json.dumps(diagnose(out, world, vision_dir, s.curve_limit, s.bf16, s.eval_limit), indent=2),
        )

    clock.run("diagnostics", lambda: (out / "diagnostics.json").exists(), do_diagnose)

    def do_bench() -> None:
        from graft.eval.runner import run_bench
        from graft.inference import load_for_inference

        results = run_bench(*load_for_inference(stage2, s.bf16), world / "bench", out, limit=s.bench_limit)
        failed = {run: r["error"] for run, r in results.items() if "error" in r}
        if failed:
            raise RuntimeError(f"benchmark runs failed: {failed}")
        skipped = {run: r["skipped"] for run, r in results.items() if "skipped" in r}
        write_text_atomic(
            out / "bench.json", json.dumps({"runs": sorted(results), "skipped": skipped}, indent=2)
        )

    if s.bench:
        clock.run("bench", lambda: (out / "bench.json").exists(), do_bench)
    summary = json.loads((out / "metrics.json").read_text())
    summary.update(json.loads((out / "diagnostics.json").read_text()))
    summary.update({f"time/{k}_s": v for k, v in clock.times.items()})
    summary["time/total_s"] = round(sum(clock.times.values()), 2)
    write_text_atomic(summary_path, json.dumps(summary, indent=2, sort_keys=True) + "\n")
    write_text_atomic(
        out / "summary.md", summary_markdown(summary, clock.reused, read_curve(out / "curve.jsonl"))
    )
    from graft.report.build import build_report

    build_report([out], out / "report")  # the demo's numbers and every benchmark run's
    return summary
