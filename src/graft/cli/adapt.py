"""``graft adapt``: benchmark-style data (VQA, COCO captions, multiple choice) made LLaVA records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from graft.cli.app import app, fail


@app.command("adapt")
def adapt_cmd(
    source: Annotated[
        Path,
        typer.Argument(help="VQA question/answer JSONL, a COCO captions JSON, or multiple-choice JSONL."),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="The records: .json (a LLaVA list) or .jsonl.")],
    fmt: Annotated[
        str, typer.Option("--format", help="auto, vqa, caption or mc (auto: told by the fields).")
    ] = "auto",
    templates: Annotated[
        str, typer.Option(help="llava (LLaVA-1.5's response-format prompts) or instructblip.")
    ] = "llava",
    seed: Annotated[int, typer.Option(help="Seed of every choice (prompts, option and turn order).")] = 0,
    merge_per_image: Annotated[
        bool | None,
        typer.Option(
            "--merge-per-image/--no-merge-per-image",
            help="One multi-turn record per image (default: on for vqa and mc, off for captions).",
        ),
    ] = None,
    max_turns: Annotated[
        int | None, typer.Option(help="At most N questions a merged record (more: several records).")
    ] = None,
    captions_per_image: Annotated[
        int | None, typer.Option(help="At most N captions an image (a seeded choice).")
    ] = None,
    shuffle_options: Annotated[
        bool, typer.Option("--shuffle-options/--no-shuffle-options", help="Shuffle multiple-choice options.")
    ] = True,
    id_prefix: Annotated[str, typer.Option(help="Put before every record id (e.g. 'vqav2-').")] = "",
    check_images: Annotated[bool, typer.Option(help="Check that every image exists.")] = False,
    image_root: Annotated[
        Path | None,
        typer.Option(help="With --check-images: image paths are relative to this (default: its folder)."),
    ] = None,
    skip_bad: Annotated[
        bool, typer.Option(help="Skip bad records with a warning (counted by reason) instead of stopping.")
    ] = False,
) -> None:
    """Turn benchmark-style data into instruction records with LLaVA-1.5's response-format prompts.

    Prints a summary: records in, records out, merged, skipped by reason."""
    from graft.instruct.adapt import AdaptSettings, adapt_file

    settings = AdaptSettings(
        format=fmt,
        templates=templates,
        seed=seed,
        merge_per_image=merge_per_image,
        max_turns=max_turns,
        captions_per_image=captions_per_image,
        shuffle_options=shuffle_options,
        id_prefix=id_prefix,
        skip_bad=skip_bad,
        check_images=check_images,
        image_root=image_root,
    )
    try:
        stats = adapt_file(source, out, settings)
    except (ValueError, OSError) as err:  # RecordError is a ValueError
        fail(str(err))
    typer.echo(json.dumps({**stats.summary(), "out": str(out)}))
    if stats.records_out == 0:
        typer.secho("warning: no records written", fg=typer.colors.YELLOW, err=True)
