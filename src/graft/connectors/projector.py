"""LLaVA's projectors: ``linear`` (LLaVA) and ``mlp2x_gelu`` (LLaVA-1.5).

Parameter names follow transformers' ``LlavaMultiModalProjector`` (``linear_1``, ``linear_2``)
so export to ``LlavaForConditionalGeneration`` is a rename of the prefix only. With
``layer_norm=True`` the (reduced) features are layer-normed first, as InternVL's projector does
after its pixel shuffle (``InternVLMultiModalProjector``: ``layer_norm``, ``linear_1``, ``linear_2``),
which is how a token-reducing projector exports.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from graft.connectors.base import Connector
from graft.connectors.reduction import TokenReduction
from graft.connectors.registry import register_connector


class _Projector(Connector):
    def __init__(
        self,
        vision_hidden_size: int,
        text_hidden_size: int,
        reduction: str = "none",
        reduction_factor: int = 2,
        bias: bool = True,
        layer_norm: bool = False,
        **options: Any,
    ) -> None:
        super().__init__(vision_hidden_size, text_hidden_size)
        if options:
            raise ValueError(f"connector {self.name!r} got unknown options: {', '.join(sorted(options))}")
        self.reduction = TokenReduction(reduction, reduction_factor)
        self.in_features = vision_hidden_size * self.reduction.channel_multiplier()
        self.bias = bias
        self.layer_norm = nn.LayerNorm(self.in_features) if layer_norm else nn.Identity()

    def features(self, image_features: torch.Tensor) -> torch.Tensor:
        """The projector's input: reduced, then layer-normed where asked."""
        return self.layer_norm(self.reduction(image_features))

    def num_tokens(self, num_patches: int) -> int:
        return self.reduction.num_tokens(num_patches)


@register_connector("linear")
class LinearProjector(_Projector):
    """One Linear(d_vis -> d_llm)."""

    def __init__(self, vision_hidden_size: int, text_hidden_size: int, **options: Any) -> None:
        super().__init__(vision_hidden_size, text_hidden_size, **options)
        self.linear_1 = nn.Linear(self.in_features, text_hidden_size, bias=self.bias)

    def forward(self, image_features: torch.Tensor, **context: Any) -> torch.Tensor:
        return self.linear_1(self.features(image_features))


@register_connector("mlp2x_gelu")
class MLPProjector(_Projector):
    """Linear(d_vis -> d_llm), GELU, Linear(d_llm -> d_llm)."""

    def __init__(self, vision_hidden_size: int, text_hidden_size: int, **options: Any) -> None:
        super().__init__(vision_hidden_size, text_hidden_size, **options)
        self.linear_1 = nn.Linear(self.in_features, text_hidden_size, bias=self.bias)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(text_hidden_size, text_hidden_size, bias=self.bias)

    def forward(self, image_features: torch.Tensor, **context: Any) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(self.features(image_features))))
