"""Held-out benchmark files in real formats, from a world's TEST split only.

`graft eval --task NAME=PATH` then exercises every reader and scorer on real files:

  bench/coco/captions_test.json + images/        COCO caption annotations     (coco_caption)
  bench/mme/{existence,count,position,color}/    MME pairs: {stem}.png + .txt (mme)
  bench/pope/coco_pope_{random,popular,adversarial}.json + images/           (pope)
  bench/llava_bench/questions|context|answers_gpt4.jsonl + images/           (llava_bench)
  bench/demon/Shapes_{WhichImage,Difference}/core/core.json + core/images/   (demon)

A POPE "object" is a colour-shape category ("red circle"): 20 of them, as COCO has 80. Splits
follow POPE: random negatives are any absent category; popular ones the most frequent
categories of the test split; adversarial ones those co-occurring most with the present ones.
Every split is 50/50 yes/no by construction (as many negatives as positives per image).

Every file is written to a temporary name and renamed; ``bench/bench.json`` is written last, so
its presence (with the same version and seed) means the work is done and a rerun skips it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from collections import Counter
from dataclasses import replace
from itertools import combinations
from pathlib import Path

from .describe import boxes, detailed_description
from .instructions import DETAIL_PROMPTS, conversation, reasoning
from .questions import SHORT_SUFFIX, yesno
from .scene import COLORS, SHAPES, Scene

BENCH_VERSION = "bench-1"
MME_SUBTASKS = ("existence", "count", "position", "color")
MME_SUFFIX = " Please answer yes or no."
POPE_PER_IMAGE = 3  # POPE samples 3 ground-truth objects per image, and as many negatives
LLAVA_BENCH_IMAGES = 30  # LLaVA-Bench (COCO) has 30 images x 3 questions


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def _place_image(src: Path, dst: Path) -> None:
    """A hard link when the filesystem allows (free), else a copy; atomic either way."""
    if dst.exists():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


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
        _place_image(world / row["image"], out / "images" / f"{row['id']}.png")
    path = out / "captions_test.json"
    _atomic_write(
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
    return qa_text.removesuffix(SHORT_SUFFIX) + MME_SUFFIX


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
            _atomic_write(out / sub / f"{row['id']}.txt", text)
            _place_image(world / row["image"], out / sub / f"{row['id']}.png")
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
        _atomic_write(path, _jsonl(lines))
        files[split], counts[split] = path, len(lines)
    for row in rows:
        _place_image(world / row["image"], out / "images" / f"{row['id']}.png")
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
        _place_image(world / row["image"], out / "images" / name)
    _atomic_write(out / "questions.jsonl", _jsonl(questions))
    _atomic_write(out / "context.jsonl", _jsonl(contexts))
    _atomic_write(out / "answers_gpt4.jsonl", _jsonl(answers))
    return out, len(questions)


def _demon_task(out: Path, name: str, qtype: str, instruction: str, data: list[dict]) -> None:
    meta = {"dataset": name, "split": "test", "num_sample": len(data), "task_instruction": [instruction]}
    doc = {"metadata": meta | {"question_type": qtype}, "data": data}
    _atomic_write(out / name / "core" / "core.json", json.dumps(doc, indent=1))


def _demon(world: Path, rows: list[dict], out: Path, seed: int) -> tuple[Path, dict[str, int]]:
    """Two multi-image tasks of our own naming (DEMON scores them under "Other"):
    which of 2-3 test scenes shows a category (image choice), and what changed between a scene
    and its re-render with one object recoloured (open-ended, ROUGE-L)."""
    which, diff = [], []
    for k, row in enumerate(rows):
        rng = random.Random(f"demon-{seed}-{row['id']}")
        # which-image: this scene and 1-2 other test scenes; the asked category is in this one only
        others = [r for r in rows if r is not row]
        group = [row, *rng.sample(others, min(len(others), rng.randint(1, 2)))]
        cats = [{f"{o['color']} {o['shape']}" for o in r["scene"]["objects"]} for r in group]
        only = sorted(cats[0] - set().union(*cats[1:]))
        if len(group) >= 2 and only:
            cat = rng.choice(only)
            order = list(range(len(group)))
            rng.shuffle(order)
            names = [f"{group[j]['id']}.png" for j in order]
            letters = "ABC"[: len(group)]
            context = "".join(f"Image {letters[i]}: {{image#{i + 1}}}\n" for i in range(len(group)))
            which.append(
                {
                    "sample_id": len(which),
                    "task_instruction_id": 0,
                    "task_instance": {
                        "context": context + f"Which image shows a {cat}?",
                        "images_path": names,
                        "choice_list": [f"Image {c}" for c in letters],
                    },
                    "response": f"Image {letters[order.index(0)]}",
                }
            )
            for j in order:
                _place_image(
                    world / group[j]["image"],
                    out / "Shapes_WhichImage" / "core" / "images" / names[order.index(j)],
                )
        # difference: recolour one object and render again
        scene = Scene.from_dict(row["scene"])
        i = rng.randrange(len(scene.objects))
        obj = scene.objects[i]
        new = rng.choice([c for c in COLORS if c != obj.color])
        edited = scene.with_objects(
            [replace(o, color=new) if j == i else o for j, o in enumerate(scene.objects)]
        )
        before, after = f"{row['id']}.png", f"{row['id']}_edit.png"
        img_dir = out / "Shapes_Difference" / "core" / "images"
        _place_image(world / row["image"], img_dir / before)
        if not (img_dir / after).exists():
            tmp = img_dir / (after + ".tmp")
            edited.render().save(tmp, format="PNG")
            os.replace(tmp, img_dir / after)
        diff.append(
            {
                "sample_id": k,
                "task_instruction_id": 0,
                "task_instance": {"context": "{image#1} {image#2}", "images_path": [before, after]},
                "response": f"The {obj.size} {obj.color} {obj.shape} is {new} in the second image.",
            }
        )
    if which:  # needs two test scenes or more
        _demon_task(
            out,
            "Shapes_WhichImage",
            "multi-choice",
            "Look at the images and answer with the image's letter, e.g. 'Image A'.\n",
            which,
        )
    _demon_task(
        out, "Shapes_Difference", "open-ended", "Describe the difference between the two images.\n", diff
    )
    return out, {"Shapes_WhichImage": len(which), "Shapes_Difference": len(diff)}


def write_benchmarks(world_dir: str | os.PathLike, seed: int = 0) -> dict[str, str]:
    """Write the held-out benchmark files under ``world_dir/bench``; returns task name -> path
    (for ``graft eval --task NAME=PATH``). Skips the work when it is already done for this test
    split and seed; a task with no sample (a tiny test split) is left out."""
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
            return {k: str(bench / v) for k, v in old["tasks"].items()}
    if bench.exists():
        shutil.rmtree(bench)  # stale: images of the same name may show other scenes now
    rows = _load_test(world)
    counts: dict[str, object] = {}
    paths: dict[str, Path] = {}
    if rows:
        paths["coco_caption"] = _coco(world, rows, bench / "coco")
        paths["mme"], counts["mme_images"] = _mme(world, rows, bench / "mme", seed)
        paths["pope"], counts["pope_questions"] = _pope(world, rows, bench / "pope", seed)
        paths["llava_bench"], counts["llava_bench_questions"] = _llava_bench(
            world, rows, bench / "llava_bench", seed
        )
        paths["demon"], counts["demon_samples"] = _demon(world, rows, bench / "demon", seed)
        if not any(counts["mme_images"].values()):
            del paths["mme"]
        if not any(counts["demon_samples"].values()):
            del paths["demon"]
    manifest = {
        "version": BENCH_VERSION,
        "seed": seed,
        "test_hash": test_hash,
        "test_images": len(rows),
        "tasks": {k: str(Path(v).relative_to(bench)) for k, v in paths.items()},
        "counts": counts,
    }
    _atomic_write(manifest_path, json.dumps(manifest, indent=2))
    return {k: str(v) for k, v in paths.items()}
