"""What perfect perception would buy the demo: its stage 2, on text.

Trains the demo's stage-2 recipe (``shapes-stage2``: same LLM start, template, learning rate,
top layers, batch and steps) on the world's multi-question records with each image replaced by
the scene's exact symbolic description (captions and boxes), then answers the held-out binary
and multiple-choice questions with that description in place of the image. The numbers are a
ceiling for the seeing demo at the same budget: an image can at best tell the LLM what the
description tells it.

    python benchmarks/text_ceiling.py --demo runs/demo --out runs/text_ceiling   # the demo's 80 steps
    python benchmarks/text_ceiling.py --demo runs/demo --out runs/text_ceiling320 --steps 320
    python benchmarks/text_ceiling.py --demo runs/demo --out runs/text_mcq --family mcq --brief --steps 300

``--family`` trains on that family's questions alone, one question per record (can the LLM learn
that answer format at all, given the samples?); ``--brief`` cuts the description to the one
sentence naming every object's size, colour, shape and place, in training and in scoring.

``--demo`` is a finished ``graft demo --alignment captions`` folder (its ``world`` and ``stage1``).
Prints one JSON line: the steps, training samples seen, training seconds (null when a model in
``--out`` is reused), ``{binary,mcq}/accuracy_text`` and the same per question type.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from graft.files import write_text_atomic
from graft.inference import load_for_inference
from graft.logs import configure_logging
from graft.train import load_recipe, train
from graft.train.recipe import packaged_recipe
from graft.world.diagnostics import QUESTION_FAMILIES, text_question_records, text_upper_bound


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", type=Path, default=Path("runs/demo"), help="a finished graft demo folder")
    parser.add_argument("--out", type=Path, default=Path("runs/text_ceiling"))
    parser.add_argument("--steps", type=int, default=None, help="stage-2 steps (default: the recipe's)")
    parser.add_argument("--limit", type=int, default=200, help="held-out questions per family")
    parser.add_argument("--family", choices=QUESTION_FAMILIES, help="train on this family's questions only")
    parser.add_argument("--brief", action="store_true", help="a one-sentence description")
    args = parser.parse_args()
    configure_logging()

    world, stage1 = args.demo / "world", args.demo / "stage1"
    if not (stage1 / "config.json").exists():
        parser.error(f"{stage1}: no stage-1 model; run graft demo first")
    args.out.mkdir(parents=True, exist_ok=True)
    records = args.out / "text_records.json"
    write_text_atomic(records, json.dumps(text_question_records(world, brief=args.brief, family=args.family)))
    overrides = {
        "model.init_from": str(stage1),
        "data.train": [str(records)],
        "data.image_root": str(world),
        "feature_cache.enabled": False,  # no images
        "output_dir": str(args.out / "model"),
        "resume": True,
    }
    if args.steps is not None:
        overrides["max_steps"] = args.steps
    recipe = load_recipe(packaged_recipe("shapes-stage2"), overrides)
    seconds = None  # a model already trained in --out is reused, not timed
    if not (args.out / "model" / "config.json").exists():
        began = time.perf_counter()
        train(recipe)
        seconds = round(time.perf_counter() - began, 1)
    model, processor = load_for_inference(args.out / "model", recipe.precision == "bf16")
    scores = text_upper_bound(model, processor, world, args.limit, brief=args.brief, per_type=True)
    row = {
        "steps": recipe.max_steps,
        "samples": recipe.max_steps * recipe.batch_size,
        "train_seconds": seconds,
        "family": args.family or "all",
        "brief": args.brief,
    }
    print(json.dumps(row | scores))


if __name__ == "__main__":
    main()
