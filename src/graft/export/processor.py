"""``GraftProcessor`` -> ``LlavaProcessor`` that builds graft's exact inputs from a prompt string.

LlavaProcessor expands each ``<image>`` in the text to as many placeholders as the pixel size
implies and tokenizes with the tokenizer's own special tokens; graft adds BOS itself and pads to
square before the image processor. Both differences are moved into the exported parts here, and
the chat template is checked against graft's renderer before it ships.

The Aya Vision export ships a ``LlavaProcessor`` too, counting one placeholder per k x k patches
of a k x k token reduction (and a cell connector's further tokens per group as LLaVA's
``num_additional_image_tokens``): graft's prompt is ``<image>`` expanded to the soft tokens, which
is LLaVA's. Aya Vision's own processor tiles the image and frames it in tokens graft never trained on.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from PIL import Image
from transformers import LlavaImageProcessorPil, LlavaProcessor

from graft.export.model import ExportError
from graft.modeling import GraftForConditionalGeneration
from graft.processing import GraftProcessor
from graft.templates import TEMPLATES, Message, Template

logger = logging.getLogger(__name__)


def _export_image_processor(processor: GraftProcessor) -> Any:
    image_processor = copy.deepcopy(processor.image_processor)
    if not processor.pad_to_square:
        return image_processor
    # LLaVA-1.5's "pad" mode lives in LlavaImageProcessor (do_pad); move the settings over
    settings = {
        k: v
        for k, v in image_processor.to_dict().items()
        if k not in ("image_processor_type", "processor_class", "_processor_class")
    }
    return LlavaImageProcessorPil(**settings, do_pad=True)


def _export_tokenizer(processor: GraftProcessor) -> Any:
    """The tokenizer, set to add BOS exactly when graft's template does: LlavaProcessor tokenizes
    with the tokenizer's own special tokens, graft adds BOS itself."""
    tokenizer = copy.deepcopy(processor.tokenizer)
    want_bos = processor.template.add_bos and tokenizer.bos_token_id is not None

    def adds_bos() -> bool:
        ids = tokenizer("a")["input_ids"]
        return bool(ids) and ids[0] == tokenizer.bos_token_id

    if adds_bos() != want_bos:
        tokenizer.add_bos_token = want_bos
        if adds_bos() != want_bos:
            raise ExportError(
                f"tokenizer: cannot make {type(tokenizer).__name__} {'add' if want_bos else 'omit'} BOS "
                f"as template {processor.template.name!r} requires"
            )
    return tokenizer


_PROBES = (
    [Message("user", "<image>\nWhat is in the image?")],
    [Message("user", "<image>\nWhat is it?"), Message("assistant", "A cat."), Message("user", "And?")],
)


def _as_chat(messages: list[Message], structured: bool) -> list[dict[str, Any]]:
    """Messages as a chat template sees them: plain strings, or LlavaProcessor's typed parts."""
    chat = []
    for m in messages:
        if not structured or m.role != "user":
            chat.append({"role": m.role, "content": m.content})
            continue
        text = m.content.replace("<image>\n", "")
        parts = [{"type": "image"}] * m.content.count("<image>") + [{"type": "text", "text": text}]
        chat.append({"role": m.role, "content": parts})
    return chat


def chat_template_problem(template: Template, tokenizer: Any, chat_template: str) -> str | None:
    """How ``chat_template`` (Jinja, run by ``tokenizer``) departs from graft's ``template`` on
    probe conversations, plain and with a processor's typed parts; None when it renders the same."""
    for messages in _PROBES:
        expected = template.render(messages, add_generation_prompt=True).text
        for structured in (False, True):
            try:
                got = tokenizer.apply_chat_template(
                    _as_chat(messages, structured),
                    chat_template=chat_template,
                    tokenize=False,
                    add_generation_prompt=True,
                )
            except Exception as err:  # jinja syntax or runtime errors
                got = f"<error: {err}>"
            if got != expected:
                return f"renders {got!r} where graft renders {expected!r}"
    return None


def template_of(tokenizer: Any, chat_template: str | None) -> str | None:
    """The name of graft's template that renders what ``chat_template`` renders (what
    ``graft export-hf`` shipped, or a published template that agrees with one); None if none does."""
    if not chat_template:
        return None
    for name, template in TEMPLATES.items():
        if chat_template_problem(template, tokenizer, chat_template) is None:
            return name
    return None


def _chat_template(processor: GraftProcessor) -> str | None:
    """The chat template to ship, checked to render exactly what graft's template renders (a
    template that disagrees would silently feed the exported model prompts it never saw)."""
    own = processor.template.chat_template
    candidate = own or getattr(processor.tokenizer, "chat_template", None)
    if not candidate:
        logger.warning(
            "template %r has no chat_template: the LLaVA processor gets none", processor.template.name
        )
        return None
    source = (
        f"the chat_template of template {processor.template.name!r}"
        if own
        else "the tokenizer's chat_template"
    )
    problem = chat_template_problem(processor.template, processor.tokenizer, candidate)
    if problem is None:
        return candidate
    if own:
        raise ExportError(f"{source} {problem}")
    logger.warning("%s %s; the LLaVA processor gets no chat template", source, problem)
    return None


def llava_processor(model: GraftForConditionalGeneration, processor: GraftProcessor) -> LlavaProcessor:
    """A ``LlavaProcessor`` that turns a prompt string + images into graft's exact inputs."""
    if processor.image_seq_length != model.config.image_seq_length:
        raise ExportError(
            f"processor.image_seq_length={processor.image_seq_length} but the model makes "
            f"{model.config.image_seq_length} soft tokens per image"
        )
    vision = model.vision_tower.config
    grid = (vision.image_size // vision.patch_size) ** 2
    dropped = 1 if model.config.vision_feature_select_strategy == "default" else 0
    # one placeholder per k x k patches where the connector reduces tokens k x k
    patch_size = vision.patch_size * model.connector.reduction.factor
    groups = (vision.image_size // patch_size) ** 2
    # tokens beyond one per group: the tower's beyond its patch grid (CLS and the like), and a
    # cell connector's beyond one per group (its second token, its markers)
    extra = model.num_patches + dropped - grid + model.connector.num_tokens(grid) - groups
    counted = groups + extra - dropped
    if counted != model.config.image_seq_length:
        raise ExportError(
            f"LlavaProcessor would count {counted} placeholders per image, the model makes "
            f"{model.config.image_seq_length} soft tokens"
        )
    image_processor = _export_image_processor(processor)
    probe = image_processor(images=[Image.new("RGB", (48, 40))], return_tensors="pt")["pixel_values"]
    if tuple(probe.shape[-2:]) != (vision.image_size, vision.image_size):
        # LlavaProcessor counts placeholders from the pixel size; it must be the tower's
        raise ExportError(
            f"image_processor: outputs {tuple(probe.shape[-2:])} pixels, the vision tower expects "
            f"{vision.image_size}x{vision.image_size}"
        )
    chat_template = _chat_template(processor)
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=_export_tokenizer(processor),
        patch_size=patch_size,
        vision_feature_select_strategy=model.config.vision_feature_select_strategy,
        chat_template=chat_template,
        image_token=processor.image_token,
        num_additional_image_tokens=extra,
    )
