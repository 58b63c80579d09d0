"""Does answering the longest prompts first pay? The demo's held-out evaluation, both orders, one run.

A batch decodes until its longest answer ends. In the shapes world the long questions (position,
with two objects named) ask for the long answers, so batches of like prompt length
(``EvalSettings.by_length``, the default) end together, where batches in file order almost all
hold one long answer. This answers the world's held-out yes/no and multiple-choice files with the
images, in file order and longest first (twice each, alternating, so a machine that slows down
mid-run does not favour one side), and prints one JSON line: each side's seconds (the faster of
its two runs), their ratio, each side's accuracies and how many answers differ between the orders
(none in exact arithmetic; bf16 rounding can move a near tie).

    python benchmarks/eval_order.py --model runs/demo/stage2 --world runs/demo/world
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from graft.eval.questions import evaluate_question_files
from graft.eval.settings import EvalSettings
from graft.inference import load_for_inference
from graft.record_files import iter_jsonl
from graft.report.demo import CHANCE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=Path("runs/demo/stage2"))
    parser.add_argument("--world", type=Path, default=Path("runs/demo/world"))
    parser.add_argument("--limit", type=int, default=200, help="questions per file")
    parser.add_argument("--batch-size", type=int, default=32, help="the demo's evaluation batch")
    parser.add_argument("--fp32", action="store_true", help="skip bf16 even where the CPU has it")
    args = parser.parse_args()

    model, processor = load_for_inference(args.model, not args.fp32)
    files = [args.world / "eval" / f"{family}.jsonl" for family in CHANCE]
    seconds: dict[str, float] = {}
    metrics: dict[str, dict[str, float]] = {}
    answers: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(2):
            for side, by_length in (("file_order", False), ("by_length", True)):
                out = Path(tmp) / f"{side}{repeat}"
                settings = EvalSettings(
                    limit=args.limit, batch_size=args.batch_size, progress=False, by_length=by_length
                )
                start = time.perf_counter()
                result = evaluate_question_files(
                    model, processor, files, out, args.world, settings, blind=False
                )
                took = time.perf_counter() - start
                seconds[side] = min(seconds.get(side, took), took)
                metrics[side] = {k: v for k, v in result.items() if k.count("/") == 1 and "accuracy" in k}
                answers[side] = {
                    f"{f.stem}/{row['id']}": row["prediction"]
                    for f in files
                    for row, _ in iter_jsonl(out / f.stem / "predictions.jsonl")
                }
    differ = sum(answers["file_order"][k] != answers["by_length"].get(k) for k in answers["file_order"])
    print(
        json.dumps(
            {
                "questions": len(answers["file_order"]),
                "file_order_s": round(seconds["file_order"], 1),
                "by_length_s": round(seconds["by_length"], 1),
                "speedup": round(seconds["file_order"] / seconds["by_length"], 2),
                "accuracy": metrics,
                "answers_differ": differ,
            }
        )
    )


if __name__ == "__main__":
    main()
