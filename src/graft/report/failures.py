"""A run's wrong answers for the report (``failures``), where a sample is simply right or wrong:
POPE and MME (the official yes/no reading of the answer against the label), the multiple-choice
tasks and graft's own question files (``graft evaluate``; the scorer's own per-sample verdict).

Targets come from re-reading the benchmark at the path ``results.json`` names (found as
``results.data_path`` says), read as for scoring: no image is looked for. A failure's images are
the ones the model was shown, from the run's ``questions.jsonl``, else the benchmark's own. When
the data or the predictions are gone, the failures are skipped with a note rather than guessed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from graft.report.model import Failure
from graft.report.results import data_path

T = TypeVar("T")

#: the families whose samples are simply right or wrong
FAMILIES = ("pope", "mme", "scienceqa_img", "mmbench", "questions")
#: what the report says when no run has such a family
NONE_LISTED = "No run has samples that are simply right or wrong (POPE, MME, multiple choice, questions)."
#: those whose scorer gives a per-sample verdict (the others: a yes/no reading against the label)
_VERDICTS = ("scienceqa_img", "mmbench", "questions")


class Failures(NamedTuple):
    listed: list[Failure]
    #: why none are listed, or how many of how many were wrong
    note: str
    #: samples answered and in the benchmark (0, 0 when the benchmark was not read)
    answered: int = 0
    total: int = 0


def _shown_images(questions: Path) -> dict[str, list[Path]]:
    """Sample id -> the images the run showed the model (``questions.jsonl``); {} without one."""
    shown: dict[str, list[Path]] = {}
    for line in questions.read_text(encoding="utf-8").splitlines() if questions.is_file() else []:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("images"), list):
            shown[str(row.get("id"))] = [Path(p) for p in row["images"] if isinstance(p, str)]
    return shown


def _by_sample_id(rows: dict[str, T], reader: Any, ids: list[str]) -> dict[str, T]:
    """``rows`` keyed by the samples' own ids: MME's read for scoring name an image by its stem,
    the run's predictions and questions with its suffix (``families.Family.match_ids``)."""
    if reader is None or reader.match_ids is None:
        return rows
    return {sample_id: rows[key] for sample_id, key in reader.match_ids({k: k for k in rows}, ids).items()}


def failures(family: str, results: dict[str, Any], folder: Path, limit: int) -> Failures:
    """Up to ``limit`` wrong samples of the run in ``folder``, or none and a note saying why."""
    from graft.eval.answers import mme_yes_no, pope_yes_no
    from graft.eval.families import FAMILIES as READERS
    from graft.eval.readers import ReadResult
    from graft.eval.score import read_predictions, score_samples
    from graft.eval.tasks import get_task

    if family not in FAMILIES:
        return Failures([], "no per-sample right/wrong for this family")
    data, preds_path = data_path(results.get("data"), folder), folder / "predictions.jsonl"
    if data is None or not preds_path.exists():
        named = results.get("data")
        missing = [f"benchmark data {named!r}" if named else "benchmark data (results.json names none)"]
        missing = (missing if data is None else []) + ([] if preds_path.exists() else [preds_path.name])
        return Failures([], f"{' and '.join(missing)} not found; failures not listed")
    # re-read through the run's own task (a user task file may prompt differently)
    spec = get_task(results.get("task_file") or results.get("task", family))
    full = spec.read(data, skip_bad=True, check_images=False)
    reader, ids = READERS.get(spec.reader or ""), [str(s.id) for s in full.samples]
    preds = _by_sample_id(read_predictions(preds_path), reader, ids)
    # a limited run (``--limit``) answered only some of the benchmark: judge those, as its scores did
    read = ReadResult([s for s in full.samples if str(s.id) in preds], full.bad)
    if family in _VERDICTS:
        verdicts = score_samples(spec, read, preds, keep_samples=True)["samples"]
        wrong = {str(v["id"]) for v in verdicts if not v["correct"]}
    else:
        parse = pope_yes_no if family == "pope" else mme_yes_no
        wrong = {str(s.id) for s in read.samples if parse(preds[str(s.id)]) != str(s.target).strip().lower()}
    shown = _by_sample_id(_shown_images(folder / "questions.jsonl"), reader, ids)
    listed = [
        Failure(str(s.id), s.prompt, preds[str(s.id)], str(s.target), shown.get(str(s.id), list(s.images)))
        for s in read.samples
        if str(s.id) in wrong
    ][:limit]
    answered, total = len(read.samples), len(full.samples)
    of_all = "" if answered == total else f", of {total} in the benchmark"
    return Failures(listed, f"{len(wrong)} wrong of {answered} answered{of_all}", answered, total)
