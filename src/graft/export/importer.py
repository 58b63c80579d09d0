"""A transformers checkpoint folder -> graft: LLaVA (llava-hf's published layout or the current
one), Aya Vision (what ``graft export-hf`` writes for a ``swiglu`` model, or a published one) or
what it writes for a cell connector (Aya Vision with graft's cell adapter, read by graft's own
copy of the code the folder carries).

transformers' own ``from_pretrained`` reads either key layout; the modules then move into a graft
model (nothing big is copied) and the projector becomes a ``mlp2x_gelu`` or ``linear`` connector
(LLaVA) or a layer-normed ``swiglu`` one (Aya Vision, pixel shuffle as its ``downsample_factor``).
"""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AyaVisionConfig,
    AyaVisionForConditionalGeneration,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PreTrainedModel,
)

from graft.backbones import compose
from graft.config import DEFAULT_IMAGE_TOKEN
from graft.export.model import ExportError
from graft.export.processor import chat_template_problem, template_of
from graft.files import atomic_dir
from graft.modeling import GraftForConditionalGeneration
from graft.processing import GraftProcessor, load_image_processor, load_tokenizer
from graft.remote.modeling_graft_cells import (
    CELL_FIELDS,
    GraftCellsConfig,
    GraftCellsForConditionalGeneration,
    cell_field,
)
from graft.templates import DEFAULT_TEMPLATE, get_template

logger = logging.getLogger(__name__)

#: config.json's model_type -> the transformers class graft imports it through (graft's own copy
#: of the code a cell export carries, so no remote code runs)
IMPORTABLE = {
    "llava": LlavaForConditionalGeneration,
    "aya_vision": AyaVisionForConditionalGeneration,
    "graft_cells": GraftCellsForConditionalGeneration,
}


def _llava_spec(config: LlavaConfig, projector: nn.Module) -> dict[str, Any]:
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


def _connector_spec(config: LlavaConfig | AyaVisionConfig, projector: nn.Module) -> dict[str, Any]:
    """The graft connector that computes what the checkpoint's projector computes."""
    if not isinstance(config, AyaVisionConfig):
        return _llava_spec(config, projector)
    spec: dict[str, Any] = {
        "name": "swiglu",
        "layer_norm": True,
        "layer_norm_eps": config.adapter_layer_norm_eps,
        "intermediate_size": projector.linear_1.out_features,
    }
    if config.downsample_factor > 1:
        spec.update(reduction="pixel_shuffle", reduction_factor=config.downsample_factor)
    if isinstance(config, GraftCellsConfig):
        spec.update({field: cell_field(config, field) for field in CELL_FIELDS})
    return spec


def _read_checkpoint(folder: Path, dtype: torch.dtype | None) -> PreTrainedModel:
    """The folder's LLaVA or Aya Vision model, or an error naming the folder (missing, a file, no
    config.json) or its ``model_type``."""
    wanted = "give a transformers LLaVA or Aya Vision checkpoint folder"
    if not folder.exists():
        raise FileNotFoundError(f"{folder}: no such folder; {wanted}")
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is a file, not a folder; {wanted}")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: no config.json in this folder; {wanted}")
    # config.json itself, not AutoConfig: a cell export's config class is remote code
    try:
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    except (json.JSONDecodeError, AttributeError) as err:
        raise ExportError(f"{folder / 'config.json'}: not a JSON object ({err})") from None
    if model_type not in IMPORTABLE:
        raise ExportError(
            f"{folder / 'config.json'}: model_type={model_type!r}; graft imports "
            + " and ".join(repr(t) for t in IMPORTABLE)
            + " checkpoints"
        )
    return IMPORTABLE[model_type].from_pretrained(folder, dtype=dtype)


def _image_token(folder: Path) -> str:
    path = folder / "processor_config.json"
    if path.exists():
        return json.loads(path.read_text()).get("image_token", DEFAULT_IMAGE_TOKEN)
    return DEFAULT_IMAGE_TOKEN


