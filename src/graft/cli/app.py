"""The typer application and what every verb shares (logging switches, errors, overrides)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from graft.logs import configure_logging

app = typer.Typer(
    name="graft",
    help="Build, instruction-tune, evaluate and export multimodal LLMs (vision encoder + VPG + LLM).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)


@app.callback()
def _setup(
    ctx: typer.Context,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Only warnings and errors; no progress bars.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    configure_logging(level)
    if quiet:
        import os

        # every tqdm bar (graft's, the world's rendering, the libraries') reads this; for this
        # command only: a program that calls the app again, quiet or not, finds it as it was
        before = os.environ.get("TQDM_DISABLE")
        os.environ["TQDM_DISABLE"] = "1"
        ctx.call_on_close(
            lambda: (
                os.environ.pop("TQDM_DISABLE", None)
                if before is None
                else os.environ.update(TQDM_DISABLE=before)
            )
        )
    # transformers' own chatter (weight loading bars, advisory warnings) follows the same switch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error() if not verbose else hf_logging.set_verbosity_info()
    if quiet or not verbose:
        hf_logging.disable_progress_bar()


# the LLM judge's options, shared by the verbs that may score with a judge (eval, score)
JudgeModel = Annotated[str | None, typer.Option(help="Judge model name (env GRAFT_JUDGE_MODEL).")]
JudgeBaseUrl = Annotated[
    str | None, typer.Option(help="OpenAI-compatible base URL (env GRAFT_JUDGE_BASE_URL / OPENAI_BASE_URL).")
]
JudgeApiKey = Annotated[str | None, typer.Option(help="API key (env GRAFT_JUDGE_API_KEY / OPENAI_API_KEY).")]
JudgeCache = Annotated[
    Path | None, typer.Option(help="Folder caching judge replies by request (env GRAFT_JUDGE_CACHE).")
]
#: how many samples of each task a run answers (``TaskSpec.first``)
SampleLimit = Annotated[
    int | None,
    typer.Option(
        help="Only N samples of each task: the first N, or N/k from each of its k subtasks (MME, DEMON)."
    ),
]

#: the help of a verb's recipe argument (train, inspect)
RECIPE_HELP = (
    "A YAML recipe file, a folder `graft train` wrote (the recipe.yaml it ran), or the name of a "
    "recipe graft ships (llava-1.5-7b-stage1, shapes-stage1, vpgc-vicuna-7b ...: the files in "
    "graft/configs/)."
)


def fail(message: str) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def parse_overrides(pairs: list[str]) -> dict[str, object]:
    """``key.sub=value`` pairs; values parsed as YAML so numbers, booleans and lists work."""
    import yaml

    out: dict[str, object] = {}
    for pair in pairs:
        if "=" not in pair:
            fail(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out
