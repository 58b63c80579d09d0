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

A connector's image token concatenates a cell of 4x4 patches, and one linear head per patch does
not ask the cell as a whole to say its object's shape: the grounding's connector read it for 0.86
of held-out object cells. The packaged tower was then refined (``REFINE``) with a cell loss: each
such cell names the object that paints most of it, through a head of one hidden layer. Probe shape
0.95, the grounding's object cells 0.94. An object then covered 2.3 cells and was named in each, so
the tower was refined once more with centre targets (``labels.centre_classes``): only the cell that
holds an object's centre names it, and the grounding hands the LLM one token per object; and
then for 1,000 steps more with the same targets, after which the grounding missed 6.9% of held-out
objects' centre cells instead of 9.0% (README, "The packaged vision tower").
"""

from __future__ import annotations

import json
import math
import os
import random
import re
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPVisionConfig, CLIPVisionModel

from graft.connectors.reduction import TokenReduction

from .artifacts import building, is_finished
from .describe import captions
from .labels import CELL_CLASSES, cell_labeller, patch_labels
from .scene import COLORS, SHAPES, SIZES, Scene


@dataclass
class VisionArgs:
    """The recipe of the packaged tower's first version (``graft/world/tower``, before ``REFINE``):
    800 steps, patch 4."""

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
    #: weight of the contrastive caption loss; 0 = no text tower (the dense targets alone)
    caption_weight: float = 1.0
    #: weight of the cell loss: each cell of ``cell_patches`` x ``cell_patches`` patches of layer
    #: -2, concatenated as a pixel-shuffle connector concatenates them into one image token, names
    #: its object (``cell_targets``; the grounding's classes), read by a head of one hidden layer;
    #: 0 = none
    cell_weight: float = 0.0
    cell_patches: int = 4
    #: what a cell names (``labels.CELL_TARGETS``): cover (the object painting most of it) or
    #: centre (the object whose centre it holds)
    cell_targets: str = "cover"
    #: start from this tower (a ``CLIPVisionModel`` folder), whose architecture then replaces
    #: the fields above; its heads start fresh
    init_from: str | None = None
    #: first steps in which only the fresh heads learn and the tower keeps its weights (with
    #: ``init_from``: fresh heads' gradients would scramble what it has learnt)
    head_steps: int = 0
    #: clip the gradients' global norm to this (None: no clipping)
    max_grad_norm: float | None = None
    seed: int = 0


#: the refinement of a pretrained tower (``VisionArgs.init_from``) that made the packaged one from
#: its first version, three times: with cover cell targets, with centre ones, and with centre ones
#: again for 1,000 steps; the patch and cell targets, no captions (README, "The packaged vision tower")
REFINE = {
    "cell_targets": "centre",
    "steps": 500,
    "lr": 5e-4,
    "warmup": 30,
    "caption_weight": 0.0,
    "cell_weight": 1.0,
    "head_steps": 100,
    "max_grad_norm": 1.0,
}


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


def _clip_model(args: VisionArgs, vocab_size: int, image_size: int) -> CLIPModel:
    """A fresh CLIP of ``args``' sizes, or one whose vision tower is ``args.init_from``'s."""
    vision_config: dict | CLIPVisionConfig = dict(
        image_size=image_size,
        patch_size=args.patch_size,
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_hidden_layers=args.num_layers,
        num_attention_heads=args.num_heads,
    )
    start = None
    if args.init_from:
        start = CLIPVisionModel.from_pretrained(args.init_from)
        vision_config = start.config
        if vision_config.image_size != image_size:
            raise ValueError(
                f"{args.init_from}: a tower for {vision_config.image_size}-pixel images, and this "
                f"world's are {image_size} pixels"
            )
    config = CLIPConfig(
        text_config=dict(
            vocab_size=vocab_size,
            hidden_size=args.text_hidden,
            intermediate_size=args.text_hidden * 4,
            num_hidden_layers=args.text_layers,
            num_attention_heads=2,
            max_position_embeddings=args.max_text_len,
            pad_token_id=0,
            eos_token_id=1,
            bos_token_id=1,
        ),
        vision_config=vision_config if isinstance(vision_config, dict) else vision_config.to_dict(),
        projection_dim=args.projection_dim,
    )
    model = CLIPModel(config)
    if start is not None:
        model.vision_model.load_state_dict(start.state_dict())
    return model


def _cell_head(width: int) -> torch.nn.Module:
    """The cell loss's reader: a pixel-shuffled cell, a hidden layer of SmolLM2's width, the class."""
    return torch.nn.Sequential(
        torch.nn.LayerNorm(width),
        torch.nn.Linear(width, 576),
        torch.nn.GELU(),
        torch.nn.Linear(576, CELL_CLASSES),
    )


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
    if max(args.caption_weight, args.dense_weight, args.cell_weight) <= 0:
        raise ValueError("pretraining a tower needs caption_weight, dense_weight or cell_weight above 0")
    cell_labels_of = cell_labeller(args.cell_targets)
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

    model = _clip_model(args, len(vocab.itos), size).to(device)
    hidden = model.config.vision_config.hidden_size
    patch = model.config.vision_config.patch_size
    dense_labels = torch.stack([patch_labels(s, patch, args.dense_min_cover) for s in scenes])
    dense_head = torch.nn.Linear(hidden, sum(DENSE_TARGETS.values())).to(device)
    cell_head, cell_labels = None, None
    if args.cell_weight > 0:
        shuffle = TokenReduction("pixel_shuffle", args.cell_patches)
        cell_head = _cell_head(hidden * args.cell_patches**2).to(device)
        cell_labels = torch.stack([cell_labels_of(s, size // (patch * args.cell_patches)) for s in scenes])
    tower = list(model.vision_model.parameters())
    if args.caption_weight > 0:
        tower += [p for n, p in model.named_parameters() if not n.startswith("vision_model.")]
    heads = list(dense_head.parameters()) + (list(cell_head.parameters()) if cell_head else [])
    opt = torch.optim.AdamW([{"params": tower}, {"params": heads}], lr=args.lr, weight_decay=0.05)

    def lr_at(step: int, steps: int) -> float:
        if step < args.warmup:
            return (step + 1) / args.warmup
        return 0.5 * (1 + math.cos(math.pi * (step - args.warmup) / max(1, steps - args.warmup)))

    def tower_lr(step: int) -> float:  # still for the first head_steps, then its own schedule
        return 0.0 if step < args.head_steps else lr_at(step - args.head_steps, args.steps - args.head_steps)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, [tower_lr, partial(lr_at, steps=args.steps)])
    order: list[int] = []
    bs = min(args.batch_size, len(rows))
    bar = tqdm(range(args.steps), desc="pretrain vision", unit="step")
    for _ in bar:
        if len(order) < bs:
            order = list(range(len(rows)))
            rng.shuffle(order)
        idx = [order.pop() for _ in range(bs)]
        pix = ((images[idx].permute(0, 3, 1, 2).float() / 255.0 - mean) / std).to(device)
        seen = model.vision_model(pixel_values=pix, output_hidden_states=True)
        loss = torch.zeros((), device=device)
        if args.caption_weight > 0:
            pos, neg = zip(*(caption_pair(scenes[i], rng) for i in idx), strict=True)
            ids = vocab.encode(list(pos) + list(neg), args.max_text_len).to(device)
            img = model.visual_projection(seen.pooler_output)
            txt = model.text_model(input_ids=ids, attention_mask=(ids > 0).long()).pooler_output
            img, txt = F.normalize(img, dim=-1), F.normalize(model.text_projection(txt), dim=-1)
            scale = model.logit_scale.exp().clamp(max=100)
            logits = scale * img @ txt.T  # [B, 2B]: each image against every true and hard-negative caption
            target = torch.arange(bs, device=device)
            caption_loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits[:, :bs].T, target)) / 2
            loss = loss + args.caption_weight * caption_loss
        patches = seen.hidden_states[-2][:, 1:]  # layer -2's patches: the features a connector reads
        if args.dense_weight > 0:
            dense = dense_head(patches).split(list(DENSE_TARGETS.values()), -1)
            labels = dense_labels[idx].to(device)
            dense_loss = sum(
                F.cross_entropy(d.flatten(0, 1), labels[..., k].flatten()) for k, d in enumerate(dense)
            )
            loss = loss + args.dense_weight * dense_loss
        if cell_head is not None:
            cells = cell_head(shuffle(patches)).flatten(0, 1)
            loss = loss + args.cell_weight * F.cross_entropy(cells, cell_labels[idx].flatten().to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if args.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(tower + heads, args.max_grad_norm)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")

    # A fresh CLIPVisionModel (not the submodule) so the saved folder is exactly a vision-tower checkpoint.
    vision = CLIPVisionModel(model.config.vision_config)
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
