"""The expert-model baseline: image -> expert text -> text-only LLM, on any eval task.

Each image is described by an expert (``graft.pipelines.expert_describe``: a graft model prompted to
caption, the shapes world's exact description, or a user's JSONL), and the question is answered
by a text-only LLM (``graft.pipelines.expert_answer``: a causal LM folder or an OpenAI-compatible
endpoint) with ``Image k: <description>`` where the k-th image stood. The task's reader, prompt
and scorers are the end-to-end run's (``graft.eval.runner``), and so is the layout of
``out_dir/{run}/``: ``questions.jsonl``, ``predictions.jsonl`` (each row also keeps the text
prompt the answerer read), ``model.json``, ``results.json`` (``"pipeline": "expert"``, the
describer and answerer, and the cost of both calls per sample), plus ``cost.jsonl`` (the
answerer's time and tokens per batch). Descriptions are cached per image in one JSONL
(``ExpertSettings.cache``, default ``out_dir/descriptions.jsonl``), shared by every task.

A rerun resumes: finished ids are skipped and cached descriptions reused. An endpoint that is
down fails before any work (``/v1/models``) or, mid-run, after what was answered is on disk.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from graft.eval.families import Options
from graft.eval.predict import done_ids, parse_prompt_row
from graft.eval.readers import IMAGE_MARKER
from graft.eval.readers.base import Collector, Sample
from graft.eval.runner import (
    bench_runs,
    check_same_model,
    plan_run,
    questions_file,
    read_for_run,
    result_head,
    write_results,
)
from graft.eval.score import read_predictions, score_samples
from graft.eval.settings import EvalSettings
from graft.eval.tasks import TaskSpec
from graft.pipelines.expert_answer import IMAGE_TEXT, Answer, Answerer, EndpointError, with_descriptions
from graft.pipelines.expert_describe import DescriberError, DescriptionCache, file_hash, parse_spec
from graft.processing import ImageLoadError
from graft.record_files import iter_jsonl

logger = logging.getLogger(__name__)
COST_FILE = "cost.jsonl"


@dataclass(frozen=True)
class ExpertSettings:
    """Which expert describes the images and which text LLM answers (one of ``answerer`` or
    ``endpoint``)."""

    #: ``model:DIR`` (a graft model captions), ``oracle:WORLD`` (a shapes world's exact
    #: description) or ``jsonl:FILE`` (``{"image", "description"}`` rows)
    describer: str
    #: a causal LM folder with a chat template
    answerer: str | None = None
    #: an OpenAI-compatible base URL (``http://host:8000/v1``)
    endpoint: str | None = None
    endpoint_model: str | None = None
    api_key: str | None = None
    #: what a ``model:`` describer is asked about each image
    caption_prompt: str = "Describe the image in detail."
    caption_max_new_tokens: int = 128
    #: how a description stands in for its image (``{k}``: 1, 2, ... in order)
    image_text: str = IMAGE_TEXT
    #: the descriptions' JSONL (None: ``out_dir/descriptions.jsonl``)
    cache: Path | None = None
    timeout: float = 60.0
    max_retries: int = 1
    bf16: bool = False

    def __post_init__(self) -> None:
        parse_spec(self.describer)
        if (self.answerer is None) == (self.endpoint is None):
            raise ValueError("give one answerer: a causal LM folder or an OpenAI-compatible endpoint URL")
        if "{description}" not in self.image_text:
            raise ValueError(f"image_text {self.image_text!r} must contain {{description}}")
        if self.caption_max_new_tokens < 1:
            raise ValueError("caption_max_new_tokens must be >= 1")

    def replace(self, **changes: Any) -> ExpertSettings:
        return dataclasses.replace(self, **changes)


@dataclass
class ExpertPipeline:
    """A describer, an answerer and where descriptions are cached: what answers an expert run."""

    describer: Any
    answerer: Answerer
    cache: DescriptionCache
    image_text: str = IMAGE_TEXT

    @property
    def identity(self) -> dict[str, str]:
        return {"pipeline": "expert", "describer": self.describer.id, "answerer": self.answerer.id}


def build_pipeline(
    expert: ExpertSettings, out_dir: str | os.PathLike, batch_size: int = 8, answerer: Answerer | None = None
) -> ExpertPipeline:
    """The answerer first (an endpoint that is down fails here, before anything loads), then the
    describer, then the cache."""
    from graft.pipelines.expert_answer import EndpointAnswerer, LocalAnswerer
    from graft.pipelines.expert_describe import JsonlDescriber, ModelDescriber, OracleDescriber

    if answerer is None:
        if expert.endpoint is not None:
            answerer = EndpointAnswerer(
                expert.endpoint, expert.endpoint_model, expert.api_key, expert.timeout, expert.max_retries
            )
        else:
            answerer = LocalAnswerer(Path(expert.answerer or ""), bf16=expert.bf16)
    kind, arg = parse_spec(expert.describer)
    if kind == "model":
        from graft.inference import load_for_inference

        model, processor = load_for_inference(arg, expert.bf16)
        describer: Any = ModelDescriber(
            model, processor, expert.caption_prompt, expert.caption_max_new_tokens, batch_size
        )
    elif kind == "oracle":
        describer = OracleDescriber(arg)
    else:
        describer = JsonlDescriber(arg)
    cache = DescriptionCache(expert.cache or Path(out_dir) / "descriptions.jsonl")
    return ExpertPipeline(describer, answerer, cache, expert.image_text)


def _describe(pipe: ExpertPipeline, batch: list[Sample], bad: Collector) -> list[tuple[Sample, list[str]]]:
    """(row, its images' descriptions in order) for each row whose images can all be described;
    when one cannot, the rows are tried one by one so the one at fault is named."""
    try:
        texts = pipe.cache.describe(pipe.describer, [p for row in batch for p in row.images])
    except (DescriberError, ImageLoadError, OSError) as err:
        if len(batch) == 1:
            bad.fail(f"{batch[0].where}: {err}")
            return []
        return [done for row in batch for done in _describe(pipe, [row], bad)]
    out, at = [], 0
    for row in batch:
        out.append((row, [d.text for d in texts[at : at + len(row.images)]]))
        at += len(row.images)
    return out


def _write(
    out: IO[str],
    cost_path: Path,
    described: list[tuple[Sample, list[str]]],
    prompts: list[str],
    answers: list[Answer],
) -> None:
    """Append the answers (of the first ``len(answers)`` rows) and their cost, synced to disk."""
    out.write(
        "".join(
            json.dumps({"id": row.id, "prediction": a.text, "prompt": p}, ensure_ascii=False) + "\n"
            for (row, _), p, a in zip(described, prompts, answers, strict=False)
        )
    )
    out.flush()
    os.fsync(out.fileno())
    if answers:
        cost = {
            "n": len(answers),
            "seconds": round(sum(a.seconds for a in answers), 4),
            "prompt_tokens": sum(a.prompt_tokens for a in answers),
            "answer_tokens": sum(a.answer_tokens for a in answers),
        }
        with cost_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(cost) + "\n")


def expert_predict_jsonl(
    pipe: ExpertPipeline,
    questions_path: str | os.PathLike,
    out_path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    settings: EvalSettings | None = None,
    generation_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, int]:
    """``predict_jsonl`` through the expert: the same question file, resume and counts; each
    answered row also keeps the ``prompt`` the answerer read. Every batch's answers are synced
    to disk before the next is asked, so an endpoint failing mid-run loses nothing."""
    settings = settings or EvalSettings()
    if settings.blind:
        raise ValueError("the expert pipeline cannot run blind: its answerer never sees an image")
    max_new_tokens = settings.generation(generation_kwargs).max_new_tokens
    questions_path, out_path = Path(questions_path), Path(out_path)
    root = Path(image_root) if image_root is not None else questions_path.parent
    bad = Collector(settings.skip_bad)
    read = bad.collect(
        iter_jsonl(questions_path, bad.skip), lambda r, w: parse_prompt_row(r, w, root, IMAGE_MARKER)
    )
    rows = read.samples[: settings.limit]
    done = done_ids(out_path)
    pending = [row for row in rows if row.id not in done]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if not done:  # answering from scratch: no cost of answers that are gone
        out_path.with_name(COST_FILE).unlink(missing_ok=True)
    written = 0
    with out_path.open("a", encoding="utf-8") as out:
        for start in range(0, len(pending), settings.batch_size):
            described = _describe(pipe, pending[start : start + settings.batch_size], bad)
            if not described:
                continue
            prompts = [
                with_descriptions(row.prompt, IMAGE_MARKER, texts, pipe.image_text)
                for row, texts in described
            ]
            failure = None
            try:
                answers = pipe.answerer.answer(prompts, max_new_tokens)
            except EndpointError as err:  # what it answered before failing is kept, then it stops
                answers, failure = err.answered, err
            _write(out, out_path.with_name(COST_FILE), described, prompts, answers)
            written += len(answers)
            if failure is not None:
                raise failure
    return {
        "total": len(rows),
        "already_done": len(rows) - len(pending),
        "written": written,
        "bad": len(read.bad),
    }


def expert_cost(pipe: ExpertPipeline, read_samples: list[Sample], folder: Path) -> dict[str, Any]:
    """Per answered sample: the answerer's seconds and tokens (``cost.jsonl``) and the describer's
    (each distinct image described once, from the cache), and both together."""
    answered = {"n": 0, "seconds": 0.0, "prompt_tokens": 0, "answer_tokens": 0}
    cost_path = folder / COST_FILE
    if cost_path.exists():
        for row, _ in iter_jsonl(cost_path):
            for key in answered:
                answered[key] += row.get(key, 0)
    n = max(1, answered["n"])
    images = {file_hash(p) for s in read_samples for p in s.images if Path(p).is_file()}
    described = [
        pipe.cache.rows[(h, pipe.describer.id)] for h in images if (h, pipe.describer.id) in pipe.cache.rows
    ]
    desc_seconds = sum(d.seconds for d in described)
    desc_tokens = sum(d.prompt_tokens + d.answer_tokens for d in described)
    ans_tokens = answered["prompt_tokens"] + answered["answer_tokens"]
    return {
        "calls_per_sample": 2,
        "samples_timed": answered["n"],
        "images_described": len(described),
        "describe_seconds_per_sample": desc_seconds / n,
        "describe_tokens_per_sample": desc_tokens / n,
        "answer_seconds_per_sample": answered["seconds"] / n,
        "answer_tokens_per_sample": ans_tokens / n,
        "seconds_per_sample": (desc_seconds + answered["seconds"]) / n,
        "tokens_per_sample": (desc_tokens + ans_tokens) / n,
    }


def run_expert_task(
    pipe: ExpertPipeline,
    task: str | os.PathLike | TaskSpec,
    data: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    settings: EvalSettings | None = None,
    options: Options | None = None,
    run_name: str | None = None,
    **changes: Any,
) -> dict[str, Any]:
    """``run_task`` with the expert pipeline answering: same reader, prompts, scorers and folder
    layout; ``results.json`` says ``"pipeline": "expert"`` and which describer and answerer.
    ``changes`` are fields of ``settings`` (``limit=3``)."""
    settings = (settings or EvalSettings()).replace(**changes)
    spec, path, name, folder = plan_run(task, data, out_dir, options, run_name)
    read = read_for_run(spec, path, settings)
    folder.mkdir(parents=True, exist_ok=True)
    check_same_model(folder, pipe.identity)
    questions, predictions = folder / "questions.jsonl", folder / "predictions.jsonl"
    questions_file(read, questions, IMAGE_MARKER, path)
    began = time.perf_counter()
    counts = expert_predict_jsonl(
        pipe, questions, predictions, image_root=folder, settings=settings, generation_kwargs=spec.generation
    )
    metrics = score_samples(spec, read, read_predictions(predictions), options)
    return write_results(
        folder,
        result_head(spec, name, path, settings, metrics, counts)
        | {
            "blind": False,
            "processes": 1,
            **pipe.identity,
            "wall_seconds": round(time.perf_counter() - began, 3),
            "cost": expert_cost(pipe, read.samples, folder),
        },
    )


def run_expert_bench(
    pipe: ExpertPipeline,
    bench_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    settings: EvalSettings | None = None,
    options: Options | None = None,
    **changes: Any,
) -> dict[str, dict[str, Any]]:
    """Every run of ``bench_dir/bench.json`` through the expert, as ``run_bench`` does: a run
    needing a judge without one is skipped, a run failing on its data is reported and the others
    go on; an endpoint failing stops the whole bench (every later run would fail the same way)."""
    settings = (settings or EvalSettings()).replace(**changes)
    return bench_runs(
        bench_dir,
        options,
        lambda spec, path, run: run_expert_task(pipe, spec, path, out_dir, settings, options, run_name=run),
    )
