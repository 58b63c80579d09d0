"""Tiny backbones for the shapes world, saved with `save_pretrained` like real checkpoints.

The pieces live one per file (tokenizer, vision, llm, probe); this module is the public face
the CLI calls. Typical order: build_world -> train_tokenizer -> pretrain_vision, pretrain_llm.
"""

from __future__ import annotations

import os
from pathlib import Path

from .artifacts import is_finished
from .llm import LLMArgs, pretrain_llm
from .probe import probe_llm_text_qa, probe_vision_features
from .tokenizer import train_tokenizer
from .vision import VisionArgs, pretrain_vision

__all__ = [
    "backbones_finished",
    "pretrain_backbones",
    "LLMArgs",
    "VisionArgs",
    "pretrain_llm",
    "pretrain_vision",
    "probe_llm_text_qa",
    "probe_vision_features",
    "train_tokenizer",
]


def backbones_finished(out_dir: str | os.PathLike) -> bool:
    """True when ``pretrain_backbones`` has written all three parts into ``out_dir``."""
    out = Path(out_dir)
    return all(is_finished(out / part) for part in ("tokenizer", "vision", "llm"))


def pretrain_backbones(
    world_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    seed: int = 0,
    device: str = "cpu",
    vision_steps: int | None = None,
    llm_steps: int | None = None,
) -> dict[str, Path]:
    """Tokenizer, vision tower and LLM for a world, each in its own folder of ``out_dir``.

    A part that is already finished is reused, so an interrupted run picks up where it stopped."""
    out = Path(out_dir)
    train_tokenizer(world_dir, out / "tokenizer")
    vision_kw = {"steps": vision_steps} if vision_steps else {}
    llm_kw = {"steps": llm_steps} if llm_steps else {}
    vision = pretrain_vision(world_dir, out / "vision", device=device, seed=seed, **vision_kw)
    llm = pretrain_llm(world_dir, out / "tokenizer", out / "llm", device=device, seed=seed, **llm_kw)
    return {"tokenizer": out / "tokenizer", "vision": vision, "llm": llm}
