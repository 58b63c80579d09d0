"""A cell connector's two steps beyond Aya Vision's adapter, as plain torch functions.

- ``pixel_shuffle``: nanoVLM's space-to-depth, each k x k block of patches as one group whose
  channels are the block's features in row-major order (Aya Vision's order); with ``margin`` m > 0
  a group also reads the m rings of patches around its block (zeros beyond the image), so windows
  of (k + 2m)^2 patches overlap.
- ``cell_tokens``: the last layer's ``[N, G, t * d]`` read as t tokens per group, each group's
  after its row's and its column's marker on the S x S grid of groups (row-major) where markers
  are given, or before them.

Imports torch only: graft's connectors call these, and ``graft export-hf`` ships this file in
the folders transformers loads with ``trust_remote_code=True`` (``modeling_graft_cells``).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def pixel_shuffle(features: torch.Tensor, side: int, factor: int, margin: int = 0) -> torch.Tensor:
    """``[N, side^2, d]`` patch features -> ``[N, (side/k)^2, d * (k + 2m)^2]`` groups."""
    n, _, d = features.shape
    k = factor
    grid = features.reshape(n, side, side, d)
    if margin:  # overlapping windows: [n, d * (k + 2m)^2, (s/k)^2], channels first
        window = F.unfold(grid.permute(0, 3, 1, 2), k + 2 * margin, padding=margin, stride=k)
        return window.view(n, d, -1, window.shape[-1]).permute(0, 3, 2, 1).flatten(2)
    # [n, s/k, k, s/k, k, d] -> [n, s/k, s/k, k, k, d] -> [n, (s/k)^2, k*k*d]
    blocks = grid.reshape(n, side // k, k, side // k, k, d).permute(0, 1, 3, 2, 4, 5)
    return blocks.reshape(n, (side // k) ** 2, k * k * d)


def cell_tokens(
    groups: torch.Tensor, tokens_per_group: int, markers: torch.Tensor | None = None, after: bool = False
) -> torch.Tensor:
    """``[N, G, t * d]`` -> ``[N, G * (t + 2), d]`` with ``markers`` ``[2, S, d]`` (each row's
    token, each column's; G = S^2) before each group's tokens, or after them with ``after``; else
    ``[N, G * t, d]``."""
    n, g, width = groups.shape
    d = width // tokens_per_group
    tokens = groups.reshape(n, g, tokens_per_group, d)
    if markers is not None:
        side = markers.shape[1]
        rows, cols = markers.to(tokens.dtype).unbind(0)
        where = torch.stack([rows.repeat_interleave(side, 0), cols.repeat(side, 1)], dim=1)
        where = where.expand(n, -1, -1, -1)
        tokens = torch.cat([tokens, where] if after else [where, tokens], dim=2)
    return tokens.reshape(n, -1, d)
