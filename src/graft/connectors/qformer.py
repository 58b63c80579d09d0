"""BLIP-2's Q-Former (``qformer``) and InstructBLIP's instruction-aware one (``qformer_instruct``).

Learned query tokens run through a BERT-style encoder that cross-attends to the image features
every ``cross_attention_frequency`` layers; the query outputs go through
Linear(d_q -> d_llm). The encoder is transformers' own ``Blip2QFormerModel`` /
``InstructBlipQFormerModel`` (no vendored BERT), and the parameter names follow
``Blip2ForConditionalGeneration`` (``query_tokens``, ``qformer``, ``language_projection``) so
published weights map over by prefix.

``qformer_instruct`` also reads the instruction, tokenized by the Q-Former's own tokenizer
(``GraftProcessor(instruction_tokenizer=...)``): its tokens join the queries in self-attention
and only the query outputs go on. The model hands it one instruction row per image.

Options: ``num_query_tokens`` (32), ``qformer_config`` (a dict for the transformers Q-Former
config: ``hidden_size``, ``num_hidden_layers``, ``num_attention_heads``, ``intermediate_size``,
``cross_attention_frequency``, ...; ``encoder_hidden_size`` is the vision hidden size),
``vision_layernorm`` (a LayerNorm over the image features first: BLIP-2's ``ln_vision``, which
transformers keeps as the ViT's ``post_layernorm``) and ``vision_layernorm_eps``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn
from transformers import (
    Blip2QFormerConfig,
    Blip2QFormerModel,
    InstructBlipQFormerConfig,
    InstructBlipQFormerModel,
    PreTrainedConfig,
)
from transformers import initialization as init

from graft.connectors.base import Connector
from graft.connectors.registry import register_connector


class _QFormerConnector(Connector):
    config_class: ClassVar[type[PreTrainedConfig]]
    model_class: ClassVar[type[nn.Module]]

    def __init__(
        self,
        vision_hidden_size: int,
        text_hidden_size: int,
        num_query_tokens: int = 32,
        qformer_config: dict[str, Any] | None = None,
        vision_layernorm: bool = False,
        vision_layernorm_eps: float = 1e-6,
        **options: Any,
    ) -> None:
        super().__init__(vision_hidden_size, text_hidden_size)
        if options:
            raise ValueError(f"connector {self.name!r} got unknown options: {', '.join(sorted(options))}")
        if num_query_tokens < 1:
            raise ValueError(
                f"connector {self.name!r}: num_query_tokens must be >= 1, got {num_query_tokens}"
            )
        config = self._qformer_config(qformer_config or {}, vision_hidden_size)
        self.num_query_tokens = num_query_tokens
        self.query_tokens = nn.Parameter(torch.zeros(1, num_query_tokens, config.hidden_size))
        self.vision_layernorm = (
            nn.LayerNorm(vision_hidden_size, eps=vision_layernorm_eps) if vision_layernorm else None
        )
        self.qformer = self.model_class(config)
        self.language_projection = nn.Linear(config.hidden_size, text_hidden_size)
        self.init_connector_weights()

    def _qformer_config(self, settings: dict[str, Any], vision_hidden_size: int) -> PreTrainedConfig:
        valid = set(self.config_class().to_dict())
        unknown = sorted(set(settings) - valid)
        if unknown:
            # name the Q-Former's own keys, not every generic config field
            own = sorted(valid - set(PreTrainedConfig().to_dict()) - {"model_type"})
            raise ValueError(
                f"connector {self.name!r}: unknown qformer_config keys {', '.join(unknown)}; "
                f"valid: {', '.join(own)}"
            )
        encoder = settings.get("encoder_hidden_size", vision_hidden_size)
        if encoder != vision_hidden_size:
            raise ValueError(
                f"connector {self.name!r}: qformer_config.encoder_hidden_size={encoder} but the vision "
                f"features are {vision_hidden_size}-dimensional"
            )
        return self.config_class(**{**settings, "encoder_hidden_size": vision_hidden_size})

    @property
    def query_hidden_size(self) -> int:
        return self.query_tokens.shape[-1]

    def init_connector_weights(self) -> None:
        """Fresh queries as LAVIS draws them (BLIP-2's loader zeroes them, then loads); flagged
        tensors (weights loaded by ``from_pretrained``) are left alone."""
        with torch.no_grad():
            init.normal_(self.query_tokens, mean=0.0, std=self.qformer.config.initializer_range)

    def num_tokens(self, num_patches: int) -> int:
        return self.num_query_tokens

    def query_outputs(
        self, image_features: torch.Tensor, queries: torch.Tensor | None = None, **context: Any
    ) -> torch.Tensor:
        """The Q-Former's query outputs ``[N, Q, d_q]`` for N images; ``queries`` (``[N, Q, d_q]``)
        replaces the learned ones (VPG-C's second pass)."""
        return self._run(image_features, queries, **context).last_hidden_state[:, : self.num_query_tokens]

    def _run(
        self,
        image_features: torch.Tensor,
        queries: torch.Tensor | None,
        output_attentions: bool = False,
        **context: Any,
    ) -> Any:
        """The Q-Former's output (``last_hidden_state``, and ``cross_attentions`` when asked)."""
        raise NotImplementedError

    @torch.no_grad()
    def cross_attention_map(self, image_features: torch.Tensor, **context: Any) -> torch.Tensor:
        """How much the queries look at each image feature: the cross-attention weights averaged
        over layers, heads and queries, ``[N, P]`` (each row sums to 1). Cheetah scores objects
        by it to edit the ones the VPG overlooks."""
        qformer = self.qformer
        previous = qformer.config._attn_implementation
        # sdpa and flash kernels never materialise the weights; eager does, with equal outputs
        qformer.set_attn_implementation("eager")
        try:
            out = self._run(image_features, None, output_attentions=True, **context)
        finally:
            qformer.set_attn_implementation(previous)
        maps = torch.stack([a[:, :, : self.num_query_tokens].float() for a in out.cross_attentions])
        return maps.mean(dim=(0, 2, 3))

    def _prepare(
        self, image_features: torch.Tensor, queries: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.vision_layernorm is not None:
            image_features = self.vision_layernorm(image_features)
        if queries is None:
            queries = self.query_tokens.expand(image_features.shape[0], -1, -1)
        return image_features, queries

    def forward(self, image_features: torch.Tensor, **context: Any) -> torch.Tensor:
        return self.language_projection(self.query_outputs(image_features, **context))


@register_connector("qformer")
class QFormerConnector(_QFormerConnector):
    """BLIP-2: queries x image features -> ``Blip2QFormerModel`` -> Linear(d_q -> d_llm)."""

    config_class = Blip2QFormerConfig
    model_class = Blip2QFormerModel

    def _run(
        self,
        image_features: torch.Tensor,
        queries: torch.Tensor | None,
        output_attentions: bool = False,
        **context: Any,
    ) -> Any:
        image_features, queries = self._prepare(image_features, queries)
        return self.qformer(
            query_embeds=queries,
            encoder_hidden_states=image_features,
            output_attentions=output_attentions,
            return_dict=True,
        )


@register_connector("qformer_instruct")
class InstructQFormerConnector(_QFormerConnector):
    """InstructBLIP: the instruction's tokens join the queries in self-attention."""

    needs_instruction = True
    config_class = InstructBlipQFormerConfig
    model_class = InstructBlipQFormerModel

    def _run(
        self,
        image_features: torch.Tensor,
        queries: torch.Tensor | None,
        output_attentions: bool = False,
        instruction_ids: torch.Tensor | None = None,
        instruction_mask: torch.Tensor | None = None,
        **context: Any,
    ) -> Any:
        if instruction_ids is None:
            raise ValueError(
                f"connector {self.name!r} needs each image's instruction (instruction_ids): give the "
                "processor the Q-Former's tokenizer (GraftProcessor(instruction_tokenizer=...))"
            )
        n = image_features.shape[0]
        if instruction_ids.shape[0] != n:
            raise ValueError(
                f"connector {self.name!r}: {instruction_ids.shape[0]} instruction rows for {n} images "
                "(one row per image)"
            )
        image_features, queries = self._prepare(image_features, queries)
        if instruction_mask is None:
            instruction_mask = torch.ones_like(instruction_ids)
        query_mask = torch.ones(queries.shape[:2], dtype=instruction_mask.dtype, device=queries.device)
        # only the query rows go on (query_outputs cuts them): the instruction rows just guide them
        return self.qformer(
            input_ids=instruction_ids,
            attention_mask=torch.cat([query_mask, instruction_mask.to(queries.device)], dim=1),
            query_embeds=queries,
            encoder_hidden_states=image_features,
            output_attentions=output_attentions,
            return_dict=True,
        )
