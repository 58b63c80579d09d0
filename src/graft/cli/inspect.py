"""``graft inspect RECIPE``: total and trainable parameters per component, without any weights.

The model is built on the meta device from configs only: the recipe's written-out
``model.vision_config`` / ``model.text_config`` when it has them (a 7B recipe then needs no
download and no disk), else the config files of its local folders. The stage is applied as
training would apply it (frozen / full / LoRA, a connector's own choice of what learns), so the
trainable count is the one ``graft train`` will log.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from graft.cli.app import RECIPE_HELP, app, fail, parse_overrides

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
    try:
        config = AutoConfig.from_pretrained(ref)
    except OSError as err:
        source = "model.vision" if key == "vision" else "model.llm"
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
    apply_stage(model, recipe)
    return model


def _table(recipe: Recipe, counts: dict[str, dict[str, int]]) -> str:
    modes = {name: spec.mode for name, spec in recipe.components().items()}
    rows = [("component", "mode", "total", "trainable")]
    rows += [(name, modes[name], f"{c['total']:,}", f"{c['trainable']:,}") for name, c in counts.items()]
    total = sum(c["total"] for c in counts.values())
    trainable = sum(c["trainable"] for c in counts.values())
    rows.append(("all", "", f"{total:,}", f"{trainable:,}"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join(
        f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:>{widths[3]}}" for r in rows
    )


@app.command("inspect")
def inspect_cmd(
    recipe: Annotated[Path, typer.Argument(help=RECIPE_HELP)],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a recipe field: --set llm.mode=lora (repeatable)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the counts as JSON.")] = False,
) -> None:
    """Total and trainable parameters per component (vision, connector, LLM), on the meta device."""
    from graft.train.recipe import load_recipe
    from graft.train.stages import parameter_counts

    try:
        loaded = load_recipe(recipe, parse_overrides(set_ or []))
        model = meta_model(loaded)
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    counts = parameter_counts(model)
    if as_json:
        typer.echo(
            json.dumps({"image_seq_length": model.config.image_seq_length, "components": counts}, indent=2)
        )
        return
    connector = model.config.connector.get("name")
    typer.echo(
        f"{recipe}: connector {connector}, {model.config.image_seq_length} tokens per image "
        "(built on the meta device, no weights)"
    )
    typer.echo(_table(loaded, counts))
