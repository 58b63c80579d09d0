"""``graft compose-blip2``: a BLIP-2 / InstructBLIP checkpoint's ViT + Q-Former onto another LLM."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from graft.cli.app import app, check_out_folder, fail
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
    overwrite: Annotated[
        bool, typer.Option(help="Replace a non-empty --out folder (in one rename, once written).")
    ] = False,
) -> None:
    """Graft a BLIP-2 / InstructBLIP vision tower and Q-Former onto an LLM and save the result."""
    from graft.backbones import save_composed
    from graft.blip2 import CONNECTORS, check_blip2, compose_from_blip2
    from graft.files import atomic_dir
    from graft.templates import get_template

    options = {} if guidance_layer is None else {"guidance_layer": guidance_layer}
    try:  # the names first, so a typo fails before any weights load
        get_template(template)
    except ValueError as err:
        fail(str(err))
    if connector not in CONNECTORS:
        fail(f"--connector {connector!r} is not one of {', '.join(CONNECTORS)}")
    if guidance_layer is not None and connector != "vpgc":
        fail(f"--guidance-layer is for --connector vpgc, not {connector!r}")
    try:  # the checkpoint's config (does --connector fit it?) before --out and any weights
        check_blip2(blip2, connector, **options)
    except (ValueError, OSError) as err:
        fail(str(err))
    check_out_folder(out, overwrite, "the grafted model")
    try:
        model, tokenizer, image_processor, qformer_tokenizer = compose_from_blip2(
            blip2, llm, connector=connector, **options
        )
        with atomic_dir(out, overwrite) as tmp:  # a replaced folder keeps nothing of the old one
            save_composed(
                model,
                tokenizer,
                image_processor,
                tmp,
                template=template,
                instruction_tokenizer=qformer_tokenizer,
            )
    except FileExistsError:  # filled while the weights loaded
        fail(f"--out {out} exists and is not empty; pass --overwrite to replace it")
    except (ValueError, OSError) as err:
        fail(str(err))
    typer.echo(f"saved {out} ({model.config.image_seq_length} tokens per image, connector {connector})")