def _template(folder: Path, tokenizer: Any, given: str | None) -> str:
    """The template to ask the imported model in: ``given``, else the one its chat template
    renders (``DEFAULT_TEMPLATE`` when none does, with a warning); a given template that the
    folder's chat template contradicts is warned about too."""
    shipped = getattr(tokenizer, "chat_template", None)
    if given is not None:
        problem = chat_template_problem(get_template(given), tokenizer, shipped) if shipped else None
        if problem:
            logger.warning("%s: its chat template %s (template %r)", folder, problem, given)
        return given
    found = template_of(tokenizer, shipped)
    if found is None:
        logger.warning(
            "%s: %s; asking it in %r (LLaVA-1.5's); pass --template if it was trained in another",
            folder,
            "no chat template" if not shipped else "its chat template matches none of graft's templates",
            DEFAULT_TEMPLATE,
        )
        return DEFAULT_TEMPLATE
    return found


def import_from_hf(
    folder: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    template: str | None = None,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
) -> tuple[GraftForConditionalGeneration, GraftProcessor]:
    """Load a transformers LLaVA folder (either key layout, llava-hf's included) or Aya Vision
    folder as a graft model and processor; save them to ``out_dir`` when given. ``template``
    None: graft's template that renders what the folder's chat template renders (``_template``)."""
    folder = Path(folder)
    hf = _read_checkpoint(folder, dtype)
    config = hf.config
    if not isinstance(config.vision_feature_layer, int):
        raise ExportError(
            f"vision_feature_layer={config.vision_feature_layer!r}: graft selects a single layer"
        )
    projector = hf.model.multi_modal_projector
    spec = _connector_spec(config, projector)

    # the LLM as a causal LM: the base model and head move over, nothing is allocated twice
    with init_empty_weights():
        llm = AutoModelForCausalLM.from_config(config.text_config)
    setattr(llm, llm.base_model_prefix, hf.model.language_model)
    llm.set_output_embeddings(hf.lm_head)

    tokenizer = load_tokenizer(str(folder), config)
    image_token = _image_token(folder)
    token_id = tokenizer.convert_tokens_to_ids(image_token)
    if token_id != config.image_token_index:
        raise ExportError(
            f"image_token_index={config.image_token_index} but the tokenizer maps "
            f"{image_token!r} to {token_id}"
        )
    model = compose(
        hf.model.vision_tower,
        llm,
        tokenizer,
        connector=spec,
        vision_feature_layer=config.vision_feature_layer,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        image_token=image_token,
    )
    with torch.no_grad():
        for name in ("layer_norm", "linear_1", "linear_2"):
            # absent or an Identity: no LayerNorm (LLaVA), no linear_2 (LLaVA's "linear": the identity)
            ours = getattr(model.connector, name, None)
            if isinstance(ours, (nn.Linear, nn.LayerNorm)):
                theirs = getattr(projector, "layernorm" if name == "layer_norm" else name)
                ours.load_state_dict(theirs.state_dict())
        if getattr(projector, "markers", None) is not None:
            model.connector.markers.copy_(projector.markers)
    seq_length = getattr(config, "image_seq_length", model.config.image_seq_length)  # LLaVA's field
    if model.config.image_seq_length != seq_length:
        raise ExportError(
            f"image_seq_length={seq_length} but the vision tower and "
            f"vision_feature_select_strategy give {model.config.image_seq_length} tokens per image"
        )
    meta = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if meta:
        raise ExportError(f"parameters without weights after import: {', '.join(meta[:5])}")
    model.generation_config = copy.deepcopy(hf.generation_config)
    if model.generation_config.pad_token_id is None:  # published folders often leave it unset
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()

    processor = GraftProcessor(
        tokenizer,
        load_image_processor(str(folder)),
        model.config.image_seq_length,
        template=_template(folder, tokenizer, template),
        image_token=image_token,
    )
    if out_dir is not None:
        with atomic_dir(out_dir, overwrite) as tmp:
            model.save_pretrained(tmp)
            processor.save_pretrained(tmp)
    return model, processor
