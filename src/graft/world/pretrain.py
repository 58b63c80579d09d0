"""Tiny backbones for the shapes world, saved with `save_pretrained` like real checkpoints.

The pieces live one per file (tokenizer, vision, llm, probe); this module is the public face
the CLI calls. Typical order: build_world -> train_tokenizer -> pretrain_vision, pretrain_llm.
"""

from __future__ import annotations

from .llm import LLMArgs, pretrain_llm
from .probe import probe_llm_text_qa, probe_vision_features
from .tokenizer import train_tokenizer
from .vision import VisionArgs, pretrain_vision

__all__ = [
    "LLMArgs",
    "VisionArgs",
    "pretrain_llm",
    "pretrain_vision",
    "probe_llm_text_qa",
    "probe_vision_features",
    "train_tokenizer",
]
