"""Aya Vision with graft's cell connector: transformers' ``AyaVisionForConditionalGeneration``
whose adapter reads overlapping windows of patches (``reduction_margin``), writes several tokens
per group (``tokens_per_group``) and puts a learned row and column marker before each group's
tokens (``marker_grid``), or after them (``markers_after``). With all four at their plain values it
is Aya Vision's adapter.

``graft export-hf`` ships this file (and ``cells.py``) with a model that needs it; transformers
loads the folder with ``trust_remote_code=True``. Imports torch and transformers only.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AyaVisionConfig, AyaVisionForConditionalGeneration

from .cells import cell_tokens, pixel_shuffle

#: the fields beyond Aya Vision's, each with the value that is Aya Vision's adapter
CELL_FIELDS = {"tokens_per_group": 1, "reduction_margin": 0, "marker_grid": 0, "markers_after": 0}


class GraftCellsConfig(AyaVisionConfig):
    """``AyaVisionConfig`` plus the ``CELL_FIELDS`` (extra keyword arguments, kept as attributes)."""

    model_type = "graft_cells"


def cell_field(config: AyaVisionConfig, name: str) -> int:
    """One of the ``CELL_FIELDS`` of ``config``, or its Aya Vision value."""
    return int(getattr(config, name, CELL_FIELDS[name]))


class GraftCellsProjector(nn.Module):
    """Aya Vision's adapter (pixel shuffle, LayerNorm, Linear, SwiGLU, Linear) on cells."""

    def __init__(self, config: GraftCellsConfig) -> None:
        super().__init__()
        self.factor = config.downsample_factor
        self.margin = cell_field(config, "reduction_margin")
        self.tokens_per_group = cell_field(config, "tokens_per_group")
        marker_grid = cell_field(config, "marker_grid")
        d_in = config.vision_config.hidden_size * (self.factor + 2 * self.margin) ** 2
        d_llm = config.text_config.hidden_size
        width = getattr(config, "alignment_intermediate_size", d_llm)
        self.layernorm = nn.LayerNorm(d_in, eps=config.adapter_layer_norm_eps)
        self.linear_1 = nn.Linear(d_in, width)
        self.linear_2 = nn.Linear(width // 2, d_llm * self.tokens_per_group)
        self.markers = nn.Parameter(torch.zeros(2, marker_grid, d_llm)) if marker_grid else None
        self.markers_after = bool(cell_field(config, "markers_after"))

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        side = math.isqrt(image_features.shape[1])
        groups = self.layernorm(pixel_shuffle(image_features, side, self.factor, self.margin))
        value, gate = self.linear_1(groups).chunk(2, dim=-1)
        groups = self.linear_2(F.silu(gate) * value)
        return cell_tokens(groups, self.tokens_per_group, self.markers, self.markers_after)


class GraftCellsForConditionalGeneration(AyaVisionForConditionalGeneration):
    """``AyaVisionForConditionalGeneration`` whose adapter is ``GraftCellsProjector``."""

    config_class = GraftCellsConfig

    def __init__(self, config: GraftCellsConfig) -> None:
        super().__init__(config)
        self.model.multi_modal_projector = GraftCellsProjector(config)
