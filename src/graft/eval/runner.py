"""``run_task``: a benchmark's real files -> batched answers -> the reference scorer.

The samples a task's reader gives are written once as a questions file; answers go through
``predict_jsonl``, which appends and flushes every batch and skips finished ids, so a killed
run restarted on the same folder loses and duplicates nothing. Results carry the model's config
hash and the package version, so a results file always says what produced it.

Layout of ``out_dir/{task}/``: ``questions.jsonl``, ``predictions.jsonl``, ``results.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import graft
from graft.eval.predict import predict_jsonl
from graft.eval.readers import ReadResult
from graft.eval.score import TASKS, Options, read_predictions, score_samples, task_name


def config_hash(model: Any) -> str:
    """A short hash of the model's config: which architecture and settings were evaluated."""
    blob = json.dumps(model.config.to_diff_dict(), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _questions_file(read: ReadResult, path: Path) -> None:
    """The samples as predict_jsonl's input; rewritten only when they changed, so a resumed run
    keeps matching its predictions by id."""
    rows = [
        {"id": str(s.id), "images": [str(Path(p).resolve()) for p in s.images], "question": s.prompt}
        for s in read.samples
    ]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        _write_atomic(path, text)


def run_task(
    model: Any,
    processor: Any,
    task: str,
    data: str | os.PathLike,
    out_dir: str | os.PathLike,
    limit: int | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 64,
    skip_bad: bool = False,
    options: Options | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate ``model`` on one benchmark task read from ``data``; returns (and writes) results."""
    name = task_name(task)
    read = TASKS[name][0](data, skip_bad=skip_bad)
    if limit is not None:
        read = ReadResult(read.samples[:limit], read.bad)
    if not read.samples:
        raise ValueError(f"{data}: task {name!r} read no samples")
    folder = Path(out_dir) / name
    folder.mkdir(parents=True, exist_ok=True)
    questions, predictions = folder / "questions.jsonl", folder / "predictions.jsonl"
    _questions_file(read, questions)
    stats = predict_jsonl(
        model,
        processor,
        questions,
        predictions,
        image_root=folder,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        skip_bad=skip_bad,
        progress=progress,
    )
    metrics = score_samples(name, read, read_predictions(predictions), options)
    results = {
        "task": name,
        "data": str(data),
        "metrics": metrics,
        "prediction_counts": stats,
        "model_config_hash": config_hash(model),
        "graft_version": graft.__version__,
    }
    _write_atomic(folder / "results.json", json.dumps(results, indent=2, default=str) + "\n")
    return results
