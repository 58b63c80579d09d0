"""Score answers made elsewhere: a benchmark's real files + a predictions JSONL -> metrics.

Scoring reads the annotations only: no image is looked for or opened (the readers'
``check_images=False``), so POPE's question files, MME's question files or a COCO caption
annotation file suffice, as for LLaVA's ``eval_pope.py``, MME's ``calculation.py`` and
pycocoevalcap.

Predictions are JSONL rows ``{"id", "prediction"}`` (LLaVA's ``{"question_id", "text"}`` is
read too); ids are those the task's reader gives its samples (see each reader) and are matched
as strings. For MME, a folder of the official tool's result files may stand in for both.

A task is a built-in name (``pope``, an alias such as ``coco``) or the path of a task file
(``graft.eval.tasks``). How missing and empty answers count is the family's rule
or the simple metric's (``graft.eval.families``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from graft.eval.families import Options
from graft.eval.metrics import mme_scores
from graft.eval.readers import ReadResult
from graft.eval.readers.mme import read_results
from graft.eval.tasks import TaskSpec, get_task
from graft.record_files import RecordError, UniqueIds, check_id, iter_jsonl

__all__ = ["Options", "read_predictions", "score", "score_samples"]


def read_predictions(path: str | os.PathLike) -> dict[str, str]:
    """id (as a string) -> answer, from a JSONL file; a repeated id is an error."""
    out: dict[str, str] = {}
    seen = UniqueIds("predicted")
    for record, where in iter_jsonl(path):
        rid = check_id(record.get("id", record.get("question_id")), where)
        text = record.get("prediction", record.get("text"))
        if not isinstance(text, str):
            raise RecordError(f"{where}: field 'prediction' must be a string, got {text!r:.80}")
        seen.add(str(rid), where)
        out[str(rid)] = text
    return out


def score_samples(
    task: str | os.PathLike | TaskSpec,
    data: ReadResult,
    predictions: Mapping[Any, str],
    options: Options | None = None,
    keep_samples: bool = False,
) -> dict[str, Any]:
    """Metrics of ``predictions`` (sample id -> answer) on samples already read by the task's reader."""
    spec = get_task(task)
    counts: dict[str, Any] = {}
    preds = {str(k): v for k, v in predictions.items()}
    result = spec.score(data, preds, options or Options(), counts)
    counts["bad_records"] = len(data.bad)
    return _finish(result, counts, keep_samples)


def score(
    task: str | os.PathLike | TaskSpec,
    data: str | os.PathLike | None,
    predictions: str | os.PathLike | Mapping[Any, str],
    options: Options | None = None,
    skip_bad: bool = False,
    keep_samples: bool = False,
) -> dict[str, Any]:
    """Metrics of ``predictions`` (a JSONL path or id -> answer) on the task's samples read from
    ``data`` (default: the task file's ``dataset_path``).

    Returns the family's metrics (reference spellings) and the simple metrics the task lists, plus
    ``counts``: samples, missing, empty and unknown-id predictions, bad records skipped.
    Per-sample details only with ``keep_samples``.
    """
    spec = get_task(task)
    if (
        spec.family == "mme"
        and not spec.metrics
        and not isinstance(predictions, Mapping)
        and Path(predictions).is_dir()
    ):
        # the official tool's result files carry questions, truths and answers together
        rows = read_results(predictions)
        return _finish(mme_scores(rows), {"samples": len(rows)}, keep_samples)
    path = spec.data_path(data)
    read = spec.read(path, skip_bad=skip_bad, check_images=False)
    if not read.samples:
        raise RecordError(f"{path}: no samples read")
    preds = predictions if isinstance(predictions, Mapping) else read_predictions(predictions)
    return score_samples(spec, read, preds, options, keep_samples)


def _finish(result: dict[str, Any], counts: dict[str, Any], keep_samples: bool) -> dict[str, Any]:
    if not keep_samples:
        result.pop("samples", None)
    result["counts"] = {**counts, **result.pop("counts", {})}
    return result
