"""Score answers made elsewhere: a benchmark's real files + a predictions JSONL -> metrics.

Predictions are JSONL rows ``{"id", "prediction"}`` (LLaVA's ``{"question_id", "text"}`` is
read too); ids are those the task's reader gives its samples (see each reader) and are matched
as strings. For MME, a folder of the official tool's result files may stand in for both.

A sample with no prediction is counted under ``counts.missing`` and, per family: scored as an
empty answer where that is simply wrong (MME, multiple choice, DEMON), left out where an empty
answer would score as something (POPE reads it as "yes"; captions, the judge).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graft.eval.jsonl import BadRecordError, iter_jsonl
from graft.eval.metrics import (
    ChatClient,
    ChoiceRow,
    JudgeConfig,
    LLMChoiceMatcher,
    caption_scores,
    category_scores,
    choice_scores,
    judge_scores,
    mme_scores,
    pope_scores,
    score_tasks,
)
from graft.eval.metrics.choice import sqa_letter
from graft.eval.readers import (
    ReadResult,
    Sample,
    read_coco_captions,
    read_demon,
    read_llava_bench,
    read_mmbench,
    read_mme,
    read_pope,
    read_scienceqa,
)
from graft.eval.readers.mme import MMEResult, read_results

logger = logging.getLogger(__name__)


@dataclass
class Options:
    """What some scorers need beyond samples and predictions."""

    judge: JudgeConfig | None = None
    llm_choice_fallback: bool = False  # ask the judge model when no option letter is found
    java: bool | None = None  # captioning: None = use Java when found


def read_predictions(path: str | os.PathLike) -> dict[str, str]:
    """id (as a string) -> answer, from a JSONL file; a repeated id is an error."""
    out: dict[str, str] = {}
    seen: dict[str, str] = {}
    for record, where in iter_jsonl(path):
        rid = record.get("id", record.get("question_id"))
        text = record.get("prediction", record.get("text"))
        if not isinstance(rid, (str, int)) or isinstance(rid, bool):
            raise BadRecordError(f"{where}: field 'id' must be a string or an integer, got {rid!r}")
        if not isinstance(text, str):
            raise BadRecordError(f"{where}: field 'prediction' must be a string, got {text!r:.80}")
        key = str(rid)
        if key in seen:
            raise BadRecordError(f"{where}: id {rid!r} already predicted at {seen[key]}")
        seen[key] = where
        out[key] = text
    return out


def _answers(
    samples: list[Sample], preds: Mapping[str, str], counts: dict[str, Any]
) -> dict[str, str | None]:
    """Sample id -> its prediction (None when missing); fills the shared counts."""
    ids = {str(s.id) for s in samples}
    got = {str(s.id): preds.get(str(s.id)) for s in samples}
    counts["samples"] = len(samples)
    counts["missing"] = sum(v is None for v in got.values())
    counts["empty"] = sum(v is not None and not v.strip() for v in got.values())
    counts["unknown_ids"] = sum(k not in ids for k in preds)
    if counts["missing"]:
        logger.warning("%d of %d samples have no prediction", counts["missing"], len(samples))
    if counts["empty"]:
        logger.warning("%d predictions are empty", counts["empty"])
    if counts["unknown_ids"]:
        logger.warning(
            "%d prediction ids name no sample and are ignored; the data's ids look like %r",
            counts["unknown_ids"],
            samples[0].id if samples else None,
        )
    return got


def _caption(data: ReadResult, preds: Mapping[str, str], opts: Options, counts: dict) -> dict:
    got = _answers(data.samples, preds, counts)
    refs = {str(s.id): s.target for s in data.samples}
    return caption_scores(refs, {k: v for k, v in got.items() if v is not None}, java=opts.java)


def _mme(data: ReadResult, preds: Mapping[str, str], opts: Options, counts: dict) -> dict:
    got = _answers(data.samples, preds, counts)
    rows = [
        MMEResult(
            s.meta["subtask"],
            s.meta["image_name"],
            s.meta["question"],
            s.target,
            got[str(s.id)] or "",
            s.where,
        )
        for s in data.samples
    ]
    return mme_scores(rows)


def _pope(data: ReadResult, preds: Mapping[str, str], opts: Options, counts: dict) -> dict:
    got = _answers(data.samples, preds, counts)
    return pope_scores(
        (s.meta["split"], s.target, got[str(s.id)]) for s in data.samples if got[str(s.id)] is not None
    )


def _choice(circular: bool, extract: Callable | None = None) -> Callable[..., dict]:
    def run(data: ReadResult, preds: Mapping[str, str], opts: Options, counts: dict) -> dict:
        got = _answers(data.samples, preds, counts)
        unlabelled = [s.where for s in data.samples if s.target is None]
        if unlabelled:
            raise BadRecordError(
                f"{len(unlabelled)} question(s) have no answer to score against, e.g. {unlabelled[0]}"
            )
        fallback = None
        if opts.llm_choice_fallback:
            if opts.judge is None:
                raise ValueError("the LLM choice fallback needs a judge endpoint (--judge-model ...)")
            fallback = LLMChoiceMatcher(ChatClient(opts.judge))
        rows = [
            ChoiceRow(
                s.id,
                got[str(s.id)] or "",
                s.target,
                s.meta["choices"],
                s.meta.get("group"),
                s.meta.get("category"),
            )
            for s in data.samples
        ]
        # the LLM fallback means the lenient reading; otherwise the family's own one
        out = choice_scores(rows, fallback=fallback, circular=circular, extract=None if fallback else extract)
        with_image = [r for r, s in zip(out["samples"], data.samples, strict=True) if s.images]
        if len(with_image) < len(data.samples):
            # ScienceQA reports IMG accuracy beside the full one
            out["img_accuracy"] = (
                100.0 * sum(r["correct"] for r in with_image) / len(with_image) if with_image else 0.0
            )
        return out

    return run


def _demon(data: ReadResult, preds: Mapping[str, str], opts: Options, counts: dict) -> dict:
    got = _answers(data.samples, preds, counts)
    rows = []
    for s in data.samples:
        row = {
            "task": s.meta["task"],
            "kind": s.meta["kind"],
            "prediction": got[str(s.id)] or "",
            "response": s.target,
        }
        rows.append(row | ({"choices": s.meta["choices"]} if "choices" in s.meta else {}))
    try:
        tasks = score_tasks(rows)
    except ValueError as err:
        raise BadRecordError(f"DEMON: {err}") from None
    cats = category_scores(tasks)
    return {
        "categories": {c: v["score"] for c, v in cats.items()},
        "tasks": {t: v["score"] for t, v in tasks.items()},
        "details": {"categories": cats, "tasks": tasks},
    }


def _judge(data: ReadResult, preds: Mapping[str, str], opts: Options, counts: dict) -> dict:
    if opts.judge is None:
        raise ValueError("LLaVA-Bench needs a judge: --judge-model (and --judge-base-url / --judge-api-key)")
    got = _answers(data.samples, preds, counts)
    items = [
        {
            "id": s.id,
            "category": s.meta["category"],
            "context": s.meta["context"],
            "question": s.meta["question"],
        }
        | {"reference": s.target, "answer": got[str(s.id)], "rule": s.meta["rule"]}
        for s in data.samples
        if got[str(s.id)] is not None
    ]
    return judge_scores(items, ChatClient(opts.judge))


# name -> (reader of the data path, scorer); aliases point at the same pair
TASKS: dict[str, tuple[Callable[..., ReadResult], Callable[..., dict]]] = {
    "coco_caption": (read_coco_captions, _caption),
    "mme": (read_mme, _mme),
    "pope": (read_pope, _pope),
    # LLaVA's strict ScienceQA reading, so numbers compare with its tables
    "scienceqa_img": (read_scienceqa, _choice(circular=False, extract=sqa_letter)),
    "mmbench": (read_mmbench, _choice(circular=True)),
    "llava_bench": (read_llava_bench, _judge),
    "demon": (read_demon, _demon),
}
ALIASES = {
    "caption": "coco_caption",
    "coco": "coco_caption",
    "scienceqa": "scienceqa_img",
    "sqa": "scienceqa_img",
}


def score_samples(
    task: str,
    data: ReadResult,
    predictions: Mapping[Any, str],
    options: Options | None = None,
    keep_samples: bool = False,
) -> dict[str, Any]:
    """Metrics of ``predictions`` (sample id -> answer) on samples already read by the task's reader."""
    name = task_name(task)
    counts: dict[str, Any] = {}
    preds = {str(k): v for k, v in predictions.items()}
    result = TASKS[name][1](data, preds, options or Options(), counts)
    counts["bad_records"] = len(data.bad)
    return _finish(result, counts, keep_samples)


