"""Build a shapes world on disk: images, symbolic metadata, instruction data, eval files, text corpus.

Split by image (train / val / test), and no val or test image renders like a train image.
Training files (stage1, stage2, captions, corpus) draw only on train images; eval files (eval/,
and bench/: see benchmarks.py) only on test images. Every file is written to a temporary name
and renamed; `world.json` is written last, so its presence means the world is complete, and a
rerun with the same arguments returns it without doing the work again.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from graft.files import write_text_atomic

from .benchmarks import write_benchmarks
from .contexts import write_contexts
from .corpus import DOC_SEP, corpus_docs
from .describe import boxes, captions
from .instructions import caption_record, qa_record, rich_record, single_questions, stage1_record
from .multi_image import difference_record, which_image_record
from .questions import FAMILIES, mcq, yesno
from .scene import COLORS, SHAPES, SIZES, Scene, sample_scene

# 5: one true option per position MCQ, counts asked alike for yes and no, no held-out image rendered like
# a train image, "closest to the edge" by the shape's edge, alike objects told apart in differences;
# 6: a count yes/no reply lists the objects counted before their number ("red circle and blue circle: two");
# 7: those lists, and a presence or existence reply's, joined by commas alone ("red circle, blue circle: two")
# 8: the world's own replies asked for by their own instructions, a share of stage-2 turns as LLaVA asks
# 9: a yes/no turn asked as LLaVA asks answered yes half the time (a bare verdict's share is a prior)
# 10: a position yes/no reply names the two objects' rows or columns first, as the image tokens' markers do
# 11: position replies name both objects with their cells first ("red circle 3 2, blue square 1 2: row 3,
#     row 1"), the multiple-choice ones too, as the image tokens say them with the markers after the words
# 12: a count's and a position's yes/no reply name the value asked before the verdict ("below, asked
#     above, so no")
WORLD_VERSION = "shapes-12"
#: the fewest images that give each split (test, val, train) one: fewer leave val, test and eval empty
MIN_IMAGES = 3
#: the smallest image side at which the smallest object's box is over a pixel wide (the renderer
#: cannot draw it at fewer; 0.10 of the side each way: 6 pixels)
MIN_IMAGE_SIZE = int(1 / (2 * min(SIZES.values()))) + 1


def world_size_problem(images: int, image_size: int | None = None) -> str | None:
    """What is wrong with a world of ``images`` images of ``image_size`` pixels, worded with the
    command-line flags that set them (``graft world``, ``demo``, ``ablation``); None if nothing."""
    if images < MIN_IMAGES:
        return f"--images {images}: give {MIN_IMAGES} or more (one for each of train, val and test)"
    if image_size is not None and image_size < MIN_IMAGE_SIZE:
        return (
            f"--image-size {image_size}: give {MIN_IMAGE_SIZE} or more pixels (the smallest shapes need it)"
        )
    return None


@dataclass
class WorldArgs:
    num_images: int = 10000
    seed: int = 0
    image_size: int = 64
    max_objects: int = 4
    val_frac: float = 0.05
    test_frac: float = 0.05
    questions_per_image: int = 6  # turns of each train image's multi-turn question record (stage 2)
    multi_image_frac: float = 0.25  # train images that also anchor a which-image and a difference record
    caption_frac: float = 0.1  # train images that also get a one-sentence caption record (stage 2)
    corpus_qa_per_image: int = 6  # caption-context QA documents per train image in the LLM corpus
    eval_mcq_per_image: int = 1  # binary eval always has one yes and one no question per test image


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def _split_ids(n: int, args: WorldArgs, rng: random.Random) -> dict[str, list[int]]:
    order = list(range(n))
    rng.shuffle(order)
    n_test = max(1, round(n * args.test_frac))  # n >= MIN_IMAGES: one image each at least
    n_val = max(1, round(n * args.val_frac))
    return {
        "test": sorted(order[:n_test]),
        "val": sorted(order[n_test : n_test + n_val]),
        "train": sorted(order[n_test + n_val :]),
    }


def _draw(seed: int, i: int, args: WorldArgs, taken: set[bytes] | None = None) -> tuple[random.Random, Scene]:
    """Image ``i``'s generator and scene: one generator per image, so image i is the same whatever
    num_images or the split is. A held-out image whose render is in ``taken`` (digests of the
    training renders) is drawn again: a one-object scene renders pixel for pixel like another one
    a fraction of a pixel away, and a test image seen in training would be no test."""
    for attempt in range(100):
        rng = random.Random(f"{seed}-{i}" if attempt == 0 else f"{seed}-{i}-again-{attempt}")
        scene = sample_scene(rng, max_objects=args.max_objects, image_size=args.image_size)
        if taken is None or _digest(scene) not in taken:
            break
    return rng, scene


def _digest(scene: Scene) -> bytes:
    return hashlib.sha256(scene.render().tobytes()).digest()


def _binary_pair(scene: Scene, rng: random.Random) -> list:
    """One yes and one no question of the same family (MME-style pair), family drawn uniformly."""
    families = list(FAMILIES)
    rng.shuffle(families)
    for fam in families:
        yes, no = yesno(scene, rng, True, fam), yesno(scene, rng, False, fam)
        if yes and no:
            return [yes, no]
    raise AssertionError("existence pairs always exist")


def _eval_mcq(scene: Scene, rng: random.Random):
    families = list(FAMILIES)
    rng.shuffle(families)
    for fam in families:
        if qa := mcq(scene, rng, fam):
            return qa
    raise AssertionError("count questions always exist")


def _multi_image_records(out: Path, rows: list[dict], args: WorldArgs, rng: random.Random) -> list[dict]:
    """Which-image and difference records anchored on a share of the train images."""
    records = []
    for row in rng.sample(rows, round(len(rows) * args.multi_image_frac)) if len(rows) > 2 else []:
        made = (
            which_image_record(f"{row['id']}-w", rows, row, rng),
            difference_record(f"{row['id']}-d", row, out, rng),
        )
        records += [r for r in made if r is not None]
    return records


def _caption_records(rows: list[dict], args: WorldArgs, rng: random.Random) -> list[dict]:
    """One-sentence caption records (``CAPTION_PROMPT``: LLaVA-1.5's mix has them, and the COCO
    caption task asks it) on a share of the train images: one of each image's reference captions."""
    count = round(len(rows) * args.caption_frac)
    return [
        caption_record(f"{row['id']}-c", row["image"], rng.choice(row["captions"]))
        for row in (rng.sample(rows, count) if count else [])
    ]


