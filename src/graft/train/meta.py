"""The recipe's starting model on the meta device: its architecture from configs only, no weights.

The recipe's written-out ``model.vision_config`` / ``model.text_config`` are used when it has them
(a 7B recipe then needs no download and no disk), else the config files of its local folders. The
stage is applied as training would apply it (frozen / full / LoRA, a connector's own choice of what
learns), so trainable counts are the ones ``graft train`` will log. ``graft inspect`` and
``graft plan`` build on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedConfig

    from graft.train.recipe import Recipe


def _backbone_config(written: dict[str, Any] | None, ref: str | None, key: str) -> PreTrainedConfig:
    from transformers import AutoConfig

    field = f"model.{key}_config"
    if written is not None:
        values = dict(written)
        if "model_type" not in values:
            raise ValueError(f"{field} needs a 'model_type' field (llama, clip_vision_model ...)")
        return AutoConfig.for_model(values.pop("model_type"), **values)
    source = "model.vision" if key == "vision" else "model.llm"
    if ref is not None and Path(ref).is_absolute() and not Path(ref).exists():
        # a folder, not a hub id: transformers would say the id is malformed
        raise ValueError(
            f"{source}={ref!r}: no such folder; build it first (graft backbones, or the stage that "
            f"writes it) or write the architecture out in the recipe as {field}"
        )
    try:
        config = AutoConfig.from_pretrained(ref)
    except OSError as err:
        raise ValueError(
            f"cannot read the config of {source}={ref!r} ({err}); write the architecture out in the "
            f"recipe as {field}"
        ) from None
    if key == "vision":  # a composite checkpoint (CLIP, BLIP-2 ...) lends its vision half
        return getattr(config, "vision_config", None) or config
    return config


def _vocab_with_image_token(recipe: Recipe, text_config: PreTrainedConfig) -> None:
    """Grow the vocabulary as ``compose`` will when it adds the image token (local tokenizers only)."""
    from transformers import AutoTokenizer

    from graft.config import DEFAULT_IMAGE_TOKEN

    ref = recipe.model.tokenizer or recipe.model.llm
    if ref is None or not Path(ref).is_dir():
        return
    tokenizer = AutoTokenizer.from_pretrained(ref)
    if DEFAULT_IMAGE_TOKEN not in tokenizer.get_vocab() and len(tokenizer) >= text_config.vocab_size:
        text_config.vocab_size = len(tokenizer) + 1


def meta_model(recipe: Recipe) -> Any:
    """The recipe's starting model on the meta device, with its stage applied."""
    from accelerate import init_empty_weights

    from graft.config import GraftConfig
    from graft.modeling import GraftForConditionalGeneration
    from graft.train.stages import apply_stage

    m = recipe.model
    if m.init_from is not None:
        from graft.backbones import naming_source

        with naming_source("model.init_from", m.init_from):
            config = GraftConfig.from_pretrained(m.init_from)
    else:
        text_config = _backbone_config(m.text_config, m.llm, "text")
        if m.text_config is None:
            _vocab_with_image_token(recipe, text_config)
        config = GraftConfig(
            vision_config=_backbone_config(m.vision_config, m.vision, "vision"),
            text_config=text_config,
            connector=m.connector,
            vision_feature_layer=m.vision_feature_layer,
            vision_feature_select_strategy=m.select_strategy,
        )
    with init_empty_weights():
        model = GraftForConditionalGeneration(config)
    # init_empty_weights re-registers each parameter on the meta device, which unties an LLM's
    # tied head (SmolLM2's): tie it again, or its embedding would count twice
    model.tie_weights()
    apply_stage(model, recipe)
    return model
