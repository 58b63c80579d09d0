"""A transformers LLaVA folder (llava-hf's published layout or the current one) -> graft.

transformers' own ``from_pretrained`` reads either key layout; the modules then move into a graft
model (nothing big is copied) and the projector becomes a ``mlp2x_gelu`` or ``linear`` connector.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from torch import nn
from transformers import AutoModelForCausalLM, LlavaConfig, LlavaForConditionalGeneration

from graft.backbones import compose
from graft.config import DEFAULT_IMAGE_TOKEN
from graft.export.model import ExportError
from graft.files import atomic_dir
from graft.modeling import GraftForConditionalGeneration
from graft.processing import GraftProcessor, load_image_processor, load_tokenizer
from graft.templates import DEFAULT_TEMPLATE


def _connector_spec(config: LlavaConfig, projector: nn.Module) -> dict[str, Any]:
    spec: dict[str, Any] = {"bias": bool(config.multimodal_projector_bias)}
    act = config.projector_hidden_act
    if act == "gelu":
        return {"name": "mlp2x_gelu", **spec}
    w2 = projector.linear_2.weight
    identity = torch.equal(w2, torch.eye(w2.shape[0], dtype=w2.dtype, device=w2.device))
    zero_bias = projector.linear_2.bias is None or not projector.linear_2.bias.any()
    if act == "linear" and identity and zero_bias:
        return {"name": "linear", **spec}
    raise ExportError(
        f"projector_hidden_act={act!r}"
        + (" with a linear_2 that is not the identity" if act == "linear" else "")
        + ": graft imports 'gelu' (as mlp2x_gelu) or 'linear' with linear_2 = identity (as linear)"
    )


def _llava_image_token(llava_dir: Path) -> str:
    path = llava_dir / "processor_config.json"
    if path.exists():
        return json.loads(path.read_text()).get("image_token", DEFAULT_IMAGE_TOKEN)
    return DEFAULT_IMAGE_TOKEN


def import_from_llava(
    llava_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    template: str = DEFAULT_TEMPLATE,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
) -> tuple[GraftForConditionalGeneration, GraftProcessor]:
    """Load a transformers LLaVA folder (either key layout, llava-hf's included) as a graft model
    and processor; save them to ``out_dir`` when given."""
    llava_dir = Path(llava_dir)
    llava = LlavaForConditionalGeneration.from_pretrained(llava_dir, dtype=dtype)
    config = llava.config
    if not isinstance(config.vision_feature_layer, int):
        raise ExportError(
            f"vision_feature_layer={config.vision_feature_layer!r}: graft selects a single layer"
        )
    projector = llava.model.multi_modal_projector
    spec = _connector_spec(config, projector)

    # the LLM as a causal LM: the base model and head move over, nothing is allocated twice
    with init_empty_weights():
        llm = AutoModelForCausalLM.from_config(config.text_config)
    setattr(llm, llm.base_model_prefix, llava.model.language_model)
    llm.set_output_embeddings(llava.lm_head)

    tokenizer = load_tokenizer(str(llava_dir))
    image_token = _llava_image_token(llava_dir)
    token_id = tokenizer.convert_tokens_to_ids(image_token)
    if token_id != config.image_token_index:
        raise ExportError(
            f"image_token_index={config.image_token_index} but the tokenizer maps "
            f"{image_token!r} to {token_id}"
        )
    model = compose(
        llava.model.vision_tower,
        llm,
        tokenizer,
        connector=spec,
        vision_feature_layer=config.vision_feature_layer,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        image_token=image_token,
    )
    with torch.no_grad():
        model.connector.linear_1.load_state_dict(projector.linear_1.state_dict())
        if spec["name"] == "mlp2x_gelu":
            model.connector.linear_2.load_state_dict(projector.linear_2.state_dict())
    if model.config.image_seq_length != config.image_seq_length:
        raise ExportError(
            f"image_seq_length={config.image_seq_length} but the vision tower and "
            f"vision_feature_select_strategy give {model.config.image_seq_length} tokens per image"
        )
    meta = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if meta:
        raise ExportError(f"parameters without weights after import: {', '.join(meta[:5])}")
    model.generation_config = copy.deepcopy(llava.generation_config)
    if model.generation_config.pad_token_id is None:  # published folders often leave it unset
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()

    processor = GraftProcessor(
        tokenizer,
        load_image_processor(str(llava_dir)),
        model.config.image_seq_length,
        template=template,
        image_token=image_token,
    )
    if out_dir is not None:
        with atomic_dir(out_dir, overwrite) as tmp:
            model.save_pretrained(tmp)
            processor.save_pretrained(tmp)
    return model, processor
