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

import contextlib
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    Blip2VisionConfig,
    Blip2VisionModel,
    GenerationMixin,
    InstructBlipVisionConfig,
    InstructBlipVisionModel,
    PreTrainedModel,
)
from transformers.modeling_outputs import CausalLMOutputWithPast

from graft.config import IGNORE_INDEX, GraftConfig
from graft.connectors import Connector, build_connector
from graft.connectors.vpgc import GuidanceContext
from graft.packing import check_packed_call, is_packed
from graft.shared_prefix import decode_after_shared_prefix, shareable, shared_prefix_length
from graft.word_alignment import word_alignment_loss


class ImageTokenMismatchError(ValueError):
    """The prompt's image placeholders do not match the images given."""


def _vision_num_positions(vision_tower: nn.Module) -> int:
    """Tokens the vision tower emits per image (patches, plus CLS where it has one)."""
    embeddings = getattr(getattr(vision_tower, "vision_model", vision_tower), "embeddings", None)
    if embeddings is not None and hasattr(embeddings, "num_positions"):
        return int(embeddings.num_positions)
    cfg = vision_tower.config
    return (cfg.image_size // cfg.patch_size) ** 2


def image_blocks(image_mask: torch.Tensor, tokens_per_image: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's sample ``[N]`` and placeholder positions ``[N, M]``, in order of appearance
    (the order in which images are concatenated)."""
    rows, cols = image_mask.nonzero(as_tuple=True)
    if rows.numel() % tokens_per_image:
        raise ImageTokenMismatchError(
            f"the prompt holds {rows.numel()} image placeholder tokens, not a multiple of "
            f"{tokens_per_image} per image"
        )
    rows, cols = rows.view(-1, tokens_per_image), cols.view(-1, tokens_per_image)
    if bool((rows != rows[:, :1]).any()):
        raise ImageTokenMismatchError(f"a sample holds a partial image block (not {tokens_per_image} tokens)")
    return rows[:, 0], cols


def last_instruction_positions(
    shape: tuple[int, int], attention_mask: torch.Tensor | None, labels: torch.Tensor | None = None
) -> torch.Tensor:
    """Per sample, the position of the last instruction token: the token just before the last
    supervised answer starts (with labels), else the last attended token (a generation prompt
    ends where the answer will start). Left or right padding alike."""
    batch, length = shape
    device = attention_mask.device if attention_mask is not None else None
    index = torch.arange(length, device=device).expand(batch, length)
    if attention_mask is None:
        last = torch.full((batch,), length - 1, dtype=torch.long, device=device)
    else:
        last = torch.where(attention_mask.bool(), index, -1).amax(dim=1).clamp(min=0)
    if labels is None:
        return last
    supervised = (labels != IGNORE_INDEX).to(index.device)
    previous = torch.nn.functional.pad(supervised[:, :-1], (1, 0), value=False)
    answer_start = torch.where(supervised & ~previous, index, -1).amax(dim=1)
    return torch.where(answer_start >= 0, (answer_start - 1).clamp(min=0), last)


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

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        # connectors with their own scheme (learned queries, VPG-C's zero-initialised
        # projections) apply it after their sub-modules got the generic one
        init_connector = getattr(module, "init_connector_weights", None)
        if isinstance(module, Connector) and callable(init_connector):
            init_connector()


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

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:
        """transformers' loader, strict about the connector: weights that do not fit the config's
        ``connector`` spec (edited, or absent and so the default) are a ValueError naming the spec
        and the keys, not a connector partly initialised afresh with a warning."""
        wants_info = kwargs.pop("output_loading_info", False)
        ignore_sizes = kwargs.pop("ignore_mismatched_sizes", False)
        model, info = super().from_pretrained(
            *args, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs
        )
        resized = sorted(key for key, *_ in info["mismatched_keys"])
        wrong = {
            "missing": sorted(k for k in info["missing_keys"] if k.startswith("connector.")),
            "unexpected": sorted(k for k in info["unexpected_keys"] if k.startswith("connector.")),
            "of another shape": [k for k in resized if k.startswith("connector.") or not ignore_sizes],
        }
        if any(wrong.values()):
            source = args[0] if args else kwargs.get("pretrained_model_name_or_path")
            found = "; ".join(f"{what}: {', '.join(keys)}" for what, keys in wrong.items() if keys)
            raise ValueError(
                f"{source}: the weights do not fit its config.json (connector {model.config.connector!r}): "
                f"{found}; was the config edited after saving, or the weights copied from another model?"
            )
        return (model, info) if wants_info else model

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

    def checked_image_mask(self, input_ids: torch.Tensor, images: torch.Tensor | None) -> torch.Tensor:
        """The placeholder mask, once it holds ``image_seq_length`` tokens for each of ``images``
        (pixels or features, or None); else an ``ImageTokenMismatchError`` naming both counts,
        before any image is encoded."""
        mask = self.image_token_mask(input_ids)
        n, per_image = 0 if images is None else images.shape[0], self.config.image_seq_length
        found = int(mask.sum())
        if found != n * per_image:
            given = f"{n} image(s) need {n} x {per_image}" if n else "no images were given"
            raise ImageTokenMismatchError(f"the prompt holds {found} image placeholder tokens but {given}")
        return mask

    def embed_inputs(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        vision_features: torch.Tensor | None = None,
        **context: Any,
    ) -> torch.Tensor:
        """Token embeddings with every image's soft tokens written over its placeholders.

        ``context`` holds per-sample rows (``instruction_ids`` ``[B, T]``); each image gets its
        sample's row."""
        images = vision_features if vision_features is not None else pixel_values
        mask = self.checked_image_mask(input_ids, images)
        embeds = self.get_input_embeddings()(input_ids)
        if images is None:
            return embeds
        if context:  # per-sample instruction rows -> one per image, for the connector
            samples, _ = image_blocks(mask, self.config.image_seq_length)
            context = {key: value[samples.to(value.device)] for key, value in context.items()}
        image_embeds = self.get_image_features(pixel_values, vision_features, **context)
        if image_embeds.shape[:2] != (images.shape[0], self.config.image_seq_length):
            raise ValueError(
                f"connector {self.connector.name!r} gave {image_embeds.shape[0]} x {image_embeds.shape[1]} "
                f"soft tokens for {images.shape[0]} image(s) of {self.config.image_seq_length} tokens"
            )
        image_embeds = image_embeds.to(embeds.device, embeds.dtype)
        return embeds.masked_scatter(mask.unsqueeze(-1), image_embeds)

    def _connector_context(
        self, instruction_ids: torch.Tensor | None, instruction_mask: torch.Tensor | None
    ) -> dict[str, Any]:
        """What this connector asked for, of what only connectors consume."""
        if not self.connector.needs_instruction:
            return {}
        context = {"instruction_ids": instruction_ids, "instruction_mask": instruction_mask}
        return {k: v for k, v in context.items() if v is not None}

    # --- forward / generate ----------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        vision_features: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        instruction_ids: torch.LongTensor | None = None,
        instruction_mask: torch.Tensor | None = None,
        instruction_positions: torch.LongTensor | None = None,
        supervised_logits_only: bool = False,
        share_prefix: bool = False,
        unused_image: str | None = None,
        caption_words: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """``instruction_ids`` / ``instruction_mask`` (``[B, T]``, the Q-Former tokenizer's ids of
        each sample's latest user turn) reach connectors that read the instruction;
        ``instruction_positions`` (``[B]``) overrides where VPG-C reads the LLM (default: the
        token before the last supervised answer, else the last attended token).

        With ``labels`` and ``supervised_logits_only`` (training) the output head runs only
        where a label is supervised: the same loss and gradients, no ``logits`` returned; with
        ``share_prefix`` too, the opening tokens every sample shares run once
        (``graft.shared_prefix``).

        ``unused_image`` (``"pixels"`` or ``"features"``), for a batch without images: the
        connector (and with pixels the vision tower) still runs, on a blank image that counts
        zero times in the loss, so ZeRO-3 / FSDP2 processes all gather the same weights.

        ``caption_words`` (``[B, T]`` bools over ``labels``, the content words of each caption): the
        loss is ``graft.word_alignment``'s instead of the LLM's, and the LLM does not run."""
        if caption_words is not None:
            return self._word_alignment(
                input_ids, pixel_values, vision_features, labels, caption_words, kwargs
            )
        if is_packed(kwargs):
            check_packed_call(self, kwargs, attention_mask, use_cache)
        context = self._connector_context(instruction_ids, instruction_mask)
        positions = instruction_positions
        guidance: Any = contextlib.nullcontext()
        from_ids = inputs_embeds is None  # a shared prefix is found in ids, so only then
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("forward needs input_ids or inputs_embeds")
            guided = self.connector.needs_llm_hidden and (
                pixel_values is not None or vision_features is not None
            )
            if guided and vision_features is None:  # both passes read the same features: encode once
                vision_features, pixel_values = self.select_vision_features(pixel_values), None
            inputs_embeds = self.embed_inputs(input_ids, pixel_values, vision_features, **context)
            if guided:
                if positions is None:
                    positions = last_instruction_positions(input_ids.shape, attention_mask, labels)
                guidance = self._guidance(input_ids, vision_features, positions, context)
        elif pixel_values is not None or vision_features is not None:
            raise ValueError("pass images with input_ids, not with precomputed inputs_embeds")
        blank = None
        if unused_image is not None and pixel_values is None and vision_features is None:
            blank = self._blank_image_term(unused_image, context)
        with guidance:
            if supervised_logits_only and labels is not None and self._plain_head():
                prefix = 0
                if share_prefix and from_ids and not is_packed(kwargs):
                    prefix = self._shared_prefix(input_ids, attention_mask, labels)
                out = self._supervised_loss(
                    inputs_embeds, attention_mask, position_ids, labels, prefix=prefix, **kwargs
                )
            else:
                out = self.language_model(
                    inputs_embeds=inputs_embeds,
                    attention_mask=attention_mask,
                    position_ids=position_ids,
                    labels=labels,
                    use_cache=use_cache,
                    logits_to_keep=logits_to_keep,
                    **kwargs,
                )
        if blank is not None and out.loss is not None:
            out.loss = out.loss + blank.to(out.loss.device)
        return out

    def _word_alignment(
        self,
        input_ids: torch.Tensor | None,
        pixel_values: torch.Tensor | None,
        vision_features: torch.Tensor | None,
        labels: torch.Tensor | None,
        caption_words: torch.Tensor,
        kwargs: dict[str, Any],
    ) -> CausalLMOutputWithPast:
        """The word-alignment loss of a batch of captioned images (``graft.word_alignment``)."""
        if self.connector.needs_instruction or self.connector.needs_llm_hidden:
            raise ValueError(
                f"word alignment needs a projector; connector {self.connector.name!r} reads more"
            )
        if input_ids is None or labels is None:
            raise ValueError("word alignment needs input_ids and labels")
        images = vision_features if vision_features is not None else pixel_values
        mask = self.checked_image_mask(input_ids, images)
        if images is None:  # a text-only batch: nothing to align
            return CausalLMOutputWithPast(loss=sum(p.sum() for p in self.connector.parameters()) * 0.0)
        if is_packed(kwargs):
            raise ValueError("word alignment reads padded batches: turn data.packing off")
        samples, _ = image_blocks(mask, self.config.image_seq_length)
        tokens = self.get_image_features(pixel_values, vision_features)
        table = self.get_input_embeddings().weight
        loss = word_alignment_loss(
            tokens, samples, labels, caption_words, table, kwargs.get("num_items_in_batch")
        )
        return CausalLMOutputWithPast(loss=loss)

    def _blank_image_term(self, kind: str, context: dict[str, torch.Tensor]) -> torch.Tensor:
        """Zero times the soft tokens of one blank image (as LLaMA-Factory does for text-only
        batches): ``kind`` ``"features"`` feeds the connector a cached-style feature map,
        ``"pixels"`` runs the vision tower first."""
        vision = self.config.vision_config
        device = next(self.connector.parameters()).device
        context = {key: value[:1] for key, value in context.items()}
        if kind == "features":
            blank = torch.zeros(1, self.num_patches, vision.hidden_size, device=device)
            embeds = self.get_image_features(vision_features=blank, **context)
        elif kind == "pixels":
            size = vision.image_size
            blank = torch.zeros(1, getattr(vision, "num_channels", 3), size, size, device=device)
            embeds = self.get_image_features(pixel_values=blank, **context)
        else:
            raise ValueError(f"unused_image must be 'pixels' or 'features', not {kind!r}")
        return embeds.float().sum() * 0.0

    def _plain_head(self) -> bool:
        """The LLM's logits are its output embeddings' product, nothing after (no soft-capping
        or scaling, which only its own forward applies)."""
        text = self.config.text_config
        return all(getattr(text, key, None) is None for key in ("final_logit_softcapping", "logit_scale"))

    def _shared_prefix(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor
    ) -> int:
        """How many opening tokens every sample of the batch shares and the decoder may run once
        (none where the connector reads the LLM's hidden states, its hook seeing one whole pass,
        nor under gradient checkpointing, which drops the prefix's cache)."""
        if self.connector.needs_llm_hidden or not shareable(self.config.text_config):
            return 0
        if any(getattr(m, "gradient_checkpointing", False) for m in self.language_model.modules()):
            return 0
        return shared_prefix_length(input_ids, attention_mask, labels, self.image_token_mask(input_ids))

    def _supervised_loss(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.LongTensor | None,
        labels: torch.LongTensor,
        num_items_in_batch: int | torch.Tensor | None = None,
        prefix: int = 0,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """transformers' causal-LM loss (shift by one, ignore -100, sum over ``num_items_in_batch``
        or mean) with the head applied to the supervised positions only: a 49k-word head is a
        fifth of a small LLM's FLOPs, and most positions of a chat sample are not supervised.
        With ``prefix``, the first ``prefix`` positions (shared, unsupervised) run once."""
        decoder = self.language_model.get_decoder()
        if prefix:
            hidden = decode_after_shared_prefix(
                decoder, inputs_embeds, attention_mask, position_ids, prefix, **kwargs
            )
            labels = labels[:, prefix:]
        else:
            hidden = decoder(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=False,
                **kwargs,
            ).last_hidden_state
        targets = labels[:, 1:].to(hidden.device)
        keep = targets != IGNORE_INDEX
        logits = self.language_model.get_output_embeddings()(hidden[:, :-1][keep])
        loss = nn.functional.cross_entropy(logits.float(), targets[keep], reduction="sum")
        count = num_items_in_batch if num_items_in_batch is not None else keep.sum().clamp(min=1)
        return CausalLMOutputWithPast(loss=loss / count)

    def _guidance(
        self,
        input_ids: torch.Tensor,
        vision_features: torch.Tensor,
        positions: torch.Tensor,
        context: dict[str, torch.Tensor],
    ) -> Any:
        """Arm a connector that acts on the LLM's hidden states (VPG-C) for this forward."""
        samples, blocks = image_blocks(self.image_token_mask(input_ids), self.config.image_seq_length)
        return self.connector.guiding(  # type: ignore[attr-defined]
            GuidanceContext(
                image_features=vision_features,
                image_samples=samples,
                image_positions=blocks,
                instruction_positions=positions,
                instruction={key: value[samples.to(value.device)] for key, value in context.items()},
            )
        )

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        # VPG-C reads the last prompt token; fix it before generation starts, so a forward
        # without the KV cache (the whole sequence again) still reads the prompt's last token
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if self.connector.needs_llm_hidden and input_ids is not None:
            kwargs.setdefault(
                "instruction_positions",
                last_instruction_positions(input_ids.shape, kwargs.get("attention_mask")),
            )
        return super().generate(*args, **kwargs)

    def _expand_inputs_for_generation(
        self, expand_size: int = 1, is_encoder_decoder: bool = False, input_ids: Any = None, **kwargs: Any
    ) -> tuple[Any, dict[str, Any]]:
        """Copies of each sample for beams or ``num_return_sequences``: images are rows per image,
        not per sample, so each copy gets its sample's images in order (transformers'
        ``repeat_interleave`` would give a sample of images A, B the copies A, A and B, B)."""
        images = {k: kwargs.pop(k) for k in ("pixel_values", "vision_features") if kwargs.get(k) is not None}
        if images and expand_size > 1 and input_ids is not None:
            mask = self.checked_image_mask(input_ids, next(iter(images.values())))
            samples, _ = image_blocks(mask, self.config.image_seq_length)
            own = [torch.nonzero(samples == row).flatten() for row in range(input_ids.shape[0])]
            order = torch.cat([rows.repeat(expand_size) for rows in own])
            images = {key: value[order.to(value.device)] for key, value in images.items()}
        input_ids, kwargs = super()._expand_inputs_for_generation(
            expand_size, is_encoder_decoder, input_ids, **kwargs
        )
        return input_ids, {**kwargs, **images}

    def prepare_inputs_for_generation(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        inputs = super().prepare_inputs_for_generation(*args, **kwargs)
        # images act at prefill only; the KV cache carries them afterwards
        if not kwargs.get("is_first_iteration", False) and kwargs.get("use_cache", True):
            for key in ("pixel_values", "vision_features", "instruction_ids", "instruction_mask"):
                inputs.pop(key, None)
        return inputs


AutoConfig.register("graft", GraftConfig)
# BLIP-2's and InstructBLIP's ViTs are not in transformers' AutoModel mapping; the vision tower
# is built with AutoModel.from_config, so name them (a recipe may use BLIP-2's ViT-g)
AutoModel.register(Blip2VisionConfig, Blip2VisionModel, exist_ok=True)
AutoModel.register(InstructBlipVisionConfig, InstructBlipVisionModel, exist_ok=True)
AutoModel.register(GraftConfig, GraftForConditionalGeneration)
AutoModelForCausalLM.register(GraftConfig, GraftForConditionalGeneration)
