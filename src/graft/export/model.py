"""graft model -> the transformers architecture that computes exactly the same function, in memory.

- ``LlavaForConditionalGeneration``: a ``linear`` or ``mlp2x_gelu`` projector on every patch
  feature (no token reduction, no LayerNorm). A ``linear`` connector becomes
  ``projector_hidden_act="linear"`` with ``linear_2`` the identity (zero bias).
- ``AyaVisionForConditionalGeneration``: the ``swiglu`` projector with ``layer_norm`` (pixel
  shuffle or none). Aya Vision takes any vision tower and LLM through the Auto classes, drops CLS
  as LLaVA does, and its pixel shuffle orders tokens and channels as graft's ``TokenReduction``.
- ``GraftCellsForConditionalGeneration`` (``graft.remote.modeling_graft_cells``): the same with
  what only the demo's cell connectors have (``CELL_FIELDS``), which no transformers architecture
  represents: Aya Vision with graft's cell adapter, as remote code the folder carries.

The conversion moves modules instead of copying state dicts (as ``backbones.compose`` does), so a
7B model is never held twice; only the projector is new.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from accelerate import init_empty_weights
from torch import nn
from transformers import (
    AyaVisionConfig,
    AyaVisionForConditionalGeneration,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.models.aya_vision.modeling_aya_vision import AyaVisionMultiModalProjector
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

from graft.modeling import GraftForConditionalGeneration
from graft.remote.modeling_graft_cells import (
    CELL_FIELDS,
    GraftCellsConfig,
    GraftCellsForConditionalGeneration,
    GraftCellsProjector,
)

#: graft connector name -> LLaVA ``projector_hidden_act``
PROJECTOR_ACTS = {"mlp2x_gelu": "gelu", "linear": "linear"}
LLAVA, AYA_VISION = "LlavaForConditionalGeneration", "AyaVisionForConditionalGeneration"


#: what only the demo's cell connectors have (``CELL_FIELDS``: each with the value that Aya
#: Vision's adapter implies): a model with another exports as ``GRAFT_CELLS``, whose code the folder carries
GRAFT_CELLS = "GraftCellsForConditionalGeneration"
MODEL_CLASSES: dict[type, type[PreTrainedModel]] = {
    LlavaConfig: LlavaForConditionalGeneration,
    AyaVisionConfig: AyaVisionForConditionalGeneration,
    GraftCellsConfig: GraftCellsForConditionalGeneration,
}


class ExportError(ValueError):
    """The graft model uses something no transformers architecture graft exports to represents."""


def export_architecture(model: GraftForConditionalGeneration) -> str:
    """The transformers class the model exports to, or an ``ExportError`` naming the field."""
    spec = model.config.connector
    name, reduction = spec.get("name"), spec.get("reduction", "none")
    layer_norm = bool(spec.get("layer_norm", False))
    head = model.language_model.get_output_embeddings()
    if not isinstance(head, nn.Linear) or head.bias is not None:
        raise ExportError("language_model's output head: transformers' lm_head is a Linear without bias")
    cells = {field: spec[field] for field, plain in CELL_FIELDS.items() if spec.get(field, plain) != plain}
    if name == "swiglu":
        if not layer_norm:
            raise ExportError(
                "config.connector.layer_norm=False: the swiglu projector exports as Aya Vision's "
                "adapter, which layer-norms its input (compose it with layer_norm)"
            )
        if reduction not in ("none", "pixel_shuffle"):
            raise ExportError(
                f"config.connector.reduction={reduction!r}: Aya Vision reduces tokens by pixel_shuffle only"
            )
        return GRAFT_CELLS if cells else AYA_VISION
    if cells:
        field, value = next(iter(cells.items()))
        raise ExportError(
            f"config.connector.{field}={value}: only the swiglu projector with layer_norm exports it "
            "(as Aya Vision with graft's cell adapter)"
        )
    if name == "lexical":
        raise ExportError(
            "config.connector.name='lexical': no transformers architecture has its word head; snap it "
            "onto swiglu first (graft.train.snap, the demo's snap step), then export that model"
        )
    if name not in PROJECTOR_ACTS:
        raise ExportError(
            f"config.connector.name={name!r}: transformers represents {' or '.join(PROJECTOR_ACTS)} "
            "(as LLaVA) and swiglu with layer_norm (as Aya Vision)"
        )
    if reduction != "none":
        raise ExportError(
            f"config.connector.reduction={reduction!r}: LLaVA cannot represent token reduction "
            "(it gives every patch feature its own soft token); the swiglu projector with "
            "pixel_shuffle and layer_norm exports as Aya Vision"
        )
    if layer_norm:
        raise ExportError("config.connector.layer_norm=True: LLaVA's projector has no LayerNorm")
    return LLAVA


def _shared_fields(model: GraftForConditionalGeneration) -> dict[str, Any]:
    text_config = model.language_model.config
    return dict(
        vision_config=copy.deepcopy(model.vision_tower.config),
        text_config=copy.deepcopy(text_config),
        vision_feature_layer=model.config.vision_feature_layer,
        vision_feature_select_strategy=model.config.vision_feature_select_strategy,
        tie_word_embeddings=bool(getattr(text_config, "tie_word_embeddings", False)),
        pad_token_id=model.config.pad_token_id,
        bos_token_id=model.config.bos_token_id,
        eos_token_id=model.config.eos_token_id,
    )


def transformers_config(model: GraftForConditionalGeneration) -> PretrainedConfig:
    """The ``LlavaConfig`` or ``AyaVisionConfig`` equivalent of a graft model's config."""
    architecture = export_architecture(model)
    spec = model.config.connector
    if architecture == LLAVA:
        config: PretrainedConfig = LlavaConfig(
            **_shared_fields(model),
            image_token_index=model.config.image_token_id,
            image_seq_length=model.config.image_seq_length,
            projector_hidden_act=PROJECTOR_ACTS[spec["name"]],
            multimodal_projector_bias=bool(spec.get("bias", True)),
        )
    else:
        cells = {field: spec.get(field, plain) for field, plain in CELL_FIELDS.items()}
        config = (AyaVisionConfig if architecture == AYA_VISION else GraftCellsConfig)(
            **_shared_fields(model),
            **({} if architecture == AYA_VISION else cells),
            image_token_index=model.config.image_token_id,
            downsample_factor=model.connector.reduction.factor,
            adapter_layer_norm_eps=model.connector.layer_norm.eps,
            alignment_intermediate_size=model.connector.intermediate_size,
        )
        # transformers >= 5.25 scales Aya Vision's logits by the text config's ``logit_scale``
        # (Cohere2's field); a text config without one (Llama's) would fail there: 1.0 keeps the
        # LLM's own logits, and versions before ignore it
        if not hasattr(config.text_config, "logit_scale"):
            config.text_config.logit_scale = 1.0
    config.dtype = model.dtype
    return config


