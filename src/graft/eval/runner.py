"""``run_task``: a task's real files -> batched answers -> its scorers; ``run_bench``: every run
of a benchmark folder's ``bench.json``.

The samples a task's reader gives are written once as a questions file; answers go through
``predict_jsonl``, which appends and flushes every batch and skips finished ids, so a killed
run restarted on the same folder loses and duplicates nothing. Results carry the model's config
hash, a fingerprint of its weights and the package version, so a results file always says what
produced it; a folder whose answers another model or blind setting gave is never resumed
(``model.json``). What a run does (limit, batch size, answer length, bad records, blind) is one
``EvalSettings``.

Under ``accelerate launch`` / ``torchrun`` the samples are split across the processes: each
answers its share into its own file, the main process merges them, scores once and writes
``results.json`` once (see ``graft.eval.processes``). With one process nothing of that happens.

Layout of ``out_dir/{run}/`` (run = the task's name unless given): ``questions.jsonl``,
``predictions.jsonl``, ``model.json``, ``results.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import gather_object

import graft
from graft.eval.cost import end_to_end_cost
from graft.eval.families import Options, check_judge
from graft.eval.predict import count_cut, predict_jsonl
from graft.eval.processes import EXPECTED, from_main, merge_shards, process_state, shard_path, step
from graft.eval.readers import IMAGE_MARKER, ReadResult
from graft.eval.score import read_predictions, score_samples
from graft.eval.settings import EvalSettings
from graft.eval.tasks import TaskSpec, get_task
from graft.files import write_text_atomic
from graft.record_files import iter_jsonl, load_json

logger = logging.getLogger(__name__)
MANIFEST = "bench.json"


def config_hash(model: Any) -> str:
    """A short hash of the model's config: which architecture and settings were evaluated."""
    blob = json.dumps(model.config.to_diff_dict(), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@torch.no_grad()
def weights_fingerprint(model: Any, sample: int = 64) -> str:
    """A short hash of the weights: every tensor's name, shape and first and last ``sample``
    values. Cheap even for a 7B model, and it tells a retrained or other model apart."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().reshape(-1)
        ends = torch.cat([flat[:sample], flat[-sample:]]).float().cpu().numpy()
        digest.update(f"{name}{tuple(tensor.shape)}".encode() + ends.tobytes())
    return digest.hexdigest()[:16]


def _answered_by(model: Any, settings: EvalSettings, generation: dict[str, Any]) -> dict[str, Any]:
    """What gave a folder's answers (its ``model.json``): the model's config hash and weights,
    the generation settings, and ``"blind": true`` for a blind run (absent otherwise, as in
    folders written before)."""
    who: dict[str, Any] = {"config_hash": config_hash(model), "weights": weights_fingerprint(model)}
    who["generation"] = generation
    return (who | {"blind": True}) if settings.blind else who


#: fields of ``model.json`` that folders written before did not have: not compared when absent
_LATER_FIELDS = ("generation",)
_WHAT_DIFFERS = {"blind": "with another blind setting", "generation": "with other generation settings"}


def check_same_model(folder: Path, model_id: dict[str, Any]) -> None:
    """Resuming appends to the answers already in ``folder``: refuse when another model (other
    config or weights) gave them, a blind run when this one sees (or the other way round), or
    other generation settings (a longer answer limit), rather than mix two kinds of answers in
    one score."""
    path = folder / "model.json"
    if path.exists() and (folder / "predictions.jsonl").exists():
        before = json.loads(path.read_text(encoding="utf-8"))
        keys = (before.keys() | model_id.keys()) - {k for k in _LATER_FIELDS if k not in before}
        changed = sorted(k for k in keys if before.get(k, False) != model_id.get(k, False))
        if changed:
            what = " and ".join(sorted({_WHAT_DIFFERS.get(k, "by another model") for k in changed}))
            then, now = ({k: d.get(k, False) for k in changed} for d in (before, model_id))
            values = "; ".join(f"{k} {then[k]} then, {now[k]} now" for k in changed)
            raise ValueError(
                f"{folder}: its predictions were made {what} ({values}); evaluate into a new --out "
                "folder, or delete this one to start over"
            )
    write_text_atomic(path, json.dumps(model_id) + "\n")


def questions_file(read: ReadResult, path: Path, image_token: str, data: Path | None = None) -> None:
    """The samples as predict_jsonl's input; rewritten only when they changed, so a resumed run
    keeps matching its predictions by id. A sample already answered (in ``predictions.jsonl``
    beside it) whose question or images are not the ones it was answered for is an error: the
    folder holds answers to other data (``data`` names this run's, for the message)."""
    rows = [
        {
            "id": str(s.id),
            "images": [str(Path(p).resolve()) for p in s.images],
            "question": s.prompt.replace(IMAGE_MARKER, image_token),
        }
        for s in read.samples
    ]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        _check_answered_questions(path, rows, data)
        write_text_atomic(path, text)


def _check_answered_questions(path: Path, rows: list[dict[str, Any]], data: Path | None) -> None:
    predictions = path.parent / "predictions.jsonl"
    if not (path.exists() and predictions.exists()):
        return
    answered = {str(r.get("id")) for r, _ in iter_jsonl(predictions, on_bad=lambda err: None)}
    before = {r["id"]: r for r in map(json.loads, path.read_text(encoding="utf-8").splitlines())}
    for row in rows:
        if row["id"] in answered and row["id"] in before and before[row["id"]] != row:
            source = f" in {data}" if data is not None else ""
            raise ValueError(
                f"{path.parent}: sample {row['id']!r} was answered for another question or image than "
                f"it has now{source} (the data changed since); evaluate into a new --out folder, or "
                "delete this one to start over"
            )


def read_for_run(spec: TaskSpec, path: Path, settings: EvalSettings) -> ReadResult:
    """The task's samples at ``path``, cut to ``settings.limit`` (``TaskSpec.first``); none at
    all is an error."""
    read = spec.read(path, skip_bad=settings.skip_bad)
    if settings.limit is not None:
        read = spec.first(read, settings.limit)
    if not read.samples:
        raise ValueError(f"{path}: task {spec.name!r} read no samples")
    return read


def run_task(
    model: Any,
    processor: Any,
    task: str | os.PathLike | TaskSpec,
    data: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    settings: EvalSettings | None = None,
    options: Options | None = None,
    run_name: str | None = None,
    **changes: Any,
) -> dict[str, Any]:
    """Evaluate ``model`` on one task (a name, an alias or a task file) read from ``data``
    (default: the task file's ``dataset_path``); returns (and writes) its results.

    ``settings`` default to ``EvalSettings()``, with ``changes`` to its fields on top
    (``limit=3``); their ``max_new_tokens`` overrides the task's ``generation_kwargs``.
    ``run_name`` names the folder under ``out_dir`` (default: the task's name), so one task can
    score several data sets.
    """
    settings = (settings or EvalSettings()).replace(**changes)
    spec, path, name, folder = plan_run(task, data, out_dir, options, run_name)
    state = process_state()
    multi = state.num_processes > 1

    # the main process reads first: a reader may write beside the data (MMBench's images)
    read = step(state, lambda: read_for_run(spec, path, settings), who="main")
    if multi:
        theirs = step(state, lambda: read_for_run(spec, path, settings), who="others")
        read = read if state.is_main_process else theirs
    assert read is not None
    questions, predictions = folder / "questions.jsonl", folder / "predictions.jsonl"

    model_id = _answered_by(model, settings, settings.generation_kwargs(spec.generation))

    def prepare() -> None:
        folder.mkdir(parents=True, exist_ok=True)
        check_same_model(folder, model_id)
        questions_file(read, questions, processor.image_token, path)
        merge_shards(predictions)  # what a killed multi-process run left in its per-process files

    step(state, prepare, who="main")
    rank, world = state.process_index, state.num_processes
    began = time.perf_counter()
    counts = step(
        state,
        lambda: predict_jsonl(
            model,
            processor,
            questions,
            shard_path(predictions, rank) if multi else predictions,
            image_root=folder,
            settings=settings.replace(progress=settings.progress and state.is_main_process),
            generation_kwargs=spec.generation,
            shard=(rank, world) if multi else None,
            also_done=[predictions] if multi else (),
            label=str(folder),  # several runs' bars in one terminal: which run each one is
        ),
    )
    assert counts is not None
    seconds = time.perf_counter() - began
    if multi:  # a collective: every process has finished its share past this line
        # every process saw the same questions and finished ids; each wrote (and skipped) its own share
        shares = gather_object([counts])
        counts = counts | {k: sum(c[k] for c in shares) for k in ("written", "bad")}

    def finish() -> dict[str, Any]:
        merge_shards(predictions)
        cut = count_cut(predictions)
        if cut:
            limit = settings.generation(spec.generation).max_new_tokens
            logger.warning(
                "%s: %d answers reached the %d-token answer limit before their turn ended and are "
                "scored as cut (a longer limit: EvalSettings.max_new_tokens, graft eval's --max-new-tokens)",
                name,
                cut,
                limit,
            )
        metrics = score_samples(spec, read, read_predictions(predictions), options)
        cost = end_to_end_cost(processor, questions, predictions, seconds, counts["written"], folder)
        return write_results(
            folder,
            result_head(spec, name, path, settings, metrics, counts | {"cut": cut})
            | {
                "blind": settings.blind,
                "processes": world,
                "pipeline": "end-to-end",
                "cost": cost,
                "model_config_hash": model_id["config_hash"],
                "model_weights": model_id["weights"],
            },
        )

    # scored once, by the main process (a judge is asked once); the others get its results
    return from_main(state, step(state, finish, who="main"))


def plan_run(
    task: str | os.PathLike | TaskSpec,
    data: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    options: Options | None,
    run_name: str | None,
) -> tuple[TaskSpec, Path, str, Path]:
    """A run's task, data path, name and folder, checked before any work (a judge the task needs
    is checked before hours of generation, not after)."""
    spec = get_task(task)
    if spec.needs_judge:
        check_judge(options, f"task {spec.name}")
    path = spec.data_path(data)
    name = run_name or spec.name
    if not name or Path(name).name != name or name in (".", ".."):
        raise ValueError(f"run name {name!r} must be a plain folder name")
    return spec, path, name, Path(out_dir) / name


def result_head(
    spec: TaskSpec, name: str, path: Path, settings: EvalSettings, metrics: Any, counts: dict
) -> dict[str, Any]:
    """What every pipeline's ``results.json`` says first."""
    return {
        "task": spec.name,
        "run": name,
        "family": spec.family,
        "task_file": str(spec.file) if spec.file else None,  # None: a built-in task
        "data": str(path.resolve()),  # absolute: a report read from anywhere finds the samples
        "metrics": metrics,
        "prediction_counts": counts,
        "limit": settings.limit,  # None: every sample the data holds
        "generation": settings.generation_kwargs(spec.generation),
    }


def write_results(folder: Path, results: dict[str, Any]) -> dict[str, Any]:
    results = results | {"graft_version": graft.__version__}
    write_text_atomic(folder / "results.json", json.dumps(results, indent=2, default=str) + "\n")
    return results


def read_bench(bench_dir: str | os.PathLike) -> dict[str, tuple[TaskSpec, Path]]:
    """Run name -> (task, data path) from ``bench_dir/bench.json``:
    ``{"tasks": {"<run>": {"task": "<name or task file>", "path": "<relative to bench_dir>"}}}``
    (the first manifest format, ``{"tasks": {"<task>": "<path>"}}``, is read too). Every task is
    resolved now, so a bad manifest fails before anything runs."""
    bench = Path(bench_dir)
    manifest = bench / MANIFEST
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest} not found: is {bench} a benchmark folder (graft world)?")
    doc = load_json(manifest)
    tasks = doc.get("tasks") if isinstance(doc, dict) else None
    if not isinstance(tasks, dict) or not tasks:
        raise ValueError(f"{manifest}: 'tasks' must be a non-empty object of run name -> {{task, path}}")
    runs: dict[str, tuple[TaskSpec, Path]] = {}
    for run, entry in tasks.items():
        if isinstance(entry, str):
            task, rel = run, entry
        elif (
            isinstance(entry, dict)
            and isinstance(entry.get("task"), str)
            and isinstance(entry.get("path"), str)
        ):
            task, rel = entry["task"], entry["path"]
        else:
            raise ValueError(
                f"{manifest}: tasks.{run}: expected {{'task': NAME, 'path': PATH}}, got {entry!r:.80}"
            )
        try:
            spec = get_task(task, base=bench)
        except (ValueError, FileNotFoundError) as err:
            raise ValueError(f"{manifest}: tasks.{run}: {err}") from None
        runs[run] = (spec, bench / rel)
    return runs


def run_bench(
    model: Any,
    processor: Any,
    bench_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    settings: EvalSettings | None = None,
    options: Options | None = None,
    **changes: Any,
) -> dict[str, dict[str, Any]]:
    """Every run of ``bench_dir/bench.json`` into ``out_dir/{run}/``; run name -> results.

    ``settings`` (and ``changes`` to its fields) apply to every run, as in ``run_task``: their
    ``max_new_tokens`` overrides every task's own. A run whose task needs an LLM judge when none
    is configured is skipped (``{"skipped": why}``); a run that fails on its data is reported
    (``{"error": message}``) and the others go on. Rerunning resumes every run where it stopped.
    """
    settings = (settings or EvalSettings()).replace(**changes)
    return bench_runs(
        bench_dir,
        options,
        lambda spec, path, run: run_task(
            model, processor, spec, path, out_dir, settings, options=options, run_name=run
        ),
    )


def bench_runs(
    bench_dir: str | os.PathLike,
    options: Options | None,
    run_one: Callable[[TaskSpec, Path, str], dict[str, Any]],
) -> dict[str, dict[str, Any]]:
    """``run_one(task, data, run name)`` for every run of a bench: a run whose task needs a judge
    when none is configured is skipped, one that fails on its data is reported, the others go on."""
    results: dict[str, dict[str, Any]] = {}
    for run, (spec, path) in read_bench(bench_dir).items():
        head = {"run": run, "task": spec.name, "data": str(path)}
        if spec.needs_judge:
            try:
                check_judge(options, f"task {spec.name}")
            except ValueError as err:
                logger.warning("%s: skipped: %s", run, err)
                results[run] = head | {"skipped": str(err)}
                continue
        try:
            results[run] = run_one(spec, path, run)
        except EXPECTED as err:
            logger.error("%s: failed: %s", run, err)
            results[run] = head | {"error": str(err)}
    return results
