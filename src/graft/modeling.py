"""``GraftForConditionalGeneration``: vision tower -> connector -> LLM.

The contract is transformers' LLaVA one: the prompt holds ``image_seq_length`` copies of the
image token per image; ``get_image_features`` turns each image into that many soft tokens; they
are written over the placeholders with ``masked_scatter``; the LLM does the rest. Images of a
batch are concatenated in order of appearance (sample by sample, marker by marker), so any
number of images per sample, anywhere in any turn, needs no special case.

Frozen vision towers can be skipped entirely: ``vision_features`` takes the selected features
(what ``select_vision_features`` returns) computed once and cached by the training loop.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    GenerationMixin,
    PreTrainedModel,
)
from transformers.modeling_outputs import CausalLMOutputWithPast

from graft.config import GraftConfig
from graft.connectors import Connector, build_connector


class ImageTokenMismatchError(ValueError):
    """The prompt's image placeholders do not match the images given."""


def _vision_num_positions(vision_tower: nn.Module) -> int:
    """Tokens the vision tower emits per image (patches, plus CLS where it has one)."""
    embeddings = getattr(getattr(vision_tower, "vision_model", vision_tower), "embeddings", None)
    if embeddings is not None and hasattr(embeddings, "num_positions"):
        return int(embeddings.num_positions)
    cfg = vision_tower.config
    return (cfg.image_size // cfg.patch_size) ** 2


class GraftPreTrainedModel(PreTrainedModel):
    config_class = GraftConfig
    config: GraftConfig
    base_model_prefix = ""
    supports_gradient_checkpointing = True
    _skip_keys_device_placement = ["past_key_values"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_attention_backend = True
    _can_compile_fullgraph = False


class GraftForConditionalGeneration(GraftPreTrainedModel, GenerationMixin):
    def __init__(self, config: GraftConfig) -> None:
        super().__init__(config)
        if config.vision_config is None or config.text_config is None:
            raise ValueError("GraftConfig needs both vision_config and text_config")
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.connector: Connector = build_connector(
            config.connector, config.vision_config.hidden_size, config.text_config.hidden_size
        )
        self.connector.attach(self.language_model)
        positions = _vision_num_positions(self.vision_tower)
        self.num_patches = positions - 1 if config.vision_feature_select_strategy == "default" else positions
        config.image_seq_length = self.connector.num_tokens(self.num_patches)
        self.post_init()
        self._suppress_image_token()

    def _suppress_image_token(self) -> None:
        # a generated image placeholder would be read back as an image slot with no image
        if self.config.image_token_id is not None and self.generation_config is not None:
            self.generation_config.suppress_tokens = [self.config.image_token_id]

    # --- embeddings: the LLM's -------------------------------------------------------------
    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    # --- images ----------------------------------------------------------------------------
    def select_vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The chosen vision layer's features, ``[N, P, d_vis]``: what a feature cache stores."""
        dtype = next(self.vision_tower.parameters()).dtype
        out = self.vision_tower(pixel_values.to(dtype), output_hidden_states=True, return_dict=True)
        features = out.hidden_states[self.config.vision_feature_layer]
        if self.config.vision_feature_select_strategy == "default":
            features = features[:, 1:]
        return features

    def get_image_features(
        self,
        pixel_values: torch.Tensor | None = None,
        vision_features: torch.Tensor | None = None,
        **context: Any,
    ) -> torch.Tensor:
        """Soft tokens ``[N, image_seq_length, d_llm]`` for N images."""
        if vision_features is None:
            if pixel_values is None:
                raise ValueError("get_image_features needs pixel_values or vision_features")
            vision_features = self.select_vision_features(pixel_values)
        connector_dtype = next(self.connector.parameters()).dtype
        return self.connector(vision_features.to(connector_dtype), **context)

    def image_token_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        return input_ids == self.config.image_token_id

    def embed_inputs(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        vision_features: torch.Tensor | None = None,
        **context: Any,
    ) -> torch.Tensor:
        """Token embeddings with every image's soft tokens written over its placeholders."""
        mask = self.image_token_mask(input_ids)
        embeds = self.get_input_embeddings()(input_ids)
        has_images = pixel_values is not None or vision_features is not None
        n_placeholders = int(mask.sum())
        if not has_images:
            if n_placeholders:
                raise ImageTokenMismatchError(
                    f"the prompt holds {n_placeholders} image placeholder tokens but no images were given"
                )
            return embeds
        image_embeds = self.get_image_features(pixel_values, vision_features, **context)
        if n_placeholders != image_embeds.shape[0] * image_embeds.shape[1]:
            raise ImageTokenMismatchError(
                f"the prompt holds {n_placeholders} image placeholder tokens but {image_embeds.shape[0]} "
                f"image(s) give {image_embeds.shape[0]} x {image_embeds.shape[1]} soft tokens"
            )
        image_embeds = image_embeds.to(embeds.device, embeds.dtype)
        return embeds.masked_scatter(mask.unsqueeze(-1), image_embeds)

    def _connector_context(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Pop what only connectors consume, and keep what this connector asked for."""
        context = {k: kwargs.pop(k) for k in ("instruction_ids", "instruction_mask") if k in kwargs}
        return context if self.connector.needs_instruction else {}

    # --- forward / generate ----------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        vision_features: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        context = self._connector_context(kwargs)
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("forward needs input_ids or inputs_embeds")
            inputs_embeds = self.embed_inputs(input_ids, pixel_values, vision_features, **context)
        elif pixel_values is not None or vision_features is not None:
            raise ValueError("pass images with input_ids, not with precomputed inputs_embeds")
        return self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )

    def prepare_inputs_for_generation(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        inputs = super().prepare_inputs_for_generation(*args, **kwargs)
        # images act at prefill only; the KV cache carries them afterwards
        if not kwargs.get("is_first_iteration", False) and kwargs.get("use_cache", True):
            for key in ("pixel_values", "vision_features", "instruction_ids", "instruction_mask"):
                inputs.pop(key, None)
        return inputs


AutoConfig.register("graft", GraftConfig)
AutoModel.register(GraftConfig, GraftForConditionalGeneration)
AutoModelForCausalLM.register(GraftConfig, GraftForConditionalGeneration)
