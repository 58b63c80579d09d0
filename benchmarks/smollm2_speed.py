"""Samples/s of the demo's phases with SmolLM2-135M on this machine, with and without each speed
lever, in one run: stage 1 (connector only, plain template), the perception warm-up (its records
from ``--perceive``), stage 2 (instruction tuning) and evaluation (greedy short answers).

Every training configuration runs the same batches of the world's own data, with the vision
features computed once beforehand (the training loop's feature cache does the same), for
``--warmup`` untimed and ``--steps`` timed optimizer steps (forward, backward, AdamW). Each line
gives samples/s and the speed-up over the first configuration of its phase.

    python benchmarks/smollm2_speed.py --model runs/demo/stage1 --world runs/demo/world

``--model`` is a graft folder grafted onto SmolLM2 (``runs/demo/composed``, or ``stage1`` of a
``graft demo --alignment captions`` run). ``--only warm-up --model runs/demo/ground`` times the
warm-up as the demo runs it, ``--only "top 15" --model runs/demo/perceive`` stage 2.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from graft.data import LlavaDataset, TrainCollator
from graft.data.sampler import GroupedBatchSampler
from graft.eval.readers.questions import read_questions
from graft.generate import generate_answers
from graft.modeling import GraftForConditionalGeneration
from graft.packing import PACKED_KEYS, enable_packing
from graft.processing import GraftProcessor, load_image
from graft.templates import Message
from graft.train.recipe import recipe_from_dict
from graft.train.stages import apply_stage, compile_decoder_layers, param_groups

#: the demo's stage 2: the top 15 of SmolLM2's 30 layers learn, the connector is frozen
DEMO_STAGE2 = {"connector": {"mode": "frozen"}, "llm": {"mode": "full", "top_layers": 15}}
#: the demo's perception warm-up: the top 10 layers learn
DEMO_PERCEIVE = {"connector": {"mode": "frozen"}, "llm": {"mode": "full", "top_layers": 10}}
CONNECTOR = {"connector": {"mode": "full"}}
FULL_LLM = {"llm": {"mode": "full"}}


@dataclass(frozen=True)
class Case:
    """One training configuration; the first case of each stage is its baseline."""

    name: str
    stage: str  # stage1 | perceive | stage2: whose data it trains on
    components: dict
    bf16: bool = True
    label_only: bool = True
    packed: bool = False
    shared_prefix: bool = False
    compiled: bool = False


TRAIN_CASES = [
    Case("stage 1: fp32, full logits", "stage1", CONNECTOR, bf16=False, label_only=False),
    Case("stage 1: bf16 autocast", "stage1", CONNECTOR, label_only=False),
    Case("stage 1: bf16 + label-only logits", "stage1", CONNECTOR),
    Case("warm-up: bf16 + label-only + top 10 layers (demo)", "perceive", DEMO_PERCEIVE),
    Case("warm-up: the same + shared prefix", "perceive", DEMO_PERCEIVE, shared_prefix=True),
    Case("stage 2: fp32, full logits, full LLM", "stage2", FULL_LLM, bf16=False, label_only=False),
    Case("stage 2: bf16 autocast", "stage2", FULL_LLM, label_only=False),
    Case("stage 2: bf16 + label-only logits", "stage2", FULL_LLM),
    Case(
        "stage 2: bf16 + label-only + LoRA r=64 (connector learns)",
        "stage2",
        {"llm": {"mode": "lora", "lora": {"r": 64, "alpha": 128}}},
    ),
    Case(
        "stage 2: bf16 + label-only + top 10 layers (connector frozen)",
        "stage2",
        {"connector": {"mode": "frozen"}, "llm": {"mode": "full", "top_layers": 10}},
    ),
    Case("stage 2: fp32 + label-only + top 15 layers (demo, fp32)", "stage2", DEMO_STAGE2, bf16=False),
    Case(
        "stage 2: fp32 + label-only + top 15 layers, packed", "stage2", DEMO_STAGE2, bf16=False, packed=True
    ),
    Case("stage 2: bf16 + label-only + top 15 layers (demo, bf16)", "stage2", DEMO_STAGE2),
    Case("stage 2: bf16 + label-only + top 15 layers, packed", "stage2", DEMO_STAGE2, packed=True),
    Case(
        "stage 2: bf16 + label-only + top 15 layers + shared prefix",
        "stage2",
        DEMO_STAGE2,
        shared_prefix=True,
    ),
]
#: cases run again with every decoder layer under ``torch.compile(dynamic=True)`` (first pass:
#: compilation, untimed with the warm-up steps); without the shared prefix, as the training loop
#: runs compiled layers (``graft.train.loop.may_share_prefix``)
COMPILED = (
    "warm-up: bf16 + label-only + top 10 layers (demo)",
    "stage 2: fp32 + label-only + top 15 layers (demo, fp32)",
    "stage 2: bf16 + label-only + top 15 layers (demo, bf16)",
)


def batches(args, stage: str, count: int, model, packed: bool) -> list[dict]:
    template = "plain" if stage == "stage1" else "smollm2"
    processor = GraftProcessor.from_pretrained(args.model, template=template)
    data = args.perceive if stage == "perceive" else args.world / f"{stage}.json"
    dataset = LlavaDataset([str(data)], str(args.world), processor)
    collate = TrainCollator(processor.tokenizer.pad_token_id, packed=packed)
    # the training loop's batches: one modality each, samples of similar length together
    order = GroupedBatchSampler(dataset.lengths, dataset.has_image, args.batch_size, packed=packed)
    out = []
    with torch.no_grad():
        for indices in itertools.islice(order, count):
            batch = collate([dataset[i] for i in indices])
            keep = ("input_ids", "attention_mask", "labels", "position_ids", *PACKED_KEYS)
            inputs = {k: batch[k] for k in keep if k in batch}
            inputs["vision_features"] = model.select_vision_features(batch["pixel_values"])
            out.append(inputs)
    return out


def time_training(args, case: Case) -> float:
    model = GraftForConditionalGeneration.from_pretrained(args.model, dtype=torch.float32)
    if case.compiled:
        compile_decoder_layers(model)  # what a recipe's compile: true does
    if case.packed:
        enable_packing(model, torch.device("cpu"))
    recipe = recipe_from_dict(
        {"model": {"init_from": str(args.model)}, "data": {"train": ["-"]}, **case.components},
        source="benchmark",
    )
    apply_stage(model, recipe)
    model.train()
    model.vision_tower.eval()
    data = batches(args, case.stage, args.warmup + args.steps, model, case.packed)
    optimizer = torch.optim.AdamW(param_groups(model, recipe), lr=1e-5)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if case.bf16 else contextlib.nullcontext()
    for i, inputs in enumerate(data):
        if i == args.warmup:
            start = time.perf_counter()
        with autocast:
            loss = model(
                **inputs,
                use_cache=False,
                supervised_logits_only=case.label_only,
                share_prefix=case.shared_prefix,
            ).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return args.steps * args.batch_size / (time.perf_counter() - start)


def time_eval(args, batch_size: int, bf16: bool) -> float:
    model = GraftForConditionalGeneration.from_pretrained(args.model, dtype=torch.float32).eval()
    processor = GraftProcessor.from_pretrained(args.model, template="smollm2")
    questions = read_questions(args.world / "eval" / "binary.jsonl", args.world).samples[
        : args.eval_questions
    ]
    convs = [[Message("user", f"{processor.image_token}\n{q.meta['question']}")] for q in questions]
    images = [[load_image(q.images[0])] for q in questions]
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    start = time.perf_counter()
    with autocast:
        generate_answers(model, processor, convs, images, max_new_tokens=8, batch_size=batch_size)
    return len(questions) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--world", type=Path, required=True)
    parser.add_argument(
        "--perceive", type=Path, default=None, help="The warm-up's records (default: WORLD/../perceive.json)."
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--eval-questions", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--only", default="", help="Run only the cases whose name contains this text.")
    args = parser.parse_args()
    args.perceive = args.perceive or args.world.parent / "perceive.json"
    if args.threads:
        torch.set_num_threads(args.threads)
    results: dict[str, float] = {}
    base: dict[str, float] = {}
    cases = TRAIN_CASES + [
        replace(c, name=f"{c.name}, compiled layers", compiled=True)
        for c in TRAIN_CASES
        if c.name in COMPILED
    ]
    for case in cases:
        if args.only not in case.name:
            continue
        rate = time_training(args, case)
        base.setdefault(case.stage, rate)
        results[case.name] = rate
        print(f"{case.name:70s} {rate:7.2f} samples/s  x{rate / base[case.stage]:.2f}", flush=True)
    for name, batch_size, bf16 in (
        ("eval: batch 1, fp32", 1, False),
        ("eval: batch 32, fp32", 32, False),
        ("eval: batch 32, bf16 autocast", 32, True),
    ):
        if args.only not in name:
            continue
        rate = time_eval(args, batch_size, bf16)
        base.setdefault("eval", rate)
        results[name] = rate
        print(f"{name:70s} {rate:7.2f} questions/s  x{rate / base['eval']:.2f}", flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
