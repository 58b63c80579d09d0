"""``graft compose-blip2``: a BLIP-2 / InstructBLIP checkpoint's ViT + Q-Former onto another LLM."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from graft.cli.app import app, fail
from graft.templates import DEFAULT_TEMPLATE, TEMPLATE_NAMES


@app.command("compose-blip2")
def compose_blip2_cmd(
    blip2: Annotated[str, typer.Option(help="BLIP-2 or InstructBLIP checkpoint: local folder or hub id.")],
    llm: Annotated[str, typer.Option(help="Causal LM: local folder or hub id.")],
    out: Annotated[Path, typer.Option(help="Folder to save the grafted model and its processor.")],
    connector: Annotated[
        str, typer.Option(help="qformer (BLIP-2), qformer_instruct (InstructBLIP) or vpgc (Cheetah).")
    ] = "qformer",
    guidance_layer: Annotated[
        int | None, typer.Option(help="vpgc only: the LLM layer whose input is guided (default L // 2).")
    ] = None,
    template: Annotated[
        str, typer.Option(help=f"Conversation template: {TEMPLATE_NAMES}.")
    ] = DEFAULT_TEMPLATE,
) -> None:
    """Graft a BLIP-2 / InstructBLIP vision tower and Q-Former onto an LLM and save the result."""
    from graft.backbones import save_composed
    from graft.blip2 import compose_from_blip2
    from graft.templates import get_template

    options = {} if guidance_layer is None else {"guidance_layer": guidance_layer}
    try:  # the template name first, so a typo fails before any weights load
        get_template(template)
        model, tokenizer, image_processor, qformer_tokenizer = compose_from_blip2(
            blip2, llm, connector=connector, **options
        )
    except (ValueError, OSError) as err:
        fail(str(err))
    save_composed(
        model, tokenizer, image_processor, out, template=template, instruction_tokenizer=qformer_tokenizer
    )
    typer.echo(f"saved {out} ({model.config.image_seq_length} tokens per image, connector {connector})")
