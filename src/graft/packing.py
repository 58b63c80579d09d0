"""Padding-free batches: a micro-batch flattened to one row, each sample attending only to itself.

``pack_batch`` turns a right-padded training batch into one row of every sample's real tokens,
with ``position_ids`` restarting at each sample, the first label of each sample ignored (it would
be predicted from the previous sample's last token) and the boundaries precomputed as
flash-attention's ``cu_seq_lens_q`` / ``cu_seq_lens_k`` and ``max_length_q`` / ``max_length_k``.
transformers hands those keyword arguments down to the attention function: on a GPU with
flash-attention its variable-length kernels use them; elsewhere ``packed_attention`` — registered
with transformers' ``AttentionInterface`` as ``graft_packed`` — runs scaled-dot-product attention
per sample. Images need nothing: their features are concatenated in order of appearance already.

No padding enters the matmuls, which is where the time goes once samples differ in length; with
labels-only logits (``supervised_logits_only``) the vocabulary head runs on the answers only.
A packed row must not meet the KV cache or an attention mask (transformers would then attend
across samples): the model refuses both.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
from torch.nn import functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from graft.config import IGNORE_INDEX

#: the attention implementation name graft registers with transformers
PACKED_ATTENTION = "graft_packed"
#: the keyword arguments that mark a packed batch
PACKED_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


def pack_batch(batch: dict[str, Any]) -> dict[str, Any]:
    """One row of a right-padded batch's real tokens, with per-sample positions and boundaries.

    Every other key (``pixel_values``, ``image_keys``, ``ids`` ...) is kept as it is: images are
    in order of appearance either way."""
    mask = batch["attention_mask"].bool()
    lengths = mask.sum(dim=1)
    labels = batch["labels"].clone()
    labels[:, 0] = IGNORE_INDEX  # each sample's first label would be read from its neighbour
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = lengths.cumsum(0)
    longest = int(lengths.max())
    packed = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask", "labels")}
    packed.update(
        input_ids=batch["input_ids"][mask].unsqueeze(0),
        labels=labels[mask].unsqueeze(0),
        position_ids=torch.cat([torch.arange(int(n)) for n in lengths]).unsqueeze(0),
        cu_seq_lens_q=cu,
        cu_seq_lens_k=cu,
        max_length_q=longest,
        max_length_k=longest,
    )
    return packed


def is_packed(inputs: dict[str, Any]) -> bool:
    return inputs.get("cu_seq_lens_q") is not None


def packed_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Causal attention within each sample of a packed row (``[1, heads, T, dim]``); without
    ``cu_seq_lens_q`` it is transformers' SDPA attention, so an unpacked batch works as before."""
    bounds = kwargs.get("cu_seq_lens_q")
    if bounds is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    if query.shape[0] != 1:
        raise ValueError(f"a packed batch is one row, got {query.shape[0]}")
    groups = query.shape[1] // key.shape[1]
    if groups > 1:  # grouped-query attention: every query head reads its key/value head
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    edges = bounds.tolist()
    pieces = [
        F.scaled_dot_product_attention(
            query[:, :, a:b],
            key[:, :, a:b],
            value[:, :, a:b],
            dropout_p=dropout,
            is_causal=True,
            scale=scaling,
        )
        for a, b in zip(edges[:-1], edges[1:], strict=True)
    ]
    return torch.cat(pieces, dim=2).transpose(1, 2).contiguous(), None


AttentionInterface.register(PACKED_ATTENTION, packed_attention)
AttentionMaskInterface.register(PACKED_ATTENTION, sdpa_mask)  # unpacked batches: SDPA's masks


def packed_implementation(device: torch.device) -> str:
    """flash-attention's variable-length kernels on a GPU that has them, else ``graft_packed``."""
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return PACKED_ATTENTION


def enable_packing(model: Any, device: torch.device) -> str:
    """Switch the LLM's attention to one that reads packed boundaries; returns its name."""
    name = packed_implementation(device)
    model.language_model.set_attn_implementation(name)
    return name


def check_packed_call(
    model: Any, inputs: dict[str, Any], attention_mask: Any, use_cache: bool | None
) -> None:
    """Refuse what would silently attend across the samples of a packed row."""
    if attention_mask is not None:
        raise ValueError("a packed batch takes no attention_mask (transformers would attend across samples)")
    if use_cache:
        raise ValueError("a packed batch cannot use the KV cache: pass use_cache=False")
    implementation = model.language_model.config._attn_implementation
    if implementation != PACKED_ATTENTION and not str(implementation).startswith("flash_attention"):
        raise ValueError(
            f"the LLM's attention ({implementation}) ignores packed boundaries: call "
            "graft.packing.enable_packing(model, device) first"
        )
    if model.connector.needs_instruction or model.connector.needs_llm_hidden:
        raise ValueError(
            f"{type(model.connector).__name__} reads each sample's own prompt, which a packed row does "
            "not keep apart: train it without data.packing"
        )
