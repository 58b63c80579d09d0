"""The contract every visual prompt generator (VPG) fulfils.

A connector turns the vision tower's selected features of N images, ``[N, P, d_vis]``, into
``[N, M, d_llm]`` soft tokens that the model writes over each image's placeholder block.
``num_tokens(P)`` tells the processor how many placeholders one image needs (M).

Some VPGs need more than the image: InstructBLIP's Q-Former reads the instruction text and
Cheetah's VPG-C reads the LLM's hidden states half-way up. A connector declares that with the
class flags below; the model then hands it exactly that context and nothing else.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn


class Connector(nn.Module):
    """Base class of all connectors. Subclasses register themselves by exact name."""

    name: ClassVar[str] = ""
    #: wants ``instruction_ids`` / ``instruction_mask`` (its own tokenizer's ids) in ``forward``
    needs_instruction: ClassVar[bool] = False
    #: wants to act on the LLM's hidden states (installs hooks through ``attach``)
    needs_llm_hidden: ClassVar[bool] = False
    #: its tokens are the cells of a square grid over the image, row-major, each from its own
    #: patches, a cell's ``tokens_per_group`` tokens one after another (a projector's; grounding
    #: targets, ``graft.world.grounding``, rely on it)
    spatial: ClassVar[bool] = False

    def __init__(self, vision_hidden_size: int, text_hidden_size: int, **options: Any) -> None:
        super().__init__()
        self.vision_hidden_size = vision_hidden_size
        self.text_hidden_size = text_hidden_size

    def num_tokens(self, num_patches: int) -> int:
        """Soft tokens produced per image, given the number of patch features selected."""
        raise NotImplementedError

    def forward(self, image_features: torch.Tensor, **context: Any) -> torch.Tensor:
        raise NotImplementedError

    def attach(self, language_model: nn.Module) -> None:
        """Called once the LLM exists. Connectors that read its hidden states hook it here."""
