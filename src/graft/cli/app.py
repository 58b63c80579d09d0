"""The typer application and what every verb shares (logging switches, errors, overrides)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

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
        # for subprocesses (accelerate's workers); a tqdm already imported reads it too late, so
        # _progress_bars_off turns this process's bars off. For this command only: a program that
        # calls the app again, quiet or not, finds both as they were
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
        ctx.call_on_close(_progress_bars_off(every_tqdm=quiet))


#: where ``disable`` is among tqdm's positional parameters (after iterable, desc, ... ascii)
_TQDM_DISABLE_AT = 10


def _progress_bars_off(every_tqdm: bool) -> Callable[[], None]:
    """Turn off transformers' and huggingface_hub's progress bars and, with ``every_tqdm``, every
    other tqdm bar too (a library's plain ``tqdm(...)``, such as transformers' GGUF conversion, or
    graft's own); returns what puts them back as they were."""
    import huggingface_hub.utils as hub
    import tqdm.std
    from transformers.utils import logging as hf_logging

    hf_was, hub_was = hf_logging.is_progress_bar_enabled(), not hub.are_progress_bars_disabled()
    hf_logging.disable_progress_bar()  # huggingface_hub's too
    init = tqdm.std.tqdm.__dict__["__init__"]

    def quiet_init(self: Any, *args: Any, **kwargs: Any) -> None:
        # disable=True even where the caller asks for a bar: -q means none (TQDM_DISABLE comes too late)
        if len(args) > _TQDM_DISABLE_AT:
            args = (*args[:_TQDM_DISABLE_AT], True, *args[_TQDM_DISABLE_AT + 1 :])
        else:
            kwargs["disable"] = True
        init.__get__(self, type(self))(*args, **kwargs)

    if every_tqdm:
        tqdm.std.tqdm.__init__ = quiet_init

    def restore() -> None:
        if every_tqdm:
            tqdm.std.tqdm.__init__ = init
        if hf_was:
            hf_logging.enable_progress_bar()  # enables huggingface_hub's too
        if hub_was:
            hub.enable_progress_bars()
        else:
            hub.disable_progress_bars()

    return restore


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


def check_out_folder(out: Path, overwrite: bool, what: str) -> None:
    """Fail, before any work, unless ``--out`` can take a new folder: not a file, and empty unless
    ``--overwrite`` (the folder is then replaced whole, never written into)."""
    if out.exists() and not out.is_dir():
        fail(f"--out {out} is a file; give a folder for {what}")
    if not overwrite and out.is_dir() and any(out.iterdir()):
        fail(f"--out {out} exists and is not empty; pass --overwrite to replace it")


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
