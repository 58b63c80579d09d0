"""Verbs that run a trained model: chat, predict, evaluate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from graft.cli.app import app, fail


def load_for_inference(model_dir: Path, bf16: bool = False):  # noqa: ANN201 (model, processor)
    """A saved graft model and its processor, on accelerate's device, in eval mode."""
    import torch
    from accelerate import PartialState

    from graft.modeling import GraftForConditionalGeneration
    from graft.processing import GraftProcessor

    if not (model_dir / "config.json").exists():
        fail(f"{model_dir} is not a model folder (no config.json)")
    dtype = torch.bfloat16 if bf16 else torch.float32
    model = GraftForConditionalGeneration.from_pretrained(model_dir, dtype=dtype)
    return model.to(PartialState().device).eval(), GraftProcessor.from_pretrained(model_dir)


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
    """Talk to a model about images. Refer to images with <image> in a turn, or they are prepended.

    In the interactive session, `/image PATH` attaches an image to the next turn and `/reset`
    starts over; an empty line or Ctrl-D quits."""
    from graft.generate import ChatSession
    from graft.processing import load_image

    mdl, processor = load_for_inference(model, bf16)
    gen = {"max_new_tokens": max_new_tokens, "do_sample": temperature > 0}
    if temperature > 0:
        gen["temperature"] = temperature
    session = ChatSession(mdl, processor)
    pending = [load_image(p) for p in image or []]
    if prompt is not None:
        typer.echo(session.ask(prompt, images=pending, **gen))
        return
    while True:
        try:
            text = input("you> ").strip()
        except EOFError:
            break
        if not text:
            break
        if text.startswith("/image "):
            pending.append(load_image(text.removeprefix("/image ").strip()))
            continue
        if text == "/reset":
            session = ChatSession(mdl, processor)
            pending = []
            continue
        try:
            typer.echo("graft> " + session.ask(text, images=pending, **gen))
        except ValueError as err:
            typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        pending = []


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

    mdl, processor = load_for_inference(model, bf16)
    try:
        stats = predict_jsonl(
            mdl,
            processor,
            questions,
            out,
            image_root=image_root,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            skip_bad=skip_bad,
        )
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    typer.echo(json.dumps(stats, indent=2, default=str))


@app.command("evaluate")
def evaluate_cmd(
    model: Annotated[Path, typer.Option(help="A graft model folder.")],
    questions: Annotated[list[Path], typer.Option(help="Held-out question JSONL (repeatable).")],
    image_root: Annotated[Path, typer.Option(help="Folder that image paths are relative to.")] = Path("."),
    blind: Annotated[
        bool, typer.Option(help="Also score with every image blanked (does the model look?).")
    ] = True,
    limit: Annotated[int | None, typer.Option(help="Only the first N questions of each file.")] = None,
    batch_size: Annotated[int, typer.Option(help="Prompts per generation batch.")] = 32,
) -> None:
    """Accuracy (overall and per question type) on yes/no, multiple-choice or short-answer files."""
    from graft.eval.questions import evaluate_questions

    mdl, processor = load_for_inference(model)
    results = {}
    for path in questions:
        for is_blind in (False, True) if blind else (False,):
            res = evaluate_questions(
                mdl, processor, path, image_root, blind=is_blind, limit=limit, batch_size=batch_size
            )
            suffix = "_blind" if is_blind else ""
            results.update({f"{path.stem}/{k}{suffix}": v for k, v in res.items() if k != "predictions"})
    typer.echo(json.dumps(results, indent=2))


@app.command("eval")
def eval_cmd(
    model: Annotated[Path, typer.Option(help="A graft model folder.")],
    task: Annotated[
        list[str],
        typer.Option(
            help="NAME=PATH: a benchmark task and its real files (repeatable), e.g. pope=data/pope."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Run folder: {task}/predictions.jsonl, results.json.")],
    limit: Annotated[int | None, typer.Option(help="Only the first N samples of each task.")] = None,
    batch_size: Annotated[int, typer.Option(help="Prompts per generation batch.")] = 16,
    max_new_tokens: Annotated[int, typer.Option(help="Longest answer, in tokens.")] = 64,
    skip_bad: Annotated[bool, typer.Option(help="Skip (and count) bad records instead of stopping.")] = False,
    bf16: Annotated[bool, typer.Option(help="Run in bfloat16.")] = False,
) -> None:
    """Answer benchmark tasks in batches and score them exactly; a rerun resumes where it stopped.

    Tasks: coco_caption, mme, pope, scienceqa_img, mmbench, llava_bench (judge from the
    GRAFT_JUDGE_* / OPENAI_* environment), demon."""
    from graft.eval.jsonl import BadRecordError
    from graft.eval.metrics import JudgeConfig
    from graft.eval.runner import run_task
    from graft.eval.score import Options, task_name

    pairs = []
    for item in task:
        name, sep, path = item.partition("=")
        if not sep or not path:
            fail(f"--task expects NAME=PATH, got {item!r}")
        try:
            pairs.append((task_name(name), Path(path)))
        except ValueError as err:
            fail(str(err))
    judge = JudgeConfig.from_env() if any(name == "llava_bench" for name, _ in pairs) else None
    mdl, processor = load_for_inference(model, bf16)
    summary = {}
    for name, path in pairs:
        try:
            result = run_task(
                mdl,
                processor,
                name,
                path,
                out,
                limit=limit,
                batch_size=batch_size,
                max_new_tokens=max_new_tokens,
                skip_bad=skip_bad,
                options=Options(judge=judge),
            )
        except (BadRecordError, FileNotFoundError, ValueError) as err:
            fail(f"task {name}: {err}")
        summary[name] = result["metrics"]
    typer.echo(json.dumps(summary, indent=2, default=str))
