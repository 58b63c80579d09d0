"""Pretrain a tiny CLIP on the world's (image, caption) pairs; keep its vision tower.

Plain CLIP on these captions learned colour as a bag and no shape: a caption was matched by
its colour words alone. So every batch also holds NegCLIP-style hard negatives: the same
scene's caption after one edit that keeps the bag of colours (colours swapped between two
objects, one shape changed, two objects' places swapped, one colour changed). Only an image
embedding that binds colour, shape and place to each other tells them apart.

Captions still left shape hard to read from the patch features a connector takes (a linear
probe: 0.58). Real towers learn from far richer data; here the world's exact label map stands
in: a linear head on layer -2 names, for every patch, the shape, colour and size of the object
covering it (or background). With patch 4 that lifts the probe's shape to 0.85.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPVisionModel

from .artifacts import building, is_finished
from .describe import captions
from .scene import COLORS, SHAPES, SIZES, Scene


@dataclass
class VisionArgs:
    """The recipe of the packaged tower (``graft/world/tower``): 800 steps, patch 4."""

    patch_size: int = 4
    hidden_size: int = 96
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 384
    text_hidden: int = 64
    text_layers: int = 2
    projection_dim: int = 64
    batch_size: int = 128
    steps: int = 800
    lr: float = 2e-3
    warmup: int = 50
    max_text_len: int = 48
    #: weight of the dense loss: every patch of layer -2 names the colour, shape and size of the
    #: object under it (or background), read by a linear head; 0 = captions alone
    dense_weight: float = 1.0
    #: a patch belongs to the object that covers most of it, when that is at least this share
    dense_min_cover: float = 0.125
    seed: int = 0


# ---------------------------------------------------------------- captions and hard negatives


def hard_negative(scene: Scene, rng: random.Random) -> Scene | None:
    """The scene after one edit that changes what a binding caption says, or None if none applies."""
    objs = list(scene.objects)
    edits = ["shape", "color"]
    if len({o.color for o in objs}) > 1:
        edits.append("swap_color")
    if len({o.category for o in objs}) > 1:
        edits.append("swap_place")
    kind = rng.choice(edits)
    if kind == "shape":
        i = rng.randrange(len(objs))
        objs[i] = replace(objs[i], shape=rng.choice([s for s in SHAPES if s != objs[i].shape]))
    elif kind == "color":
        i = rng.randrange(len(objs))
        objs[i] = replace(objs[i], color=rng.choice([c for c in COLORS if c != objs[i].color]))
    elif kind == "swap_color":
        i, j = rng.sample([k for k in range(len(objs))], 2)
        while objs[i].color == objs[j].color:
            i, j = rng.sample(range(len(objs)), 2)
        objs[i], objs[j] = replace(objs[i], color=objs[j].color), replace(objs[j], color=objs[i].color)
    else:
        i, j = rng.sample(range(len(objs)), 2)
        while objs[i].category == objs[j].category:
            i, j = rng.sample(range(len(objs)), 2)
        objs[i], objs[j] = (
            replace(objs[i], x=objs[j].x, y=objs[j].y),
            replace(objs[j], x=objs[i].x, y=objs[i].y),
        )
    return scene.with_objects(objs)


def caption_pair(scene: Scene, rng: random.Random) -> tuple[str, str]:
    """(true caption, hard-negative caption in the same phrasing); the negative is never true."""
    pos_caps = captions(scene)
    k = rng.randrange(len(pos_caps))
    for _ in range(10):
        neg_caps = captions(hard_negative(scene, rng))
        if neg_caps[k] not in pos_caps:
            return pos_caps[k], neg_caps[k]
    # Phrasings that do not mention places cannot express a swap of places: use the located one.
    neg = captions(hard_negative(scene.with_objects(scene.objects), rng))[1]
    return pos_caps[1], neg if neg != pos_caps[1] else "An empty image."


# ---------------------------------------------------------------- dense targets

#: per-patch target columns and their class counts (class 0 = background)
DENSE_TARGETS = {"shape": len(SHAPES) + 1, "color": len(COLORS) + 1, "size": len(SIZES) + 1}


def patch_labels(scene: Scene, patch: int, min_cover: float) -> torch.Tensor:
    """``[patches, 3]`` (shape, colour, size) class of the object that covers most of each patch
    (row-major, as the ViT orders them); 0 where no object covers ``min_cover`` of it."""
    owner = np.asarray(scene.label_map(), dtype=np.int64)
    grid = scene.image_size // patch
    blocks = owner[: grid * patch, : grid * patch].reshape(grid, patch, grid, patch).transpose(0, 2, 1, 3)
    blocks = blocks.reshape(grid * grid, patch * patch)
    counts = np.stack([(blocks == i + 1).sum(1) for i in range(len(scene.objects))], 1)
    table = [(0, 0, 0)] + [
        (SHAPES.index(o.shape) + 1, list(COLORS).index(o.color) + 1, list(SIZES).index(o.size) + 1)
        for o in scene.objects
    ]
    best = counts.argmax(1) + 1
    best[counts.max(1) < min_cover * patch * patch] = 0
    return torch.tensor([table[b] for b in best], dtype=torch.long)


WORD = re.compile(r"[a-z]+|[0-9]+|[^\sa-z0-9]")


class WordVocab:
    """Word-level vocabulary for the throwaway text tower (the world has a few dozen words)."""

    def __init__(self, texts: list[str]):
        words = sorted({w for t in texts for w in WORD.findall(t.lower())})
        self.itos = ["<pad>", "<eos>", "<unk>"] + words
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    def encode(self, texts: list[str], max_len: int) -> torch.Tensor:
        out = torch.zeros(len(texts), max_len, dtype=torch.long)
        for i, t in enumerate(texts):
            ids = [self.stoi.get(w, 2) for w in WORD.findall(t.lower())][: max_len - 1] + [1]
            out[i, : len(ids)] = torch.tensor(ids)
        return out


# ---------------------------------------------------------------- training


def pretrain_vision(
    world_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    args: VisionArgs | None = None,
    device: str = "cpu",
    **overrides,
) -> Path:
    """Contrastive CLIP pretraining with hard negatives; saves `CLIPVisionModel` + `CLIPImageProcessor`.

    Skips when `out_dir` already holds a finished model. `overrides` set VisionArgs fields.
    """
    out = Path(out_dir)
    if is_finished(out):
        return out
    args = args or VisionArgs()
    for k, v in overrides.items():
        setattr(args, k, v)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    world = Path(world_dir)
    manifest = json.loads((world / "world.json").read_text())
    size = manifest["image_size"]
    rows = [json.loads(line) for line in (world / "meta" / "train.jsonl").read_text().splitlines()]
    scenes = [Scene.from_dict(r["scene"]) for r in rows]
    images = torch.from_numpy(
        np.stack([np.asarray(Image.open(world / r["image"]).convert("RGB")) for r in rows])
    )
    mean = torch.tensor(manifest["image_mean"]).view(1, 3, 1, 1)
    std = torch.tensor(manifest["image_std"]).view(1, 3, 1, 1)
    vocab = WordVocab(
        [c for r in rows[:2000] for c in r["captions"]] + list(COLORS) + list(SHAPES) + ["empty"]
    )

    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab.itos),
            hidden_size=args.text_hidden,
            intermediate_size=args.text_hidden * 4,
            num_hidden_layers=args.text_layers,
            num_attention_heads=2,
            max_position_embeddings=args.max_text_len,
            pad_token_id=0,
            eos_token_id=1,
            bos_token_id=1,
        ),
        vision_config=dict(
            image_size=size,
            patch_size=args.patch_size,
            hidden_size=args.hidden_size,
            intermediate_size=args.intermediate_size,
            num_hidden_layers=args.num_layers,
            num_attention_heads=args.num_heads,
        ),
        projection_dim=args.projection_dim,
    )
    model = CLIPModel(config).to(device)
    dense_labels = torch.stack([patch_labels(s, args.patch_size, args.dense_min_cover) for s in scenes])
    dense_head = torch.nn.Linear(args.hidden_size, sum(DENSE_TARGETS.values())).to(device)
    params = list(model.parameters()) + list(dense_head.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.05)

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return (step + 1) / args.warmup
        return 0.5 * (1 + math.cos(math.pi * (step - args.warmup) / max(1, args.steps - args.warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    order: list[int] = []
    bs = min(args.batch_size, len(rows))
    bar = tqdm(range(args.steps), desc="pretrain vision", unit="step")
    for _ in bar:
        if len(order) < bs:
            order = list(range(len(rows)))
            rng.shuffle(order)
        idx = [order.pop() for _ in range(bs)]
        pix = ((images[idx].permute(0, 3, 1, 2).float() / 255.0 - mean) / std).to(device)
        pos, neg = zip(*(caption_pair(scenes[i], rng) for i in idx), strict=True)
        ids = vocab.encode(list(pos) + list(neg), args.max_text_len).to(device)
        seen = model.vision_model(pixel_values=pix, output_hidden_states=args.dense_weight > 0)
        img = model.visual_projection(seen.pooler_output)
        txt = model.text_model(input_ids=ids, attention_mask=(ids > 0).long()).pooler_output
        img, txt = F.normalize(img, dim=-1), F.normalize(model.text_projection(txt), dim=-1)
        scale = model.logit_scale.exp().clamp(max=100)
        logits = scale * img @ txt.T  # [B, 2B]: each image against all true and all hard-negative captions
        target = torch.arange(bs, device=device)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits[:, :bs].T, target)) / 2
        if args.dense_weight > 0:  # layer -2's patches: the features a connector reads
            dense = dense_head(seen.hidden_states[-2][:, 1:]).split(list(DENSE_TARGETS.values()), -1)
            labels = dense_labels[idx].to(device)
            dense_loss = sum(
                F.cross_entropy(d.flatten(0, 1), labels[..., k].flatten()) for k, d in enumerate(dense)
            )
            loss = loss + args.dense_weight * dense_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")

    # A fresh CLIPVisionModel (not the submodule) so the saved folder is exactly a vision-tower checkpoint.
    vision = CLIPVisionModel(config.vision_config)
    vision.load_state_dict(model.vision_model.state_dict())
    processor = CLIPImageProcessorPil(  # saved as CLIPImageProcessor; PIL: no torchvision needed
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=manifest["image_mean"],
        image_std=manifest["image_std"],
    )
    info = {"kind": "vision", "params": sum(p.numel() for p in vision.parameters()), "args": asdict(args)}
    with building(out, info) as tmp:
        vision.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return out
