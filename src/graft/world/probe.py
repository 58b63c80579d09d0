"""Checks that the tiny backbones hold the two skills the demo needs.

- `probe_vision_features`: do frozen patch features (layer -2) encode each object's shape and
  colour? A linear probe on the mean patch feature under each object's box.
- `probe_llm_text_qa`: can the LLM answer yes/no and multiple-choice questions about a caption
  given as context (greedy next token), on test images it never saw?
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .corpus import context_for
from .describe import HIGH, LOW
from .instructions import vicuna
from .questions import FAMILIES, mcq, yesno
from .scene import COLORS, SHAPES, SIZES, Scene


def _meta(world_dir: Path, split: str, limit: int | None) -> list[dict]:
    rows = [json.loads(line) for line in (world_dir / "meta" / f"{split}.jsonl").read_text().splitlines()]
    return rows[:limit] if limit else rows


def _third(v: float) -> int:
    return 0 if v < LOW else 2 if v > HIGH else 1


#: what the probe reads from each object: (label of an object, number of classes); position is
#: the coarse 3 x 3 cell the captions name ("in the top left")
PROBED = {
    "shape": (lambda o: SHAPES.index(o.shape), len(SHAPES)),
    "color": (lambda o: list(COLORS).index(o.color), len(COLORS)),
    "size": (lambda o: list(SIZES).index(o.size), len(SIZES)),
    "position": (lambda o: 3 * _third(o.y) + _third(o.x), 9),
}


@torch.no_grad()
def _object_features(model, processor, world: Path, rows: list[dict], layer: int, device: str):
    feats: list[torch.Tensor] = []
    labels: dict[str, list[int]] = {name: [] for name in PROBED}
    grid = model.config.image_size // model.config.patch_size
    for start in range(0, len(rows), 64):
        chunk = rows[start : start + 64]
        images = [Image.open(world / r["image"]).convert("RGB") for r in chunk]
        pix = processor(images=images, return_tensors="pt")["pixel_values"].to(device)
        hidden = model(pixel_values=pix, output_hidden_states=True).hidden_states[layer][:, 1:]
        hidden = hidden.reshape(len(chunk), grid, grid, -1)
        for h, r in zip(hidden, chunk, strict=True):
            for o in Scene.from_dict(r["scene"]).objects:
                x1, y1, x2, y2 = o.box()
                # Patches whose centre lies inside the box (at least the one under the centre).
                c = (np.arange(grid) + 0.5) / grid
                cols = np.nonzero((c > x1) & (c < x2))[0].tolist() or [min(int(o.x * grid), grid - 1)]
                rws = np.nonzero((c > y1) & (c < y2))[0].tolist() or [min(int(o.y * grid), grid - 1)]
                feats.append(h[rws][:, cols].mean(dim=(0, 1)).float().cpu())
                for name, (value, _) in PROBED.items():
                    labels[name].append(value(o))
    return torch.stack(feats), {name: torch.tensor(y) for name, y in labels.items()}


def _linear_probe(xtr, ytr, xte, yte, classes: int, steps: int = 300) -> float:
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    lin = torch.nn.Linear(xtr.shape[1], classes)
    opt = torch.optim.Adam(lin.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(steps):  # full-batch: a few thousand objects
        loss = torch.nn.functional.cross_entropy(lin(xtr), ytr)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (lin(xte).argmax(-1) == yte).float().mean().item()


def probe_vision_features(
    vision_dir: str | os.PathLike,
    world_dir: str | os.PathLike,
    layer: int = -2,
    train_images: int = 2000,
    test_images: int | None = None,
    device: str = "cpu",
) -> dict[str, float]:
    """Linear-probe accuracy for shape, colour, size and coarse position of each object, trained
    on train-split objects and measured on test-split objects, from frozen patch features of
    `layer`."""
    from transformers import CLIPVisionModel

    from graft.processing import load_image_processor

    world = Path(world_dir)
    model = CLIPVisionModel.from_pretrained(vision_dir).to(device).eval()
    processor = load_image_processor(str(vision_dir))
    xtr, ytr = _object_features(model, processor, world, _meta(world, "train", train_images), layer, device)
    xte, yte = _object_features(model, processor, world, _meta(world, "test", test_images), layer, device)
    out: dict[str, float] = {}
    for name, (_, classes) in PROBED.items():
        out[f"{name}_acc"] = _linear_probe(xtr, ytr[name], xte, yte[name], classes)
        out[f"{name}_chance"] = float(np.bincount(yte[name].numpy()).max() / len(yte[name]))
    out["objects"] = len(xte)
    return out


@torch.no_grad()
def probe_llm_text_qa(
    llm_dir: str | os.PathLike,
    world_dir: str | os.PathLike,
    split: str = "test",
    limit: int | None = None,
    seed: int = 1234,
    device: str = "cpu",
) -> dict[str, float]:
    """Greedy next-token accuracy on caption-context questions in the stage-2 chat format
    (system prompt included): yes/no pairs (one yes, one no per image) and 4-way MCQ letters."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    world = Path(world_dir)
    tok = AutoTokenizer.from_pretrained(llm_dir)
    model = AutoModelForCausalLM.from_pretrained(llm_dir).to(device).eval()
    rng = random.Random(seed)
    items: list[tuple[str, str, str]] = []  # (prompt, answer, kind)
    for r in _meta(world, split, limit):
        scene = Scene.from_dict(r["scene"])
        fams = list(FAMILIES)
        rng.shuffle(fams)
        for fam in fams:
            pair = [yesno(scene, rng, ans, fam) for ans in (True, False)]
            if all(pair):
                items += [
                    (*_prompt(scene, r["captions"], qa, rng), f"yesno-{qa.qtype}-{qa.hard}") for qa in pair
                ]
                break
        for fam in fams:
            if qa := mcq(scene, rng, fam):
                items.append((*_prompt(scene, r["captions"], qa, rng), f"mcq-{qa.qtype}"))
                break
    correct: dict[str, list[bool]] = {}
    for start in range(0, len(items), 32):
        chunk = items[start : start + 32]
        enc = tok([p for p, _, _ in chunk], return_tensors="pt", padding=True).to(device)
        logits = model(**enc).logits
        last = enc["attention_mask"].sum(1) - 1  # right padding: last real token
        pred = logits[torch.arange(len(chunk)), last].argmax(-1).tolist()
        for (_, ans, kind), p in zip(chunk, pred, strict=True):
            correct.setdefault(kind, []).append(tok.decode([p]).strip() == ans)

    def acc(prefix: str, suffix: str = "") -> float:
        hits = [h for k, v in correct.items() if k.startswith(prefix) and k.endswith(suffix) for h in v]
        return float(np.mean(hits)) if hits else float("nan")

    res = {"yesno_acc": acc("yesno"), "yesno_hard_negative_acc": acc("yesno", "-True"), "mcq_acc": acc("mcq")}
    for fam in FAMILIES:
        res[f"yesno_{fam}_acc"], res[f"mcq_{fam}_acc"] = acc(f"yesno-{fam}-"), acc(f"mcq-{fam}")
    res["yesno_n"] = sum(len(v) for k, v in correct.items() if k.startswith("yesno"))
    res["mcq_n"] = sum(len(v) for k, v in correct.items() if k.startswith("mcq"))
    return res


def _prompt(scene: Scene, caps: list[str], qa, rng: random.Random) -> tuple[str, str]:
    ctx = context_for(scene, caps, rng, qa.axis)
    text = vicuna([(f"Context: {ctx}\n{qa.question}", qa.answer)])
    return text[: -len(qa.answer + "</s>")].rstrip(), qa.answer
