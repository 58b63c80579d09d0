"""Multiple-choice and yes/no benchmark files of the shapes world, in the real layouts:

  mmbench/shapes_mmbench_dev.tsv              MMBench dev TSV, circular copies  (mmbench)
  scienceqa/llava_test_CQM-A.json + images/   ScienceQA-IMG, LLaVA's form       (scienceqa_img)
  binary/shapes_binary_test.jsonl + images/   yes/no of every question type     (pope)

Questions come from the world's own generators (``questions.py``), one per test image, each
with its own seeded generator: worded as in training, about images training never saw.

MMBench: the columns of the real dev TSV (``index, question, hint, A-D, answer, category, image,
source, l2-category, comment, split``), the picture inline as base64 PNG. After the questions
come their circular copies (options rotated by k = 1..3, the answer letter moved with them) at
``index + k * 1e6``; a copy's ``image`` holds the index of the row with the picture, as the
VLMEvalKit files do, so ``index % 1e6`` groups the four for circular evaluation.

ScienceQA: LLaVA's converted records (``<image>\\nContext: ...\\nquestion\\nA. ...\\nAnswer with
the option's letter ...`` then ``The answer is X.``), with 2-4 options as ScienceQA varies them.

Binary: LLaVA's merged POPE form; ``"category"`` names the question type (existence, color,
shape, count, position), so the POPE scorer reports each type as a split. Each image gives one
yes and one no question of the same type, so every type is exactly 50/50; the type is the one
asked least so far among those the scene can ask, so the types come out about equally often.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import random
from pathlib import Path

from graft.files import write_text_atomic

from .bench_files import jsonl, place_image
from .instructions import IMAGE
from .questions import FAMILIES, LETTERS, MCQ_SUFFIX, QA, sample_qa, yesno
from .scene import Scene

CIRCULAR_STRIDE = 1_000_000
MMBENCH_COLUMNS = (
    "index",
    "question",
    "hint",
    *LETTERS,
    "answer",
    "category",
    "image",
    "source",
    "l2-category",
    "comment",
    "split",
)
# MMBench's level-2 abilities: one object's attributes vs relations between objects
L2_CATEGORY = {
    "existence": "finegrained_perception (instance-level)",
    "color": "finegrained_perception (instance-level)",
    "shape": "finegrained_perception (instance-level)",
    "count": "finegrained_perception (instance-level)",
    "position": "finegrained_perception (cross-instance)",
}


def _stem(qa: QA) -> str:
    """The question alone: `mcq` puts the options and the letter suffix on the following lines."""
    return qa.question.split("\n", 1)[0]


def write_mmbench(world: Path, rows: list[dict], out: Path, seed: int) -> tuple[Path, int]:
    """One 4-way question per test image plus its 3 circular copies; returns (path, questions)."""
    questions = []
    for i, row in enumerate(rows):
        scene = Scene.from_dict(row["scene"])
        qa = sample_qa(scene, random.Random(f"mmbench-{seed}-{row['id']}"), "mcq")
        encoded = base64.b64encode((world / row["image"]).read_bytes()).decode("ascii")
        questions.append((i, qa, encoded))
    buf = io.StringIO()
    # tab-separated, minimal quoting, "\n" line ends: what pandas' to_csv(sep="\t") writes
    writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
    writer.writerow(MMBENCH_COLUMNS)
    for k in range(len(LETTERS)):
        for i, qa, encoded in questions:
            choices = qa.choices or []
            rotated = choices[k:] + choices[:k]  # rotated[j] = choices[(j + k) % n]
            answer = LETTERS[(LETTERS.index(qa.answer) - k) % len(choices)]
            image = encoded if k == 0 else str(i)
            l2 = L2_CATEGORY[qa.qtype]
            writer.writerow(
                [i + k * CIRCULAR_STRIDE, _stem(qa), "", *rotated, answer, qa.qtype, image]
                + ["shapes_world", l2, "", "dev"]
            )
    path = out / "shapes_mmbench_dev.tsv"
    write_text_atomic(path, buf.getvalue())
    return path, len(questions)


def write_scienceqa(world: Path, rows: list[dict], out: Path, seed: int) -> tuple[Path, int]:
    """One question per test image with 2-4 of its options kept; returns (path, questions)."""
    records = []
    for row in rows:
        scene = Scene.from_dict(row["scene"])
        rng = random.Random(f"scienceqa-{seed}-{row['id']}")
        qa = sample_qa(scene, rng, "mcq")
        choices = qa.choices or []
        right = LETTERS.index(qa.answer)
        n = rng.choice((2, 3, 4))
        keep = sorted([right, *rng.sample([j for j in range(len(choices)) if j != right], n - 1)])
        kept = [choices[j] for j in keep]
        letter = LETTERS[keep.index(right)]
        options = "\n".join(f"{LETTERS[j]}. {c}" for j, c in enumerate(kept))
        image = f"{row['id']}.png"
        question = f"{IMAGE}\nContext: N/A\n{_stem(qa)}\n{options}{MCQ_SUFFIX}"
        records.append(
            {
                "id": row["id"],
                "image": image,
                "conversations": [
                    {"from": "human", "value": question},
                    {"from": "gpt", "value": f"The answer is {letter}."},
                ],
            }
        )
        place_image(world / row["image"], out / "images" / image)
    path = out / "llava_test_CQM-A.json"
    write_text_atomic(path, json.dumps(records, indent=1))
    return path, len(records)


def write_binary(world: Path, rows: list[dict], out: Path, seed: int) -> tuple[Path, dict[str, int]]:
    """A yes and a no question per test image, question types balanced; returns (path, per type)."""
    lines: list[dict] = []
    counts = {f: 0 for f in FAMILIES}
    for row in rows:
        scene = Scene.from_dict(row["scene"])
        rng = random.Random(f"binary-{seed}-{row['id']}")
        pairs = {}
        for family in FAMILIES:
            yes, no = yesno(scene, rng, True, family), yesno(scene, rng, False, family)
            if yes is not None and no is not None:
                pairs[family] = [yes, no]
        # the type asked least so far among those this scene can ask (existence always can), so
        # the rarer types (shape needs an object named without its shape) get their share
        pair = pairs[min(pairs, key=lambda f: counts[f])]
        rng.shuffle(pair)
        for qa in pair:
            lines.append(
                {
                    "question_id": len(lines) + 1,
                    "image": f"{row['id']}.png",
                    "text": qa.question,
                    "label": qa.answer.lower(),
                    "category": qa.qtype,
                }
            )
            counts[qa.qtype] += 1
        place_image(world / row["image"], out / "images" / f"{row['id']}.png")
    path = out / "shapes_binary_test.jsonl"
    write_text_atomic(path, jsonl(lines))
    return path, counts
