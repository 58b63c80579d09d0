"""Optional spatial reduction of patch tokens before projection: fewer tokens, faster LLM.

- ``pool``: k x k average pooling over the patch grid (channels unchanged).
- ``pixel_shuffle``: nanoVLM's space-to-depth, k x k neighbouring patches are concatenated
  along channels (channels x k^2), so no information is averaged away. With ``margin`` m > 0 a
  group also reads the m rings of patches around its k x k block (zeros beyond the image), so
  windows of (k + 2m)^2 patches overlap and a group sees the objects that cross its borders: still
  one group per k x k block, channels x (k + 2m)^2.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from graft.remote.cells import pixel_shuffle

REDUCTIONS = ("none", "pool", "pixel_shuffle")


class TokenReduction(nn.Module):
    def __init__(self, kind: str = "none", factor: int = 2, margin: int = 0) -> None:
        super().__init__()
        if kind not in REDUCTIONS:
            raise ValueError(f"unknown token reduction {kind!r}; valid: {', '.join(REDUCTIONS)}")
        if kind != "none" and factor < 2:
            raise ValueError(f"token reduction {kind!r} needs factor >= 2, got {factor}")
        if margin and kind != "pixel_shuffle" or not isinstance(margin, int) or margin < 0:
            raise ValueError(
                f"reduction margin {margin!r}: a count (>= 0) of rings of patches around each "
                f"pixel_shuffle group; reduction {kind!r}"
            )
        self.kind = kind
        self.factor = factor if kind != "none" else 1
        self.margin = margin

    def channel_multiplier(self) -> int:
        return (self.factor + 2 * self.margin) ** 2 if self.kind == "pixel_shuffle" else 1

    def num_tokens(self, num_patches: int) -> int:
        side = self._side(num_patches)
        return (side // self.factor) ** 2

    def _side(self, num_patches: int) -> int:
        side = math.isqrt(num_patches)
        if side * side != num_patches:
            if self.kind == "none":
                return side
            raise ValueError(f"token reduction needs a square patch grid, got {num_patches} patches")
        if side % self.factor:
            raise ValueError(f"patch grid {side}x{side} is not divisible by reduction factor {self.factor}")
        return side

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.kind == "none":
            return features
        n, p, d = features.shape
        side, k = self._side(p), self.factor
        if self.kind == "pool":
            pooled = F.avg_pool2d(features.reshape(n, side, side, d).permute(0, 3, 1, 2), kernel_size=k)
            return pooled.flatten(2).transpose(1, 2)
        return pixel_shuffle(features, side, k, self.margin)
