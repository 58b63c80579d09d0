"""Verbs that run a trained model: chat, predict, evaluate."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from graft.cli.app import JudgeApiKey, JudgeBaseUrl, JudgeCache, JudgeModel, SampleLimit, app, fail
from graft.inference import load_for_inference

if TYPE_CHECKING:
    from graft.modeling import GraftForConditionalGeneration
    from graft.processing import GraftProcessor


def _load(model_dir: Path, bf16: bool = False) -> tuple[GraftForConditionalGeneration, GraftProcessor]:
    """``load_for_inference`` for a verb: a folder that is no model is a clear error and exit 2."""
    try:
        return load_for_inference(model_dir, bf16)
    except (FileNotFoundError, ValueError) as err:  # ValueError: a damaged weight file, not a graft model
        fail(str(err))


CHAT_COMMANDS = (
    "commands: /image PATH (attach an image to your next turn), /reset (a new conversation), "
    "/help, /quit (or an empty line, or Ctrl-D); Ctrl-C stops an answer"
)


def _unquoted(path: str) -> str:
    """``/image``'s path, out of the quotes a terminal puts around a dragged-in file's path with
    spaces (``'/my pictures/a.png'``) unless a file is named so."""
    if len(path) > 1 and path[0] == path[-1] and path[0] in "'\"" and not os.path.exists(path):
        return path[1:-1]
    return path


@app.command("chat")
def chat_cmd(
    model: Annotated[Path, typer.Option(help="A graft model folder.")],
    image: Annotated[
        list[Path] | None, typer.Option(help="An image for the first turn (repeatable).")
    ] = None,
    prompt: Annotated[
        str | None, typer.Option(help="Ask this one question and exit (else an interactive session).")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Longest answer, in tokens.")] = 256,
    temperature: Annotated[float, typer.Option(help="0 = greedy; > 0 samples.")] = 0.0,
    bf16: Annotated[bool, typer.Option(help="Run in bfloat16.")] = False,
) -> None:
    """Talk to a model about images. Refer to images with `<image>` in a turn, or they are prepended.

    In the interactive session, `/image PATH` attaches an image to the next turn, `/reset`
    starts a new conversation (the `--image` images attach to its first turn again), `/help`
    lists the commands, and `/quit`, an empty line or Ctrl-D quits; Ctrl-C stops an answer."""
    from graft.generate import ChatSession, GenerationSettings
    from graft.processing import ImageLoadError, SampleTooLongError, load_image

    try:  # before the model loads: a wrong path fails in a second
        given = [load_image(p) for p in image or []]
    except ImageLoadError as err:
        fail(f"--image: {err}")
    mdl, processor = _load(model, bf16)
    if processor.template.name == "plain":  # a stage-1 model: the question would vanish unsaid
        typer.secho(
            "note: this model's template is plain (pre-training): it reads only the images, not your "
            "words, and answers with a caption",
            fg=typer.colors.YELLOW,
            err=True,
        )
    sampled = {"do_sample": True, "temperature": temperature} if temperature > 0 else {}
    settings = GenerationSettings(max_new_tokens=max_new_tokens, **sampled)
    session = ChatSession(mdl, processor, settings=settings)
    # images for the next turn: the --image ones at a conversation's start, then /image ones
    first, attached = list(given), []
    if prompt is not None:
        try:
            typer.echo(session.ask(prompt, images=first))
        except ValueError as err:  # e.g. more <image> markers than images
            fail(f"--prompt: {err}")
        return
    while True:
        try:
            text = input("you> ").strip()
        except EOFError:
            typer.echo()  # Ctrl-D leaves the cursor after the prompt
            break
        command, _, argument = text.partition(" ")
        if not text or command in ("/quit", "/exit"):
            break
        if command == "/help":
            typer.echo(CHAT_COMMANDS)
            continue
        if command == "/image":
            try:  # a wrong path costs that command, not the conversation
                if not argument.strip():
                    raise ImageLoadError("/image needs a path: /image PATH")
                attached.append(load_image(_unquoted(argument.strip())))
                typer.echo(f"({len(first) + len(attached)} image(s) attached to your next turn)")
            except ImageLoadError as err:
                typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
            continue
        if command == "/reset":  # a new conversation about the same --image images, not about none
            session.reset()
            first = list(given)
            typer.echo("(new conversation" + (": --image attaches to your next turn)" if given else ")"))
            continue
        if command.startswith("/") and command[1:].isalpha():  # not a question to the model
            typer.secho(f"error: unknown command {command}\n{CHAT_COMMANDS}", fg=typer.colors.RED, err=True)
            continue
        try:
            typer.echo("graft> " + session.ask(text, images=first + attached))
        except ValueError as err:  # the images stay attached for the next try
            hint = " (/reset)" if isinstance(err, SampleTooLongError) and session.messages else ""
            if first or attached:
                hint += f"\n({len(first) + len(attached)} image(s) still attached to your next turn)"
            typer.secho(f"error: {err}{hint}", fg=typer.colors.RED, err=True)
            continue
        except KeyboardInterrupt:  # Ctrl-C stops a long answer, not the conversation
            typer.echo("\n(answer interrupted; the turn is not kept)")
            continue
        first, attached = [], []


@app.command("predict")
def predict_cmd(
    model: Annotated[Path, typer.Option(help="A graft model folder.")],
    questions: Annotated[Path, typer.Option(help='JSONL of {"id", "image"|"images", "question"}.')],
    out: Annotated[Path, typer.Option(help='JSONL of {"id", "prediction"}; a rerun skips finished ids.')],
    image_root: Annotated[Path, typer.Option(help="Folder that image paths are relative to.")] = Path("."),
    batch_size: Annotated[int, typer.Option(help="Prompts per generation batch.")] = 16,
    max_new_tokens: Annotated[int, typer.Option(help="Longest answer, in tokens.")] = 64,
    skip_bad: Annotated[bool, typer.Option(help="Skip (and count) bad rows instead of stopping.")] = False,
    bf16: Annotated[bool, typer.Option(help="Run in bfloat16.")] = False,
) -> None:
    """Answer a JSONL of questions in batches (greedy), resumable."""
    from graft.eval.predict import predict_jsonl
    from graft.eval.settings import EvalSettings

    try:
        settings = EvalSettings(batch_size=batch_size, max_new_tokens=max_new_tokens, skip_bad=skip_bad)
    except ValueError as err:
        fail(str(err))
    mdl, processor = _load(model, bf16)
    try:
        stats = predict_jsonl(mdl, processor, questions, out, image_root=image_root, settings=settings)
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    typer.echo(json.dumps(stats, indent=2, default=str))


@app.command("evaluate")
def evaluate_cmd(
    model: Annotated[Path, typer.Option(help="A graft model folder.")],
    questions: Annotated[list[Path], typer.Option(help="Question file, graft's format (repeatable).")],
    out: Annotated[Path, typer.Option(help="Run folder: {file}/ and {file}_blind/ results.")] = Path(
        "runs/evaluate"
    ),
    image_root: Annotated[
        Path | None, typer.Option(help="Folder image paths are relative to (default: each file's).")
    ] = None,
    blind: Annotated[
        bool, typer.Option(help="Also score with every image blanked (does the model look?).")
    ] = True,
    limit: Annotated[int | None, typer.Option(help="Only the first N questions of each file.")] = None,
    batch_size: Annotated[int, typer.Option(help="Prompts per generation batch.")] = 32,
) -> None:
    """Accuracy (overall and per question type) on graft question files, with and without the
    images: an alias of `graft eval --task questions=FILE` (+ `--blind`) run for each file."""
    from graft.eval.questions import evaluate_question_files
    from graft.eval.settings import EvalSettings

    try:
        settings = EvalSettings(limit=limit, batch_size=batch_size)
    except ValueError as err:
        fail(str(err))
    mdl, processor = _load(model)
    try:
        results = evaluate_question_files(mdl, processor, questions, out, image_root, settings, blind)
    except (ValueError, OSError) as err:
        fail(str(err))
    typer.echo(json.dumps(results, indent=2))


@app.command("eval")
def eval_cmd(
    model: Annotated[Path, typer.Option(help="A graft model folder.")],
    out: Annotated[Path, typer.Option(help="Run folder: {run}/predictions.jsonl, results.json.")],
    task: Annotated[
        list[str] | None,
        typer.Option(
            help="A task and its data (repeatable): NAME=PATH (pope=data/pope), TASK.yaml=PATH, or "
            "TASK.yaml alone when the file has dataset_path. See docs/tasks.md."
        ),
    ] = None,
    bench: Annotated[
        Path | None, typer.Option(help="A benchmark folder: run every task its bench.json lists.")
    ] = None,
    limit: SampleLimit = None,
    batch_size: Annotated[int, typer.Option(help="Prompts per generation batch.")] = 16,
    max_new_tokens: Annotated[
        int | None, typer.Option(help="Longest answer, in tokens (default: the task's generation_kwargs).")
    ] = None,
    skip_bad: Annotated[bool, typer.Option(help="Skip (and count) bad records instead of stopping.")] = False,
    blind: Annotated[
        bool,
        typer.Option(
            help="Replace every image by a blank one of the same size in the image processor's mean "
            "colour (does the model look?); recorded in results.json, never resumed into a seeing run."
        ),
    ] = False,
    bf16: Annotated[bool, typer.Option(help="Run in bfloat16.")] = False,
    judge_model: JudgeModel = None,
    judge_base_url: JudgeBaseUrl = None,
    judge_api_key: JudgeApiKey = None,
    judge_cache: JudgeCache = None,
) -> None:
    """Answer benchmark tasks in batches and score them exactly; a rerun resumes where it stopped.

    Built-in tasks: coco_caption, mme, pope, scienceqa_img, mmbench, llava_bench (needs a judge:
    --judge-* or the GRAFT_JUDGE_* / OPENAI_* environment; skipped in a --bench without one),
    demon; or a task file (docs/tasks.md). Under `accelerate launch` (or torchrun) the samples
    are split across the processes and scored once."""
    from graft.eval.families import check_judge
    from graft.eval.metrics import JudgeConfig
    from graft.eval.processes import process_state
    from graft.eval.runner import read_bench, run_bench, run_task
    from graft.eval.score import Options
    from graft.eval.settings import EvalSettings
    from graft.eval.tasks import get_task

    if not task and bench is None:
        fail("give --task NAME=PATH (repeatable) or --bench DIR")
    judge = JudgeConfig.from_env(
        model=judge_model, base_url=judge_base_url, api_key=judge_api_key, cache_dir=judge_cache
    )
    options = Options(judge=judge)
    runs = []
    try:  # every setting, task and path checked before the model loads
        settings = EvalSettings(
            limit=limit,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            skip_bad=skip_bad,
            blind=blind,
            progress=os.environ.get("TQDM_DISABLE") != "1",  # graft -q
        )
        for item in task or []:
            name, sep, path = item.partition("=")
            if sep and not path:
                fail(f"--task expects NAME=PATH, got {item!r}")
            spec = get_task(name)
            if not sep and spec.dataset_path is None:
                fail(f"--task expects NAME=PATH, got {item!r} (task {spec.name!r} has no dataset_path)")
            data = spec.data_path(path or None)
            if not data.exists():
                fail(f"task {spec.name}: data not found: {data}")
            if spec.needs_judge:
                check_judge(options, f"task {spec.name}")
            if any(spec.name == other.name for other, _ in runs):
                fail(f"two --task entries for {spec.name!r}: both would write {out / spec.name}")
            runs.append((spec, data))
        if bench is not None:
            for run in read_bench(bench):
                if any(run == spec.name for spec, _ in runs):
                    fail(f"--task {run} and --bench's run {run!r} would both write {out / run}")
        if out.exists() and not out.is_dir():
            fail(f"--out {out} is a file; give a folder")
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    mdl, processor = _load(model, bf16)
    summary: dict = {}
    for spec, data in runs:
        try:
            result = run_task(mdl, processor, spec, data, out, settings, options=options)
        except (ValueError, FileNotFoundError, KeyError) as err:
            fail(f"task {spec.name}: {err}")
        summary[spec.name] = result["metrics"]
    failed = []
    if bench is not None:
        results = run_bench(mdl, processor, bench, out, settings, options=options)
        for run, res in results.items():
            summary[run] = res.get("metrics") or {k: res[k] for k in ("skipped", "error") if k in res}
            failed += [run] if "error" in res else []
    if process_state().is_main_process:
        typer.echo(json.dumps(summary, indent=2, default=str))
    if failed:
        fail(f"run(s) {failed} failed; the others are in {out}")
