"""graft's question files answered and scored through the one evaluation path: the built-in
``questions`` task (``readers/questions.py``, scored by ``families._questions``) run by
``run_task`` on each file, with the images and, with ``blind``, with every image blanked."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from graft.eval.runner import run_task
from graft.eval.settings import EvalSettings
from graft.eval.tasks import get_task


def evaluate_question_files(
    model: Any,
    processor: Any,
    files: list[Path],
    out: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    settings: EvalSettings | None = None,
    blind: bool = True,
) -> dict[str, float]:
    """``{stem}/accuracy`` and ``{stem}/n`` per file, ``qtype/{stem}_{qtype}/accuracy`` and
    ``/n`` per question type, the accuracies again with ``_blind`` appended for the blank-image
    runs; each run in its own folder under ``out`` (``{stem}``, ``{stem}_blind``). Image paths are
    relative to ``image_root`` (default: each file's folder)."""
    task = get_task("questions")
    if image_root is not None:
        task = replace(task, reader_kwargs={"image_root": str(image_root)})
    settings = settings or EvalSettings()
    stems: dict[str, Path] = {}
    for path in files:  # each file's runs are named by its stem: two files must not share one
        other = stems.setdefault(Path(path).stem, Path(path))
        if other != Path(path):
            raise ValueError(f"{other} and {path} would both write {Path(out) / Path(path).stem}; rename one")
    metrics: dict[str, float] = {}
    for path in files:
        stem = Path(path).stem
        for blanked in (False, True) if blind else (False,):
            suffix = "_blind" if blanked else ""
            run = settings.replace(blind=blanked)
            res = run_task(model, processor, task, path, out, run, run_name=stem + suffix)["metrics"]
            metrics[f"{stem}/accuracy{suffix}"] = res["accuracy"]
            metrics[f"{stem}/n"] = res["n"]
            for key, value in res.items():
                # question types repeat across files (colour yes/no, colour MCQ); how many of each
                # were asked is the same with the images and blind
                if key.startswith("qtype/") and key.endswith(("/accuracy", "/n")):
                    own = key.replace("qtype/", f"qtype/{stem}_", 1)
                    metrics[own + suffix if key.endswith("/accuracy") else own] = value
    return metrics
