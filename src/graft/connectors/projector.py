"""Projectors: ``linear`` (LLaVA), ``mlp2x_gelu`` (LLaVA-1.5) and ``swiglu`` (Aya Vision's adapter).

Parameter names follow transformers' ``LlavaMultiModalProjector`` (``linear_1``, ``linear_2``)
so export to ``LlavaForConditionalGeneration`` is a rename of the prefix only. ``layer_norm=True``
layer-norms the (reduced) features first, as Aya Vision's and InternVL's adapters do after their
pixel shuffle; ``swiglu`` with it is exactly ``AyaVisionMultiModalProjector``, which is how a
token-reducing projector exports (``graft.export``). ``tokens_per_group=k`` has the last layer
write k tokens for each (reduced) patch group, one after another (k x d_llm outputs read as k
tokens): a cell of the shapes world's grid then says its object's colour and its shape as two
words, not one blend of both (``graft.world.grounding``). No transformers architecture writes
several tokens per group, so such a model exports with its code (``graft.remote``: Aya Vision with
graft's cell adapter, loaded with ``trust_remote_code=True``). ``marker_grid=S`` has each group's tokens
preceded by two learned tokens, its row's and its column's on the S x S grid of groups (row-major),
as Idefics3's ``<row_r_col_c>`` text precedes each of its tiles: the LLM then reads where a cell is
from what its tokens say, not from counting its place in the sequence (the grounding teaches them
the LLM's digits, ``graft.world.grounding``); ``markers_after=True`` puts them after the group's
tokens instead. No transformers architecture has them either; the
two steps beyond Aya Vision's adapter live in ``graft.remote.cells``, which such an export carries.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from graft.connectors.base import Connector
from graft.connectors.reduction import TokenReduction
from graft.connectors.registry import register_connector
from graft.remote.cells import cell_tokens


class _Projector(Connector):
    spatial = True

    def __init__(
        self,
        vision_hidden_size: int,
        text_hidden_size: int,
        reduction: str = "none",
        reduction_factor: int = 2,
        reduction_margin: int = 0,
        bias: bool = True,
        layer_norm: bool = False,
        layer_norm_eps: float = 1e-5,
        tokens_per_group: int = 1,
        marker_grid: int = 0,
        markers_after: bool = False,
        **options: Any,
    ) -> None:
        super().__init__(vision_hidden_size, text_hidden_size)
        if options:
            raise ValueError(f"connector {self.name!r} got unknown options: {', '.join(sorted(options))}")
        if not isinstance(tokens_per_group, int) or tokens_per_group < 1:
            wanted = "tokens_per_group must be a positive integer"
            raise ValueError(f"connector {self.name!r}: {wanted}, got {tokens_per_group!r}")
        if not isinstance(marker_grid, int) or marker_grid < 0:
            wanted = "marker_grid must be the side (>= 1) of the grid of groups, or 0 for no markers"
            raise ValueError(f"connector {self.name!r}: {wanted}, got {marker_grid!r}")
        if markers_after not in (False, True, 0, 1) or (markers_after and not marker_grid):
            wanted = "markers_after (true or false) places marker_grid's markers, so it needs them"
            raise ValueError(f"connector {self.name!r}: {wanted}, got {markers_after!r}")
        self.tokens_per_group = tokens_per_group
        self.marker_grid = marker_grid
        self.markers_after = bool(markers_after)
        if marker_grid:  # [2, S, d_llm]: each row's token, each column's token
            self.markers = nn.Parameter(torch.randn(2, marker_grid, text_hidden_size) * 0.02)
        #: the last layer's width: ``tokens_per_group`` tokens of d_llm
        self.out_features = text_hidden_size * tokens_per_group
        self.reduction = TokenReduction(reduction, reduction_factor, reduction_margin)
        self.in_features = vision_hidden_size * self.reduction.channel_multiplier()
        self.bias = bias
        self.layer_norm = nn.LayerNorm(self.in_features, eps=layer_norm_eps) if layer_norm else nn.Identity()

    def features(self, image_features: torch.Tensor) -> torch.Tensor:
        """The projector's input: reduced, then layer-normed where asked."""
        return self.layer_norm(self.reduction(image_features))

    def tokens(self, groups: torch.Tensor) -> torch.Tensor:
        """The last layer's ``[N, G, k * d_llm]`` -> ``[N, G * k, d_llm]``: each group's k tokens in
        turn, after its row's and its column's marker where ``marker_grid`` asks (before them with
        ``markers_after``)."""
        if self.marker_grid:
            self._check_grid(groups.shape[1])
        markers = self.markers if self.marker_grid else None
        return cell_tokens(groups, self.tokens_per_group, markers, self.markers_after)

    def _check_grid(self, groups: int) -> None:
        side = self.marker_grid
        if groups != side * side:
            raise ValueError(
                f"connector {self.name!r}: marker_grid={side} marks a {side}x{side} grid of groups, "
                f"but the image gives {groups} groups"
            )

    def num_tokens(self, num_patches: int) -> int:
        groups = self.reduction.num_tokens(num_patches)
        if self.marker_grid:
            self._check_grid(groups)
        return groups * (self.tokens_per_group + 2 * bool(self.marker_grid))


@register_connector("linear")
class LinearProjector(_Projector):
    """One Linear(d_vis -> d_llm)."""

    def __init__(self, vision_hidden_size: int, text_hidden_size: int, **options: Any) -> None:
        super().__init__(vision_hidden_size, text_hidden_size, **options)
        self.linear_1 = nn.Linear(self.in_features, self.out_features, bias=self.bias)

    def forward(self, image_features: torch.Tensor, **context: Any) -> torch.Tensor:
        return self.tokens(self.linear_1(self.features(image_features)))


@register_connector("mlp2x_gelu")
class MLPProjector(_Projector):
    """Linear(d_vis -> d_llm), GELU, Linear(d_llm -> d_llm)."""

    def __init__(self, vision_hidden_size: int, text_hidden_size: int, **options: Any) -> None:
        super().__init__(vision_hidden_size, text_hidden_size, **options)
        self.linear_1 = nn.Linear(self.in_features, text_hidden_size, bias=self.bias)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(text_hidden_size, self.out_features, bias=self.bias)

    def forward(self, image_features: torch.Tensor, **context: Any) -> torch.Tensor:
        return self.tokens(self.linear_2(self.act(self.linear_1(self.features(image_features)))))


@register_connector("swiglu")
class SwiGLUProjector(_Projector):
    """Linear(d_vis -> I), SwiGLU (the first half of I gated by SiLU of the second), Linear(I/2 ->
    d_llm): Aya Vision's adapter. ``intermediate_size`` I defaults to 2 x d_llm, so the gated width
    is ``mlp2x_gelu``'s hidden width."""

    def __init__(
        self,
        vision_hidden_size: int,
        text_hidden_size: int,
        intermediate_size: int | None = None,
        **options: Any,
    ) -> None:
        super().__init__(vision_hidden_size, text_hidden_size, **options)
        self.intermediate_size = intermediate_size or 2 * text_hidden_size
        if self.intermediate_size % 2:
            raise ValueError(
                f"connector 'swiglu': intermediate_size must be even, got {self.intermediate_size}"
            )
        self.linear_1 = nn.Linear(self.in_features, self.intermediate_size, bias=self.bias)
        self.linear_2 = nn.Linear(self.intermediate_size // 2, self.out_features, bias=self.bias)

    def forward(self, image_features: torch.Tensor, **context: Any) -> torch.Tensor:
        value, gate = self.linear_1(self.features(image_features)).chunk(2, dim=-1)
        return self.tokens(self.linear_2(F.silu(gate) * value))