@torch.no_grad()
def _projector(model: GraftForConditionalGeneration, config: PretrainedConfig) -> nn.Module:
    """transformers' projector holding the graft connector's weights (absent biases as zeros)."""
    connector = model.connector
    ref = connector.linear_1.weight
    if isinstance(config, GraftCellsConfig):
        projector: nn.Module = GraftCellsProjector(config)
        projector.layernorm.load_state_dict(connector.layer_norm.state_dict())
        if projector.markers is not None:
            projector.markers.copy_(connector.markers)
    elif isinstance(config, AyaVisionConfig):
        projector = AyaVisionMultiModalProjector(config)
        projector.layernorm.load_state_dict(connector.layer_norm.state_dict())
    else:
        projector = LlavaMultiModalProjector(config)
    projector = projector.to(device=ref.device, dtype=ref.dtype)
    for name in ("linear_1", "linear_2"):
        ours, theirs = getattr(connector, name, None), getattr(projector, name)
        if ours is None:  # "linear" in LLaVA: act is the identity, so linear_2 = I keeps it exact
            theirs.weight.copy_(torch.eye(theirs.weight.shape[0]))
        else:
            theirs.weight.copy_(ours.weight)
        if theirs.bias is None:
            continue
        if ours is not None and ours.bias is not None:
            theirs.bias.copy_(ours.bias)
        else:
            theirs.bias.zero_()
    return projector


def to_transformers(model: GraftForConditionalGeneration) -> PreTrainedModel:
    """The transformers model (``export_architecture``) that *shares* the graft model's backbone
    modules (nothing big is copied; the projector is new). Deep-copy it to train both independently."""
    config = transformers_config(model)
    with init_empty_weights():
        hf_model = MODEL_CLASSES[type(config)](config)
    hf_model.model.vision_tower = model.vision_tower
    hf_model.model.language_model = model.language_model.base_model
    hf_model.lm_head = model.language_model.get_output_embeddings()
    hf_model.model.multi_modal_projector = _projector(model, config)
    hf_model.generation_config = copy.deepcopy(model.generation_config)
    meta = [n for n, p in hf_model.named_parameters() if p.device.type == "meta"]
    if meta:  # the LLM's base model and head hold every weight: anything left is a layout change
        raise ExportError(f"parameters without weights after conversion: {', '.join(meta[:5])}")
    return hf_model.train(model.training)
