"""Held-out benchmark files in real formats, from a world's TEST split only.

``graft eval --bench WORLD/bench`` then exercises every reader and scorer on real files. The
manifest ``bench/bench.json`` names each run: ``"tasks": {run: {"task": registered task,
"path": file or folder relative to bench/}}``:

  run            task           path
  coco_caption   coco_caption   coco/captions_test.json + images/         COCO caption annotations
  mme            mme            mme/{existence,count,position,color}/     {stem}.png + .txt pairs
  pope           pope           pope/coco_pope_{random,popular,adversarial}.json + images/
  binary         pope           binary/shapes_binary_test.jsonl + images/ yes/no, type per category
  mmbench        mmbench        mmbench/shapes_mmbench_dev.tsv            base64 images, circular
  scienceqa_img  scienceqa_img  scienceqa/llava_test_CQM-A.json + images/ LLaVA's converted form
  llava_bench    llava_bench    llava_bench/questions|context|answers_gpt4.jsonl + images/
  demon          demon          demon/Shapes_{WhichImage,Difference,SequenceCloze,InContext}/core/

(multiple choice and binary: bench_choice.py; DEMON tasks: bench_demon.py)

A POPE "object" is a colour-shape category ("red circle"): 20 of them, as COCO has 80. Splits
follow POPE: random negatives are any absent category; popular ones the most frequent
categories of the test split; adversarial ones those co-occurring most with the present ones.
Every split is 50/50 yes/no by construction (as many negatives as positives per image).

Every file is written to a temporary name and renamed; ``bench/bench.json`` is written last, so
its presence (with the same version, seed and test split) means the work is done and a rerun
skips it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from collections import Counter
from itertools import combinations
from pathlib import Path

from graft.files import write_text_atomic

from .bench_choice import write_binary, write_mmbench, write_scienceqa
from .bench_demon import write_demon
from .bench_files import jsonl, place_image
from .describe import boxes, detailed_description
from .instructions import DETAIL_PROMPTS, conversation, reasoning
from .questions import SEEN_SUFFIX, yesno
from .scene import COLORS, SHAPES, Scene

BENCH_VERSION = "bench-3"  # 2: runs {task, path}; binary, mmbench, scienceqa, 2 DEMON tasks
# 3: position MCQs with one true option, counts asked alike for yes and no, DEMON options unleaky
MME_SUBTASKS = ("existence", "count", "position", "color")
MME_SUFFIX = " Please answer yes or no."
POPE_PER_IMAGE = 3  # POPE samples 3 ground-truth objects per image, and as many negatives
LLAVA_BENCH_IMAGES = 30  # LLaVA-Bench (COCO) has 30 images x 3 questions


def _load_test(world: Path) -> list[dict]:
    path = world / "meta" / "test.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no test split metadata (build the world first)")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _coco(world: Path, rows: list[dict], out: Path) -> Path:
    images, annotations = [], []
    for row in rows:
        image_id = int(row["id"])
        size = row["scene"]["image_size"]
        images.append({"id": image_id, "file_name": f"{row['id']}.png", "height": size, "width": size})
        for cap in row["captions"]:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "caption": cap})
        place_image(world / row["image"], out / "images" / f"{row['id']}.png")
    path = out / "captions_test.json"
    write_text_atomic(
        path,
        json.dumps(
            {
                "info": {"description": "shapes world test captions"},
                "images": images,
                "annotations": annotations,
            }
        ),
    )
    return path


def _mme_question(qa_text: str) -> str:
    # MME's own wording: the question, then "Please answer yes or no."
    return qa_text.removesuffix(SEEN_SUFFIX) + MME_SUFFIX


def _mme(world: Path, rows: list[dict], out: Path, seed: int) -> tuple[Path, dict[str, int]]:
    counts = {}
    for sub in MME_SUBTASKS:
        n = 0
        for row in rows:
            scene = Scene.from_dict(row["scene"])
            rng = random.Random(f"mme-{seed}-{sub}-{row['id']}")
            yes, no = yesno(scene, rng, True, sub), yesno(scene, rng, False, sub)
            if yes is None or no is None:
                continue  # e.g. no position question in a one-object scene
            pair = [(yes.question, "Yes"), (no.question, "No")]
            rng.shuffle(pair)
            text = "".join(f"{_mme_question(q)}\t{a}\n" for q, a in pair)
            write_text_atomic(out / sub / f"{row['id']}.txt", text)
            place_image(world / row["image"], out / sub / f"{row['id']}.png")
            n += 1
        counts[sub] = n
    return out, counts


def _pope(world: Path, rows: list[dict], out: Path, seed: int) -> tuple[Path, dict[str, int]]:
    categories = [f"{c} {s}" for c in COLORS for s in SHAPES]
    present = [sorted({f"{o['color']} {o['shape']}" for o in r["scene"]["objects"]}) for r in rows]
    # POPE's statistics: how many images hold each category, and each pair of categories together
    freq = Counter(c for p in present for c in p)
    co = Counter(frozenset(pair) for p in present for pair in combinations(p, 2))
    files, counts = {}, {}
    for split in ("random", "popular", "adversarial"):
        lines = []
        for row, objs in zip(rows, present, strict=True):
            rng = random.Random(f"pope-{seed}-{split}-{row['id']}")
            pos = rng.sample(objs, min(POPE_PER_IMAGE, len(objs)))
            absent = [c for c in categories if c not in objs]
            if split == "random":
                neg = rng.sample(absent, len(pos))
            elif split == "popular":
                neg = sorted(absent, key=lambda c: (-freq[c], c))[: len(pos)]
            else:
                score = {c: sum(co[frozenset((c, p))] for p in objs) for c in absent}
                neg = sorted(absent, key=lambda c: (-score[c], c))[: len(pos)]
            qs = [(c, "yes") for c in pos] + [(c, "no") for c in neg]
            for cat, label in qs:
                lines.append(
                    {
                        "question_id": len(lines) + 1,
                        "image": f"{row['id']}.png",
                        "text": f"Is there a {cat} in the image?",
                        "label": label,
                    }
                )
        path = out / f"coco_pope_{split}.json"
        write_text_atomic(path, jsonl(lines))
        files[split], counts[split] = path, len(lines)
    for row in rows:
        place_image(world / row["image"], out / "images" / f"{row['id']}.png")
    return out, counts


def _llava_bench(world: Path, rows: list[dict], out: Path, seed: int) -> tuple[Path, int]:
    questions, contexts, answers = [], [], []
    for row in rows[:LLAVA_BENCH_IMAGES]:
        scene = Scene.from_dict(row["scene"])
        rng = random.Random(f"llava-bench-{seed}-{row['id']}")
        name = f"{row['id']}.png"
        conv_q, conv_a = conversation(scene, rng)[0]
        items = [
            ("conv", conv_q, conv_a),
            ("detail", rng.choice(DETAIL_PROMPTS), detailed_description(scene, rng)),
            ("complex", *reasoning(scene, rng)),
        ]
        for category, q, a in items:
            qid = len(questions)
            questions.append({"question_id": qid, "image": name, "text": q, "category": category})
            answers.append({"question_id": qid, "text": a})
        instances = [{"category": c, "bbox": b} for c, b in boxes(scene)]
        contexts.append({"image": name, "captions": row["captions"], "instances": instances})
        place_image(world / row["image"], out / "images" / name)
    write_text_atomic(out / "questions.jsonl", jsonl(questions))
    write_text_atomic(out / "context.jsonl", jsonl(contexts))
    write_text_atomic(out / "answers_gpt4.jsonl", jsonl(answers))
    return out, len(questions)


def write_benchmarks(world_dir: str | os.PathLike, seed: int = 0) -> dict[str, dict[str, str]]:
    """Write the held-out benchmark files under ``world_dir/bench``; returns run name ->
    ``{"task": registered task name, "path": absolute path}`` (``bench/bench.json`` holds the
    same with paths relative to ``bench/``, for ``graft eval --bench``). Skips the work when it
    is already done for this test split and seed; a run with no sample (a tiny test split) is
    left out."""
    world = Path(world_dir)
    bench = world / "bench"
    manifest_path = bench / "bench.json"
    test_path = world / "meta" / "test.jsonl"
    if not test_path.is_file():
        raise FileNotFoundError(f"{test_path}: no test split metadata (build the world first)")
    # keyed on the test split's content: a world rebuilt in place with other args gets new files
    test_hash = hashlib.sha256(test_path.read_bytes()).hexdigest()[:16]
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text(encoding="utf-8"))
        if (old.get("version"), old.get("seed"), old.get("test_hash")) == (BENCH_VERSION, seed, test_hash):
            return _absolute(bench, old["tasks"])
    if bench.exists():
        shutil.rmtree(bench)  # stale: images of the same name may show other scenes now
    rows = _load_test(world)
    counts: dict[str, object] = {}
    runs: dict[str, tuple[str, Path]] = {}
    if rows:
        runs["coco_caption"] = ("coco_caption", _coco(world, rows, bench / "coco"))
        path, counts["mme_images"] = _mme(world, rows, bench / "mme", seed)
        if any(counts["mme_images"].values()):
            runs["mme"] = ("mme", path)
        path, counts["pope_questions"] = _pope(world, rows, bench / "pope", seed)
        runs["pope"] = ("pope", path)
        path, counts["binary_questions"] = write_binary(world, rows, bench / "binary", seed)
        runs["binary"] = ("pope", path)
        path, counts["mmbench_questions"] = write_mmbench(world, rows, bench / "mmbench", seed)
        runs["mmbench"] = ("mmbench", path)
        path, counts["scienceqa_questions"] = write_scienceqa(world, rows, bench / "scienceqa", seed)
        runs["scienceqa_img"] = ("scienceqa_img", path)
        path, counts["llava_bench_questions"] = _llava_bench(world, rows, bench / "llava_bench", seed)
        runs["llava_bench"] = ("llava_bench", path)
        path, counts["demon_samples"] = write_demon(world, rows, bench / "demon", seed)
        if any(counts["demon_samples"].values()):
            runs["demon"] = ("demon", path)
    tasks = {
        run: {"task": task, "path": path.relative_to(bench).as_posix()} for run, (task, path) in runs.items()
    }
    manifest = {
        "version": BENCH_VERSION,
        "seed": seed,
        "test_hash": test_hash,
        "test_images": len(rows),
        "tasks": tasks,
        "counts": counts,
    }
    write_text_atomic(manifest_path, json.dumps(manifest, indent=2))
    return _absolute(bench, tasks)


def _absolute(bench: Path, tasks: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    return {run: {"task": t["task"], "path": str(bench / t["path"])} for run, t in tasks.items()}
