"""``graft mix``: mix visual and text-only instruction data into one file, with a lock to rebuild it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from graft.cli.app import app, fail


@app.command("mix")
def mix_cmd(
    out: Annotated[Path, typer.Option(help="The mixed file: a JSON list, or JSON Lines for .jsonl.")],
    mixture: Annotated[
        Path | None,
        typer.Argument(help="Mixture YAML: datasets {path, strategy, name?, image_root?}, seed, total."),
    ] = None,
    lock: Annotated[
        Path | None,
        typer.Option(help="Where to write the lock (default: beside --out, as NAME.lock.json)."),
    ] = None,
    from_lock: Annotated[
        Path | None,
        typer.Option(help="Rebuild the mixture a lock records (its source files must be unchanged)."),
    ] = None,
    skip_bad: Annotated[bool, typer.Option(help="Skip bad records (counted, with a warning).")] = False,
    check_images: Annotated[
        bool, typer.Option(help="Check every image exists (under image_root, else beside --out).")
    ] = False,
    absolute_images: Annotated[
        bool, typer.Option(help="Write image paths of datasets with an image_root as absolute paths.")
    ] = False,
    shuffle: Annotated[
        bool, typer.Option(help="Shuffle the records with the seed (--no-shuffle: dataset order).")
    ] = True,
) -> None:
    """Choose records from each dataset (all, first:N%, random:N, weight:W), check them, give them
    unique ids and portable image paths, and write the mixture and its lock.

    With --from-lock the choice comes from a lock instead: the same bytes as the first time."""
    from graft.instruct.mix import (
        MixError,
        build_mix,
        format_summary,
        load_mix_spec,
        read_lock,
        rebuild_mix,
        write_mix,
    )

    if (mixture is None) == (from_lock is None):
        fail("give exactly one of MIXTURE (a mixture YAML) or --from-lock LOCK")
    if from_lock is not None and (skip_bad or absolute_images or not shuffle):
        fail("--skip-bad, --absolute-images and --no-shuffle come from the lock with --from-lock")
    lock_path = lock if lock is not None else None if from_lock else out.with_name(f"{out.stem}.lock.json")
    try:
        if from_lock is not None:
            result = rebuild_mix(read_lock(from_lock), out, check_images=check_images, where=str(from_lock))
        else:
            spec = load_mix_spec(mixture)
            result = build_mix(
                spec,
                out,
                skip_bad=skip_bad,
                check_images=check_images,
                absolute_images=absolute_images,
                shuffle=shuffle,
            )
        inputs = {d.path.resolve(): "one of the mixture's source files" for d in result.lock.datasets}
        if mixture is not None:
            inputs[mixture.resolve()] = "the mixture YAML"
        if from_lock is not None:
            inputs[from_lock.resolve()] = "the lock it is rebuilt from"
        for target in (out, lock_path):
            if target is not None and target.resolve() in inputs:
                fail(f"{target} is {inputs[target.resolve()]}; write the mixture elsewhere")
        if lock_path is not None and lock_path.resolve() == out.resolve():
            fail("--lock and --out are the same file")
        write_mix(result, out, lock_path)
    except (MixError, OSError) as err:  # OSError: an --out or --lock that cannot be written
        fail(str(err))
    typer.echo(format_summary(result))
    typer.echo(f"mixture: {out} ({len(result.records)} records)")
    if lock_path is not None:
        typer.echo(f"lock: {lock_path} (graft mix --from-lock {lock_path} --out {out} rebuilds it)")