def score(
    task: str,
    data: str | os.PathLike | None,
    predictions: str | os.PathLike | Mapping[Any, str],
    options: Options | None = None,
    skip_bad: bool = False,
    keep_samples: bool = False,
) -> dict[str, Any]:
    """Metrics of ``predictions`` (a JSONL path or id -> answer) on the benchmark ``task`` read
    from ``data``.

    Returns the family's metrics (reference spellings) plus ``counts``: samples, missing, empty
    and unknown-id predictions, bad records skipped. Per-sample details only with ``keep_samples``.
    """
    name = task_name(task)
    if name == "mme" and not isinstance(predictions, Mapping) and Path(predictions).is_dir():
        # the official tool's result files carry questions, truths and answers together
        rows = read_results(predictions)
        return _finish(mme_scores(rows), {"samples": len(rows)}, keep_samples)
    if data is None:
        raise ValueError(f"task {name!r} needs --data")
    read = TASKS[name][0](data, skip_bad=skip_bad)
    if not read.samples:
        raise BadRecordError(f"{data}: no samples read")
    preds = predictions if isinstance(predictions, Mapping) else read_predictions(predictions)
    return score_samples(name, read, preds, options, keep_samples)


def task_name(task: str) -> str:
    name = ALIASES.get(task, task)
    if name not in TASKS:
        raise ValueError(f"unknown task {task!r}; known: {sorted(TASKS)} (aliases {sorted(ALIASES)})")
    return name


def _finish(result: dict[str, Any], counts: dict[str, Any], keep_samples: bool) -> dict[str, Any]:
    if not keep_samples:
        result.pop("samples", None)
    result["counts"] = {**counts, **result.pop("counts", {})}
    return result
