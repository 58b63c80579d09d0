"""graft model -> ``LlavaForConditionalGeneration``, in memory.

The conversion moves modules instead of copying state dicts (as ``backbones.compose`` does), so a
7B model is never held twice; only the projector is new. A ``linear`` connector becomes
``projector_hidden_act="linear"`` with ``linear_2`` the identity (zero bias), which keeps the
function exact.
"""

from __future__ import annotations

import copy

import torch
from accelerate import init_empty_weights
from torch import nn
from transformers import LlavaConfig, LlavaForConditionalGeneration
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

from graft.modeling import GraftForConditionalGeneration

#: graft connector name -> LLaVA ``projector_hidden_act``
PROJECTOR_ACTS = {"mlp2x_gelu": "gelu", "linear": "linear"}


class LlavaExportError(ValueError):
    """The graft model uses something LLaVA's layout cannot represent."""


def _check_exportable(model: GraftForConditionalGeneration) -> str:
    """The ``projector_hidden_act`` for this model, or an error naming the offending field."""
    spec = model.config.connector
    name = spec.get("name")
    if name not in PROJECTOR_ACTS:
        raise LlavaExportError(
            f"config.connector.name={name!r}: LLaVA's projector can only represent "
            f"{' or '.join(PROJECTOR_ACTS)}"
        )
    reduction = spec.get("reduction", "none")
    if reduction != "none":
        raise LlavaExportError(
            f"config.connector.reduction={reduction!r}: LLaVA cannot represent token reduction "
            "(it gives every patch feature its own soft token)"
        )
    head = model.language_model.get_output_embeddings()
    if not isinstance(head, nn.Linear) or head.bias is not None:
        raise LlavaExportError("language_model's output head: LLaVA's lm_head is a Linear without bias")
    return PROJECTOR_ACTS[name]


def llava_config(model: GraftForConditionalGeneration) -> LlavaConfig:
    """The ``LlavaConfig`` equivalent of a graft model's config."""
    act = _check_exportable(model)
    text_config = model.language_model.config
    config = LlavaConfig(
        vision_config=copy.deepcopy(model.vision_tower.config),
        text_config=copy.deepcopy(text_config),
        image_token_index=model.config.image_token_id,
        image_seq_length=model.config.image_seq_length,
        vision_feature_layer=model.config.vision_feature_layer,
        vision_feature_select_strategy=model.config.vision_feature_select_strategy,
        projector_hidden_act=act,
        multimodal_projector_bias=bool(model.config.connector.get("bias", True)),
        tie_word_embeddings=bool(getattr(text_config, "tie_word_embeddings", False)),
        pad_token_id=model.config.pad_token_id,
        bos_token_id=model.config.bos_token_id,
        eos_token_id=model.config.eos_token_id,
    )
    config.dtype = model.dtype
    return config


@torch.no_grad()
def _llava_projector(model: GraftForConditionalGeneration, config: LlavaConfig) -> nn.Module:
    connector = model.connector
    ref = connector.linear_1.weight
    projector = LlavaMultiModalProjector(config).to(device=ref.device, dtype=ref.dtype)
    projector.linear_1.load_state_dict(connector.linear_1.state_dict())
    if config.projector_hidden_act == "gelu":
        projector.linear_2.load_state_dict(connector.linear_2.state_dict())
    else:  # "linear": act is the identity, so linear_2 = I keeps the function exact
        projector.linear_2.weight.copy_(torch.eye(config.text_config.hidden_size))
        if projector.linear_2.bias is not None:
            projector.linear_2.bias.zero_()
    return projector


def to_llava(model: GraftForConditionalGeneration) -> LlavaForConditionalGeneration:
    """A ``LlavaForConditionalGeneration`` that *shares* the graft model's backbone modules
    (nothing big is copied; the projector is new). Deep-copy it to train both independently."""
    config = llava_config(model)
    with init_empty_weights():
        llava = LlavaForConditionalGeneration(config)
    llava.model.vision_tower = model.vision_tower
    llava.model.language_model = model.language_model.base_model
    llava.lm_head = model.language_model.get_output_embeddings()
    llava.model.multi_modal_projector = _llava_projector(model, config)
    llava.generation_config = copy.deepcopy(model.generation_config)
    meta = [n for n, p in llava.named_parameters() if p.device.type == "meta"]
    if meta:  # the LLM's base model and head hold every weight: anything left is a layout change
        raise LlavaExportError(f"parameters without weights after conversion: {', '.join(meta[:5])}")
    return llava.train(model.training)