def build_world(
    out_dir: str | os.PathLike, num_images: int = 10000, seed: int = 0, image_size: int = 64, **kw
) -> dict:
    """Build (or reuse) a shapes world in `out_dir`; returns the manifest (also in world.json).

    Extra keyword arguments are the other `WorldArgs` fields (max_objects, val_frac, ...).
    Under ``MIN_IMAGES`` images (a world whose val and test splits would be empty) or a side under
    ``MIN_IMAGE_SIZE`` pixels is a ValueError.
    """
    if num_images < MIN_IMAGES:
        raise ValueError(
            f"num_images={num_images}: give {MIN_IMAGES} or more (one for each of train, val and test)"
        )
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(
            f"image_size={image_size}: the smallest side the shapes render at is {MIN_IMAGE_SIZE}"
        )
    args = WorldArgs(num_images=num_images, seed=seed, image_size=image_size, **kw)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} is a file, not a folder; give a folder to write the world into")
    manifest_path = out / "world.json"
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text())
        if old.get("version") == WORLD_VERSION and old.get("args") == asdict(args):
            write_benchmarks(out, seed=seed)  # a no-op when done; fills in worlds built before it
            return old
    out.mkdir(parents=True, exist_ok=True)

    split_of = {}
    for split, ids in _split_ids(num_images, args, random.Random(f"split-{seed}")).items():
        split_of.update({i: split for i in ids})

    taken = {_digest(_draw(seed, i, args)[1]) for i, split in split_of.items() if split == "train"}
    meta: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    stage1, stage2, caps_rows, docs, binary, mcq_rows = [], [], [], [], [], []
    pix_sum = np.zeros(3)
    pix_sq = np.zeros(3)
    n_train_pix = 0
    llava_rng = random.Random(f"llava-{seed}")  # which question turns are asked as LLaVA asks
    for i in tqdm(range(num_images), desc="render shapes world", unit="img"):
        split, iid = split_of[i], f"{i:06d}"
        rng, scene = _draw(seed, i, args, None if split == "train" else taken)
        rel = f"images/{split}/{iid}.png"
        img = scene.render()
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        img.save(tmp, format="PNG")
        os.replace(tmp, path)
        caps = captions(scene)
        meta[split].append(
            {
                "id": iid,
                "image": rel,
                "scene": scene.to_dict(),
                "captions": caps,
                "boxes": [{"category": c, "box": b} for c, b in boxes(scene)],
            }
        )
        if split == "train":
            arr = np.asarray(img, dtype=np.float64).reshape(-1, 3) / 255.0
            pix_sum += arr.sum(0)
            pix_sq += (arr**2).sum(0)
            n_train_pix += arr.shape[0]
            caps_rows.append({"image": rel, "captions": caps})
            # stage 1 aligns on the caption that names every object's size, colour, shape and place
            stage1.append(stage1_record(iid, rel, caps[1], rng))
            stage2.append(rich_record(f"{iid}-r", rel, scene, rng))
            questions = single_questions(scene, rng, args.questions_per_image, llava_rng)
            stage2.append(qa_record(f"{iid}-q", rel, questions))
            docs.extend(corpus_docs(scene, caps, rng, args.corpus_qa_per_image))
        elif split == "test":
            for j, qa in enumerate(_binary_pair(scene, rng)):
                binary.append(
                    {"id": f"{iid}-b{j}", "image": rel, "question": qa.question, "answer": qa.answer}
                    | {"qtype": qa.qtype, "hard_negative": qa.hard}
                )
            for j in range(args.eval_mcq_per_image):
                qa = _eval_mcq(scene, rng)
                mcq_rows.append(
                    {"id": f"{iid}-m{j}", "image": rel, "question": qa.question, "answer": qa.answer}
                    | {"qtype": qa.qtype, "choices": qa.choices}
                )

    stage2 += _multi_image_records(out, meta["train"], args, random.Random(f"multi-{seed}"))
    stage2 += _caption_records(meta["train"], args, random.Random(f"caption-{seed}"))
    rng = random.Random(f"shuffle-{seed}")
    rng.shuffle(stage2)
    rng.shuffle(docs)
    assert not any(DOC_SEP in d for d in docs)
    for split, rows in meta.items():
        write_text_atomic(out / "meta" / f"{split}.jsonl", _jsonl(rows))
    write_text_atomic(out / "stage1.json", json.dumps(stage1))
    write_text_atomic(out / "stage2.json", json.dumps(stage2))
    write_text_atomic(out / "eval" / "binary.jsonl", _jsonl(binary))
    write_text_atomic(out / "eval" / "mcq.jsonl", _jsonl(mcq_rows))
    write_text_atomic(out / "text" / "captions.jsonl", _jsonl(caps_rows))
    write_text_atomic(out / "text" / "llm_corpus.txt", DOC_SEP.join(docs) + "\n")
    write_contexts(out, meta["train"])  # contexts.jsonl: what `graft gen-data` tells the model

    mean = pix_sum / max(n_train_pix, 1)
    std = np.sqrt(np.maximum(pix_sq / max(n_train_pix, 1) - mean**2, 1e-6))
    manifest = {
        "version": WORLD_VERSION,
        "args": asdict(args),
        "seed": seed,
        "image_size": image_size,
        "num_images": num_images,
        "splits": {k: len(v) for k, v in meta.items()},
        "counts": {
            "stage1": len(stage1),
            "stage2": len(stage2),
            "eval_binary": len(binary),
            "eval_mcq": len(mcq_rows),
            "corpus_docs": len(docs),
        },
        "image_mean": [round(float(v), 4) for v in mean],
        "image_std": [round(float(v), 4) for v in std],
        "colors": list(COLORS),
        "shapes": list(SHAPES),
        "files": {
            "meta": "meta/{split}.jsonl",
            "stage1": "stage1.json",
            "stage2": "stage2.json",
            "eval_binary": "eval/binary.jsonl",
            "eval_mcq": "eval/mcq.jsonl",
            "llm_corpus": "text/llm_corpus.txt",
            "captions": "text/captions.jsonl",
        },
    }
    # held-out benchmark files (bench/) in real formats; about 1 s for 500 test images
    write_benchmarks(out, seed=seed)
    write_text_atomic(manifest_path, json.dumps(manifest, indent=2))
    return manifest
