"""``graft report``: run folders and demo summaries -> one comparative report (markdown + HTML)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from graft.cli.app import app, fail


@app.command("report")
def report_cmd(
    runs: Annotated[
        list[Path],
        typer.Argument(
            help="Eval run folders ({task}/results.json), demo folders or demo summary.json files."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Folder for report.md and report.html.")] = Path("report"),
    max_failures: Annotated[int, typer.Option(help="Wrong samples shown per run and task.")] = 5,
) -> None:
    """One table of every model x task family, per-category bars and browsable failures."""
    from graft.report.build import build_report

    try:
        md, page = build_report(runs, out, max_failures=max_failures)
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))
    typer.echo(f"wrote {md} and {page}")
    if (md.parent / "expert_comparison.md").exists():
        typer.echo(f"end-to-end vs expert pipelines: {md.parent / 'expert_comparison.md'}")
