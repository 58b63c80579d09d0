"""Run a batch's shared opening once: the system prompt every chat sample starts with.

A chat template opens every sample with the same tokens (SmolLM2's default system prompt and user
header are 24 of the demo's 83-token warm-up samples; Vicuna's, 35). In training they are
never supervised, yet a padded batch runs them through every layer once per sample. Here the
decoder runs them once, for the first sample, keeping their keys and values in a
``DynamicCache``; the cache is repeated along the batch and the rest of every sample attends to
it. The function computed is the same (tested: loss and every gradient equal the plain forward's);
only the prefix's share of the FLOPs is divided by the batch size.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import DynamicCache, PretrainedConfig

from graft.config import IGNORE_INDEX

#: below this many shared tokens the extra batch-of-one pass costs more than it saves
MIN_SHARED_PREFIX = 8


def shareable(text_config: PretrainedConfig) -> bool:
    """Whether every layer attends to the whole past (no sliding or chunked windows), so a cache
    of the prefix gives each later token what the plain forward gives it."""
    layer_types = getattr(text_config, "layer_types", None) or ["full_attention"]
    return (
        all(kind == "full_attention" for kind in layer_types)
        and getattr(text_config, "sliding_window", None) is None
        and getattr(text_config, "attention_chunk_size", None) is None
    )


def shared_prefix_length(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    labels: torch.Tensor,
    image_mask: torch.Tensor,
) -> int:
    """How many opening positions every row of the batch shares: the same token, attended, not an
    image placeholder (its embedding differs per image), and not predicting a supervised label.
    0 when it is shorter than ``MIN_SHARED_PREFIX`` or the batch has one row."""
    if input_ids.shape[0] < 2:
        return 0
    same = (input_ids == input_ids[:1]).all(0) & ~image_mask.any(0)
    if attention_mask is not None:
        same &= attention_mask.bool().all(0)
    # the hidden state at position i predicts labels[i + 1]: keep prefix positions unsupervised
    predicts = torch.zeros_like(same)
    predicts[:-1] = (labels[:, 1:] != IGNORE_INDEX).any(0)
    same &= ~predicts
    length = int(same.long().cumprod(0).sum())
    # the rest must keep at least one position, the one that predicts the first answer token
    length = min(length, input_ids.shape[1] - 1)
    return length if length >= MIN_SHARED_PREFIX else 0


def decode_after_shared_prefix(
    decoder: nn.Module,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    prefix: int,
    **kwargs: Any,
) -> torch.Tensor:
    """The decoder's last hidden states at positions ``prefix`` onward, the first ``prefix``
    positions (the same in every row) run once."""
    batch = inputs_embeds.shape[0]
    cache = DynamicCache(config=decoder.config)
    if position_ids is None:
        opening = torch.arange(prefix, device=inputs_embeds.device).unsqueeze(0)
    else:
        opening = position_ids[:1, :prefix]
    decoder(
        inputs_embeds=inputs_embeds[:1, :prefix],
        position_ids=opening,
        cache=cache,
        use_cache=True,
        **kwargs,
    )
    cache.batch_repeat_interleave(batch)
    return decoder(
        inputs_embeds=inputs_embeds[:, prefix:],
        attention_mask=attention_mask,
        position_ids=None if position_ids is None else position_ids[:, prefix:],
        cache=cache,
        use_cache=True,
        **kwargs,
    ).last_hidden_state
