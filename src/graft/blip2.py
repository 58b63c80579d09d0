"""Build a graft model from a BLIP-2 / InstructBLIP checkpoint's visual half and another LLM.

This is how Cheetah was built: BLIP-2's ViT, Q-Former and queries, Vicuna as the LLM. The
checkpoint loads through transformers (``Blip2ForConditionalGeneration`` /
``InstructBlipForConditionalGeneration``); its vision model becomes the vision tower and its
``query_tokens``, ``qformer`` and ``language_projection`` go into a ``qformer`` /
``qformer_instruct`` connector (or into the Q-Former that a ``vpgc`` connector guides), whose
parameter names match by design.

BLIP-2 feeds the Q-Former the ViT's last layer with its ``post_layernorm`` applied (BLIP-2's
``ln_vision``), and transformers applies that norm only to ``last_hidden_state``, not to
``hidden_states[-1]``. So the model selects ``vision_feature_layer=-1`` with all tokens
(``"full"``), and the connector gets ``vision_layernorm`` with the post_layernorm weights.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    Blip2ForConditionalGeneration,
    InstructBlipForConditionalGeneration,
    PreTrainedConfig,
    PreTrainedTokenizerBase,
)

from graft.backbones import compose, load_llm, naming_source
from graft.connectors.qformer import _QFormerConnector
from graft.modeling import GraftForConditionalGeneration
from graft.processing import load_image_processor, load_tokenizer

logger = logging.getLogger(__name__)

#: the checkpoint's model_type -> (transformers class, the graft connector holding its Q-Former)
CHECKPOINTS: dict[str, tuple[type, str]] = {
    "blip-2": (Blip2ForConditionalGeneration, "qformer"),
    "instructblip": (InstructBlipForConditionalGeneration, "qformer_instruct"),
}
CONNECTORS = ("qformer", "qformer_instruct", "vpgc")
#: where ``InstructBlipProcessor.save_pretrained`` puts the Q-Former's own tokenizer
QFORMER_TOKENIZER_DIR = "qformer_tokenizer"


def _qformer_settings(qformer_config: PreTrainedConfig) -> dict[str, Any]:
    """The Q-Former config's own, non-default settings (``encoder_hidden_size`` is set by the
    connector from the vision tower)."""
    defaults = type(qformer_config)().to_dict()
    generic = set(PreTrainedConfig().to_dict()) | {"model_type", "encoder_hidden_size"}
    given = qformer_config.to_dict()
    return {
        key: given[key]
        for key in defaults
        if key not in generic and key in given and given[key] != defaults[key]
    }


def _qformer_of(model: GraftForConditionalGeneration) -> _QFormerConnector:
    connector = model.connector
    return connector.vpg if model.config.connector["name"] == "vpgc" else connector


def check_blip2(blip2_dir: str, connector: str = "qformer", **vpgc_options: Any) -> str:
    """The checkpoint's ``model_type``, once its config (nothing more is read) shows that
    ``connector`` and ``vpgc_options`` fit it; else a ValueError or OSError saying what does not."""
    if connector not in CONNECTORS:
        raise ValueError(
            f"unknown connector {connector!r} for a BLIP-2 graft (valid: {', '.join(CONNECTORS)})"
        )
    if vpgc_options and connector != "vpgc":
        raise ValueError(
            f"options {', '.join(sorted(vpgc_options))} are for connector 'vpgc', not {connector!r}"
        )
    if os.path.isdir(blip2_dir) and not os.path.isfile(os.path.join(blip2_dir, "config.json")):
        raise FileNotFoundError(
            f"{blip2_dir}: no config.json in this folder; give a BLIP-2 or InstructBLIP checkpoint folder"
        )
    with naming_source("the BLIP-2 checkpoint", blip2_dir):
        model_type = AutoConfig.from_pretrained(blip2_dir).model_type
    if model_type not in CHECKPOINTS:
        raise ValueError(
            f"{blip2_dir}: model_type {model_type!r} is not a BLIP-2 / InstructBLIP checkpoint "
            f"(valid: {', '.join(CHECKPOINTS)})"
        )
    qformer_name = CHECKPOINTS[model_type][1]
    if connector != "vpgc" and connector != qformer_name:
        raise ValueError(
            f"{blip2_dir} is a {model_type} checkpoint: its Q-Former goes into connector "
            f"{qformer_name!r} (or 'vpgc'), not {connector!r}"
        )
    return model_type


def compose_from_blip2(
    blip2_dir: str,
    llm_dir: str,
    connector: str = "qformer",
    tokenizer_dir: str | None = None,
    dtype: torch.dtype | None = None,
    **vpgc_options: Any,
) -> tuple[GraftForConditionalGeneration, PreTrainedTokenizerBase, Any, PreTrainedTokenizerBase | None]:
    """Graft a BLIP-2 / InstructBLIP checkpoint's ViT + Q-Former onto the LLM in ``llm_dir``.

    ``connector``: ``"qformer"`` / ``"qformer_instruct"`` (must match the checkpoint) or
    ``"vpgc"`` (Cheetah's guidance around the checkpoint's Q-Former; ``vpgc_options`` such as
    ``guidance_layer`` go into its spec). Returns (model, LLM tokenizer, image processor,
    Q-Former tokenizer); the last is the checkpoint's ``qformer_tokenizer`` folder for
    InstructBLIP (give it to ``GraftProcessor(instruction_tokenizer=...)``), else None.
    """
    checkpoint_class, qformer_name = CHECKPOINTS[check_blip2(blip2_dir, connector, **vpgc_options)]
    # the LLM's tokenizer before the checkpoint's weights: a wrong --llm fails at once
    with naming_source("the tokenizer" if tokenizer_dir else "the LLM", tokenizer_dir or llm_dir):
        tokenizer = load_tokenizer(tokenizer_dir or llm_dir)
    with naming_source("the BLIP-2 checkpoint", blip2_dir):
        source = checkpoint_class.from_pretrained(blip2_dir, dtype=dtype).eval()
    vision = source.vision_model
    vpg: dict[str, Any] = {
        "name": qformer_name,
        "num_query_tokens": source.config.num_query_tokens,
        "qformer_config": _qformer_settings(source.config.qformer_config),
        "vision_layernorm": True,
        "vision_layernorm_eps": vision.post_layernorm.eps,
    }
    spec = {"name": "vpgc", "vpg": vpg, **vpgc_options} if connector == "vpgc" else vpg

    with naming_source("the LLM", llm_dir):
        llm = load_llm(llm_dir, dtype)
    model = compose(
        vision,
        llm,
        tokenizer,
        connector=spec,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
    )
    target = _qformer_of(model)
    with torch.no_grad():
        target.query_tokens.copy_(source.query_tokens)
        target.qformer.load_state_dict(source.qformer.state_dict())
        target.vision_layernorm.load_state_dict(vision.post_layernorm.state_dict())
        projection = source.language_projection
        if projection.out_features == target.language_projection.out_features:
            target.language_projection.load_state_dict(projection.state_dict())
        else:
            # the projection was trained for the checkpoint's own LLM; a new LLM needs a new one
            logger.warning(
                "%s: language_projection maps to %d dims but %s has %d; using a fresh projection",
                blip2_dir,
                projection.out_features,
                llm_dir,
                target.language_projection.out_features,
            )
    if connector == "vpgc":
        model.connector.reset_guidance()  # Q_new starts from the loaded queries
    del source  # the checkpoint's own LLM is not needed

    qformer_tokenizer = None
    if qformer_name == "qformer_instruct":
        folder = Path(blip2_dir) / QFORMER_TOKENIZER_DIR
        if folder.is_dir():
            qformer_tokenizer = load_tokenizer(str(folder))
        else:
            logger.warning(
                "%s has no %s/ folder: give GraftProcessor the Q-Former's tokenizer yourself",
                blip2_dir,
                QFORMER_TOKENIZER_DIR,
            )
    return model, tokenizer, load_image_processor(blip2_dir), qformer_tokenizer
