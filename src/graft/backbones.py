"""Load pretrained backbones through transformers' Auto classes and graft them together.

The tokenizer and the image processor come from ``graft.processing``. Everything takes a local
folder or a hub id, exactly as transformers does; nothing here knows whether it is loading
Vicuna or the shapes world's tiny Llama.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

import torch
from accelerate import init_empty_weights
from huggingface_hub.errors import HFValidationError
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.modeling_auto import MODEL_MAPPING

from graft.config import DEFAULT_IMAGE_TOKEN, GraftConfig
from graft.connectors import build_connector
from graft.files import umask_modes
from graft.modeling import GraftForConditionalGeneration
from graft.processing import GraftProcessor, load_image_processor, load_tokenizer

logger = logging.getLogger(__name__)


def load_vision_tower(name_or_path: str, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """A vision encoder whose hidden states can be selected: a vision model (``CLIPVisionModel``,
    ``SiglipVisionModel`` ...) or the vision half of a composite checkpoint (a full CLIP folder)."""
    config = AutoConfig.from_pretrained(name_or_path)
    vision_config = getattr(config, "vision_config", None)
    if vision_config is None:
        return AutoModel.from_pretrained(name_or_path, dtype=dtype)
    # composite checkpoint (CLIP, SigLIP, BLIP-2 ...): build only its vision half
    try:
        vision_class = MODEL_MAPPING[type(vision_config)]
    except KeyError:
        raise ValueError(
            f"{name_or_path}: no transformers vision model for {type(vision_config).__name__}"
        ) from None
    return vision_class.from_pretrained(name_or_path, dtype=dtype)


def load_llm(name_or_path: str, dtype: torch.dtype | None = None) -> PreTrainedModel:
    return AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype)


def add_image_token(
    tokenizer: PreTrainedTokenizerBase, llm: PreTrainedModel, image_token: str = DEFAULT_IMAGE_TOKEN
) -> int:
    """Make ``image_token`` one special token and give the LLM an embedding row for it."""
    if image_token not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [image_token]})
    if tokenizer.pad_token is None:
        # pad with unk or eos: padded positions are masked out of attention and loss anyway
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    token_id = tokenizer.convert_tokens_to_ids(image_token)
    if token_id >= llm.get_input_embeddings().num_embeddings:
        llm.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    return token_id


def compose(
    vision_tower: PreTrainedModel,
    llm: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    connector: dict[str, Any] | str | None = None,
    vision_feature_layer: int = -2,
    vision_feature_select_strategy: str = "default",
    image_token: str = DEFAULT_IMAGE_TOKEN,
) -> GraftForConditionalGeneration:
    """Graft ``vision_tower`` onto ``llm`` through a fresh connector (default
    ``graft.config.DEFAULT_CONNECTOR``).

    The backbones' own modules are moved into the new model (no copy of a 7B state dict);
    only the connector is newly initialised.
    """
    image_token_id = add_image_token(tokenizer, llm, image_token)
    config = GraftConfig(
        vision_config=vision_tower.config,
        text_config=llm.config,
        connector=connector,
        image_token=image_token,
        image_token_id=image_token_id,
        vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy=vision_feature_select_strategy,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with init_empty_weights():
        model = GraftForConditionalGeneration(config)
    model.vision_tower = vision_tower
    model.language_model = llm
    model.connector = build_connector(
        config.connector, vision_tower.config.hidden_size, llm.config.hidden_size
    ).to(device=llm.device, dtype=llm.dtype)
    model.connector.attach(llm)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model._suppress_image_token()
    return model


def compose_from_pretrained(
    vision_name_or_path: str,
    llm_name_or_path: str,
    connector: dict[str, Any] | str | None = None,
    tokenizer_name_or_path: str | None = None,
    dtype: torch.dtype | None = None,
    **kwargs: Any,
) -> tuple[GraftForConditionalGeneration, PreTrainedTokenizerBase, Any]:
    """Load both backbones and their preprocessing, graft them: (model, tokenizer, image processor).
    A source that fails to load raises an error that names it and says which backbone it is."""
    with naming_source("the vision tower", vision_name_or_path):
        vision, image_processor = (
            load_vision_tower(vision_name_or_path, dtype),
            load_image_processor(vision_name_or_path),
        )
    with naming_source("the LLM", llm_name_or_path):
        llm = load_llm(llm_name_or_path, dtype)
    with naming_source("the tokenizer", tokenizer_name_or_path or llm_name_or_path):
        tokenizer = load_tokenizer(tokenizer_name_or_path or llm_name_or_path)
    model = compose(vision, llm, tokenizer, connector=connector, **kwargs)
    return model, tokenizer, image_processor


@contextlib.contextmanager
def naming_source(what: str, source: str) -> Iterator[None]:
    """Re-raise a loading failure (OSError or ValueError) with what was loaded, from where (a
    missing local folder is read as a hub id, which the bare library error does not say)."""
    try:
        yield
    except (OSError, ValueError) as err:
        if isinstance(err, HFValidationError) or isinstance(err.__cause__, HFValidationError):
            # not a folder, and not a hub id either: the hub's naming rules would only confuse
            raise OSError(
                f"{what} {source!r}: no such folder (nor is it a hub id, 'namespace/name')"
            ) from err
        where = "" if os.path.isdir(source) else " (no such local folder, so it was read as a hub id)"
        raise (OSError if isinstance(err, OSError) else ValueError)(
            f"{what} {source!r}{where}: {err}"
        ) from err


def save_composed(
    model: GraftForConditionalGeneration,
    tokenizer: PreTrainedTokenizerBase,
    image_processor: Any,
    out_dir: str | os.PathLike,
    **processor_options: Any,
) -> GraftProcessor:
    """Save a freshly grafted model with its processor (template, pad-to-square ... from
    ``processor_options``), so the folder loads like any graft model."""
    processor = GraftProcessor(tokenizer, image_processor, model.config.image_seq_length, **processor_options)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    umask_modes(out_dir)
    return processor


def wrap_with_vpgc(
    model: GraftForConditionalGeneration, guidance_layer: int | None = None
) -> GraftForConditionalGeneration:
    """Cheetah's step from a trained Q-Former MLLM to VPG-C: the same vision tower, LLM and
    Q-Former (its weights moved into ``connector.vpg``), plus zero-initialised guidance, so the
    result computes exactly what ``model`` does until the guidance trains."""
    spec = dict(model.config.connector)
    if spec.get("name") not in ("qformer", "qformer_instruct"):
        raise ValueError(
            f"VPG-C guides a Q-Former; this model's connector is {spec.get('name')!r} "
            "(compose with connector qformer or qformer_instruct first)"
        )
    vpgc = {"name": "vpgc", "vpg": spec}
    if guidance_layer is not None:
        vpgc["guidance_layer"] = guidance_layer
    llm, vision = model.language_model, model.vision_tower
    qformer = model.connector
    connector = build_connector(vpgc, vision.config.hidden_size, llm.config.hidden_size)
    connector.vpg.load_state_dict(qformer.state_dict())
    connector.reset_guidance()  # Q_new starts from the trained queries
    config = GraftConfig(**{**model.config.to_dict(), "connector": vpgc})
    with init_empty_weights():
        wrapped = GraftForConditionalGeneration(config)
    wrapped.vision_tower, wrapped.language_model = vision, llm
    wrapped.connector = connector.to(device=llm.device, dtype=qformer.query_tokens.dtype)
    wrapped.connector.attach(llm)
    wrapped.generation_config = model.generation_config
    wrapped._suppress_image_token()
    return wrapped.train(model.training)  # a fresh module trains (dropout on); keep the caller's mode
