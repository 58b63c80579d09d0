"""Does a perception warm-up get stage 2 off its plateau?

Stage 2 of the demo answers at chance: the image tokens carry what the questions ask (a linear
probe reads each colour's presence from them), but nothing teaches the answer position to read
them, and a yes/no answer is one bit of signal per question. This script measures, from the
demo's stage-1 model and with the demo's stage-2 recipe (``shapes-stage2``: top 10 layers,
connector frozen, same learning rate and batch):

1. a warm-up on the easiest image question there is, one per record: "Is there a red object in
   the image?" (``graft.world.questions.presence``), its training loss (the plateau, then the
   drop) and its held-out accuracy with and without the images;
2. the demo's yes/no questions (one per record, with the image: the image twin of
   ``text_ceiling.py --family binary``) trained from the warm-up and, as the control, from
   stage 1 for the same steps, each scored on the held-out binary questions with and without
   the images.

    python benchmarks/perception_warmup.py --demo runs/demo --out runs/perception_warmup

``--demo`` is a finished ``graft demo --alignment captions`` folder (its world, stage-1 model and
feature cache; the default demo has no caption stage 1).
Models already trained in ``--out`` are reused (their seconds are then null). Prints one JSON
line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from graft.eval.questions import evaluate_question_files
from graft.eval.settings import EvalSettings
from graft.files import write_text_atomic
from graft.inference import load_for_inference
from graft.logs import configure_logging
from graft.train import load_recipe, train
from graft.train.recipe import packaged_recipe
from graft.world.diagnostics import presence_questions, question_training_records, text_question_records


def _train(demo: Path, init: Path, data: Path, out: Path, steps: int) -> tuple[Any, float | None]:
    """The demo's stage-2 recipe on ``data`` from ``init``; a finished model in ``out`` is reused."""
    overrides = {
        "model.init_from": str(init),
        "data.train": [str(data)],
        "data.image_root": str(demo / "world"),
        "feature_cache.dir": str(demo / "feature_cache"),
        "output_dir": str(out),
        "max_steps": steps,
        "resume": True,
    }
    recipe = load_recipe(packaged_recipe("shapes-stage2"), overrides)
    if (out / "config.json").exists():
        return recipe, None
    began = time.perf_counter()
    train(recipe)
    return recipe, round(time.perf_counter() - began, 1)


def _losses(run: Path) -> list[float]:
    return [round(json.loads(line)["loss"], 3) for line in (run / "log.jsonl").read_text().splitlines()]


def _score(
    model_dir: Path, files: list[Path], world: Path, out: Path, limit: int, bf16: bool
) -> dict[str, float]:
    model, processor = load_for_inference(model_dir, bf16)
    settings = EvalSettings(limit=limit, batch_size=32, progress=False)
    metrics = evaluate_question_files(model, processor, files, out, world, settings, True)
    return {k: round(v, 4) for k, v in metrics.items() if "/accuracy" in k}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", type=Path, default=Path("runs/demo"), help="a finished graft demo folder")
    parser.add_argument("--out", type=Path, default=Path("runs/perception_warmup"))
    parser.add_argument("--warmup-steps", type=int, default=600, help="warm-up steps of 16 questions")
    parser.add_argument("--steps", type=int, default=150, help="yes/no steps of 16 questions, each arm")
    parser.add_argument(
        "--attribute", choices=("color", "shape"), default="color", help="what the warm-up asks"
    )
    parser.add_argument("--limit", type=int, default=400, help="held-out questions per file")
    args = parser.parse_args()
    configure_logging()
    world, stage1 = args.demo / "world", args.demo / "stage1"
    if not (stage1 / "config.json").exists():
        parser.error(f"{stage1}: no stage-1 model; run graft demo first")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "warmup.json": question_training_records(presence_questions(world, "train", args.attribute)),
        "yesno.json": text_question_records(world, family="binary", with_image=True),
    }
    for name, records in files.items():
        write_text_atomic(out / name, json.dumps(records))
    held_out = out / "presence_test.jsonl"
    rows = presence_questions(world, "test", args.attribute)
    write_text_atomic(held_out, "".join(json.dumps(row) + "\n" for row in rows))

    recipe, warm_s = _train(args.demo, stage1, out / "warmup.json", out / "warmup", args.warmup_steps)
    bf16 = recipe.precision == "bf16"
    _, after_s = _train(args.demo, out / "warmup", out / "yesno.json", out / "yesno_after_warmup", args.steps)
    _, control_s = _train(args.demo, stage1, out / "yesno.json", out / "yesno_from_stage1", args.steps)
    binary = world / "eval" / "binary.jsonl"
    row: dict[str, Any] = {
        "attribute": args.attribute,
        "warmup": {
            "steps": args.warmup_steps,
            "seconds": warm_s,
            "loss_every_10_steps": _losses(out / "warmup"),
        },
        "warmup_scores": _score(out / "warmup", [held_out], world, out / "eval_warmup", args.limit, bf16),
        "yesno_steps": args.steps,
    }
    for arm, seconds in (("yesno_after_warmup", after_s), ("yesno_from_stage1", control_s)):
        row[arm] = {"seconds": seconds, "loss_every_10_steps": _losses(out / arm)}
        row[arm] |= _score(out / arm, [binary], world, out / f"eval_{arm}", args.limit, bf16)
    print(json.dumps(row))


if __name__ == "__main__":
    main()
