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
from typing import TYPE_CHECKING, Annotated

import typer

from graft.cli.app import RECIPE_HELP, app, fail, parse_overrides

if TYPE_CHECKING:
    from graft.train.recipe import Recipe


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
    from graft.train.meta import meta_model
    from graft.train.recipe import load_recipe
    from graft.train.stages import parameter_counts

    try:
        loaded = load_recipe(recipe, parse_overrides(set_ or []))
        model = meta_model(loaded)
    except (ValueError, OSError) as err:
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
