"""What the server needs of a model, for a graft model and for a plain causal LM alike.

A ``Backend`` turns a conversation (graft ``Message``s, image markers where image parts stood)
into a ``Prompt`` — token ids, and per image its digest and pixel values — and runs the model's
forward on a batch: the LLM's logits at the last position, with a KV cache. Encoding runs in the
request's thread; ``image_features`` and ``forward`` run only in the engine's worker.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from graft.generate import answer_stops
from graft.precision import native_bf16
from graft.processing import PROCESSOR_FILE, GraftProcessor, SampleTooLongError, load_tokenizer
from graft.prompts import ImageMarkerError
from graft.serve.errors import APIError, invalid
from graft.serve.settings import ServeSettings
from graft.templates import Message


@dataclass
class Prompt:
    """One request's encoded prompt: what the engine batches."""

    input_ids: list[int]
    #: per image, in order of appearance: its digest (the feature cache's key) ...
    digests: list[str] = field(default_factory=list)
    #: ... and its pixel values ``[N, 3, H, W]`` (None without images)
    pixel_values: torch.Tensor | None = None
    #: instruction-aware connectors: the latest user turn in the Q-Former's tokenizer
    instruction_ids: list[int] | None = None


def context_error(tokens: int, limit: int, what: str) -> APIError:
    return APIError(
        400,
        f"{what} needs {tokens} tokens but the model's context holds {limit}; shorten the conversation",
        "context_length_exceeded",
        "messages",
    )


class Backend:
    """The model, its tokenizer and how prompts are made; subclasses say how images are handled."""

    model: Any
    tokenizer: Any
    #: the marker a user's text must not contain (None: a text-only model)
    image_token: str | None = None
    #: soft tokens per image
    image_seq_length: int = 0

    @property
    def supports_images(self) -> bool:
        return self.image_token is not None

    @property
    def device(self) -> torch.device:
        return self.model.device

    def context_length(self) -> int:
        raise NotImplementedError

    def vocab_size(self) -> int:
        """Token ids a request may name (``logit_bias``): the tokenizer's, within the logits'."""
        return min(len(self.tokenizer), self.model.get_output_embeddings().weight.shape[0])

    def stops(self) -> tuple[list[int], list[str]]:
        """Token ids and texts that end an answer."""
        raise NotImplementedError

    def encode(self, messages: list[Message], images: list[Image.Image], digests: list[str]) -> Prompt:
        raise NotImplementedError

    def suppressed_tokens(self) -> list[int]:
        """Token ids never generated (a generated image placeholder would claim an image)."""
        return []

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} takes no images")

    def forward(self, inputs: dict[str, Any]) -> Any:
        """The model's output (``logits`` of the last position, ``past_key_values``)."""
        return self.model(**inputs, use_cache=True, logits_to_keep=1)


class GraftBackend(Backend):
    def __init__(self, model: Any, processor: GraftProcessor) -> None:
        self.model, self.processor, self.tokenizer = model, processor, processor.tokenizer
        self.image_token = processor.image_token
        self.image_seq_length = processor.image_seq_length
        self._stops = answer_stops(model, processor)

    def context_length(self) -> int:
        limit = self.processor.max_length
        positions = getattr(self.model.config.text_config, "max_position_embeddings", None)
        return min(x for x in (limit, positions, 1 << 30) if x)

    def stops(self) -> tuple[list[int], list[str]]:
        return self._stops

    def suppressed_tokens(self) -> list[int]:
        return [self.processor.image_token_id]

    def encode(self, messages: list[Message], images: list[Image.Image], digests: list[str]) -> Prompt:
        try:
            sample = self.processor.encode(messages, images, add_generation_prompt=True, where="messages")
        except SampleTooLongError:
            ids, _ = self.processor.encode_text(messages, len(images), True, "messages", max_length=1 << 30)
            raise context_error(len(ids), self.context_length(), "the prompt") from None
        except ImageMarkerError as err:
            raise invalid(str(err), "messages", "image_marker_mismatch") from None
        return Prompt(sample.input_ids, digests, sample.pixel_values, sample.instruction_ids)

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.select_vision_features(pixel_values.to(self.device))


class TextBackend(Backend):
    """A plain causal LM folder: its tokenizer's own chat template renders the conversation."""

    def __init__(self, model: Any, tokenizer: Any, source: Path) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                f"{source}: the tokenizer has no chat_template, so chat requests cannot be rendered"
            )
        self.model, self.tokenizer = model, tokenizer
        ids: set[int] = set()
        for value in (model.generation_config.eos_token_id, tokenizer.eos_token_id):
            ids.update([value] if isinstance(value, int) else value or [])
        self._stops = (sorted(ids), [])

    def context_length(self) -> int:
        positions = getattr(self.model.config, "max_position_embeddings", None)
        limit = getattr(self.tokenizer, "model_max_length", None)
        return min(x for x in (positions, limit if limit and limit < 1 << 30 else None, 1 << 30) if x)

    def stops(self) -> tuple[list[int], list[str]]:
        return self._stops

    def encode(self, messages: list[Message], images: list[Image.Image], digests: list[str]) -> Prompt:
        from jinja2 import TemplateError

        chat = [{"role": m.role, "content": m.content} for m in messages]
        try:
            ids = self.tokenizer.apply_chat_template(
                chat, add_generation_prompt=True, tokenize=True, return_dict=True
            )
        except TemplateError as err:  # the model's own template refuses this conversation
            raise invalid(f"the model's chat template refuses these messages: {err}", "messages") from None
        return Prompt(list(ids["input_ids"]))


def _dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        # bf16 only on a GPU that computes it natively (an older GPU would emulate it); a CPU
        # serves in fp32 unless --dtype bfloat16 asks
        bf16 = device.type == "cuda" and native_bf16(device)
        return torch.bfloat16 if bf16 else torch.float32
    choices = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in choices:
        raise ValueError(f"--dtype must be auto or one of {', '.join(choices)}, got {name!r}")
    return choices[name]


def load_backend(model_dir: Path, settings: ServeSettings) -> Backend:
    """A graft model folder, or a plain causal LM folder (text only), on the settings' device."""
    from accelerate import PartialState
    from transformers import AutoModelForCausalLM

    model_dir = Path(model_dir)
    config = model_dir / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{model_dir} is not a model folder (no config.json)")
    device = torch.device(settings.device) if settings.device else PartialState().device
    dtype = _dtype(settings.dtype, device)
    if json.loads(config.read_text(encoding="utf-8")).get("model_type") == "graft":
        from graft.modeling import GraftForConditionalGeneration

        if not (model_dir / PROCESSOR_FILE).is_file():
            raise FileNotFoundError(f"{model_dir}: a graft model without {PROCESSOR_FILE}")
        model = GraftForConditionalGeneration.from_pretrained(model_dir, dtype=dtype).to(device).eval()
        return GraftBackend(model, GraftProcessor.from_pretrained(model_dir))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    return TextBackend(model, load_tokenizer(str(model_dir)), model_dir)
