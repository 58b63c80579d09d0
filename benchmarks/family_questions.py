"""One question family asked many times: a per-type accuracy that a few questions cannot give.

The demo's held-out files draw a family at random per question, so a rare one is asked rarely
(multiple-choice position: 15 of 200 questions in seed 0's world, where one question moves the
accuracy by 0.067). This asks ``--per-image`` yes/no (answered yes and no in turn) and
multiple-choice questions of ``--family`` about every held-out test image, in the world's own
wording (``graft.world.questions``), and answers them with the images and blind:

    python benchmarks/family_questions.py --model runs/demo/stage2 --world runs/demo/world

Prints one JSON line: ``{binary,mcq}/accuracy``, ``_blind`` and ``/n``, the chance levels, and
how often a yes/no reply (with the images) names what decides it as the scene does
(``binary/seen_exact``: "red circle 2 1, blue square 4 1: row 2, row 4: above" before ", so
yes"); for position also each object's digit alone on the axis named (``binary/seen_first``,
``binary/seen_second``: the first object's row or column, the second's; chance about 1 in 4 each).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
from pathlib import Path

from graft.eval.questions import evaluate_question_files
from graft.eval.settings import EvalSettings
from graft.files import write_text_atomic
from graft.inference import load_for_inference
from graft.logs import configure_logging
from graft.world.diagnostics import heldout_scenes
from graft.world.questions import FAMILIES, mcq, seen_of, yesno
from graft.world.scene import Scene


def family_questions(world: Path, family: str, per_image: int) -> dict[str, list[dict]]:
    """``binary`` and ``mcq`` records of ``family`` about every test image, each question once."""
    out: dict[str, list[dict]] = {"binary": [], "mcq": []}
    for iid, row in heldout_scenes(world).items():
        scene, asked = Scene.from_dict(row["scene"]), set()
        for k in range(per_image):
            rng = random.Random(f"{family}-{iid}-{k}")
            asks = (("binary", yesno(scene, rng, k % 2 == 0, family)), ("mcq", mcq(scene, rng, family)))
            for name, qa in asks:
                if qa is None or (name, qa.question) in asked:
                    continue
                asked.add((name, qa.question))
                extra = {"choices": qa.choices} if qa.choices else {"seen": qa.seen} if qa.seen else {}
                out[name].append(
                    {"id": f"{iid}-{name}{k}", "image": row["image"], "question": qa.question}
                    | {"answer": qa.answer, "qtype": family}
                    | extra
                )
    return out


def _axis_digits(text: str) -> list[str]:
    """The two digits of the last "row r, row s" (or "column c, column d") in a reply."""
    found = re.findall(r"(?:row|column) (\d), (?:row|column) (\d)", text)
    return list(found[-1]) if found else []


def seen_scores(rows: list[dict], predictions: dict[str, str], digits: bool) -> dict[str, float]:
    """How often the replies to yes/no ``rows`` name their row's ``seen`` exactly, and with
    ``digits`` how often their first and their second digit are the ``seen`` value's."""
    asked = [(row["seen"], seen_of(predictions[row["id"]]) or "") for row in rows if row.get("seen")]
    n = max(len(asked), 1)
    out = {"binary/seen_exact": sum(said == truth for truth, said in asked) / n}
    if digits:
        pairs = [(_axis_digits(truth), _axis_digits(said)) for truth, said in asked]
        for i, name in enumerate(("first", "second")):
            right = sum(len(t) > i and len(s) > i and t[i] == s[i] for t, s in pairs)
            out[f"binary/seen_{name}"] = right / n
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a trained graft model folder")
    parser.add_argument("--world", type=Path, required=True, help="the world it was trained on")
    parser.add_argument("--family", choices=FAMILIES, default="position")
    parser.add_argument("--per-image", type=int, default=2, help="questions of each format per image")
    parser.add_argument("--out", type=Path, default=None, help="default: MODEL/../family_{FAMILY}")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the questions task's")
    args = parser.parse_args()
    configure_logging()
    out = args.out or args.model.parent / f"family_{args.family}"
    files = []
    for name, rows in family_questions(args.world, args.family, args.per_image).items():
        path = out / f"{name}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))
        files.append(path)
    shutil.rmtree(out / "answers", ignore_errors=True)  # another model's answers must not be resumed
    model, processor = load_for_inference(args.model, bf16=True)
    settings = EvalSettings(batch_size=32, max_new_tokens=args.max_new_tokens)
    metrics = evaluate_question_files(model, processor, files, out / "answers", args.world, settings)
    answers = out / "answers" / "binary" / "predictions.jsonl"
    said = {r["id"]: r["prediction"] for r in map(json.loads, answers.read_text().splitlines())}
    rows = [json.loads(line) for line in (out / "binary.jsonl").read_text().splitlines()]
    metrics |= seen_scores(rows, said, digits=args.family == "position")
    keep = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items() if "qtype/" not in k}
    print(json.dumps({"family": args.family, **keep, "chance": {"binary": 0.5, "mcq": 0.25}}))


if __name__ == "__main__":
    main()
