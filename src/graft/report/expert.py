"""End-to-end and expert pipelines side by side: ``expert_comparison.md``.

Every eval run folder given (``{run}/results.json``) contributes one row per run to that run's
table: the pipeline (end-to-end, or expert with its describer's kind: ``model``, ``oracle``,
``jsonl``), the answerer, the headline score of the task family (``headline.HEADLINES``), seconds,
tokens and model calls per sample. A closing table puts the three pipelines in one line per run
with the two gaps that say where the loss lies: perception (oracle expert - model expert: what
a perfect description would add) and end-to-end vs oracle (what perfect perception plus a text
LLM's reasoning does against the multimodal model).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graft.files import write_text_atomic
from graft.report.headline import HEADLINES, headline_and_categories
from graft.report.model import fmt, md_table
from graft.report.results import read_results

FILE = "expert_comparison.md"


@dataclass
class Row:
    run: str
    family: str
    pipeline: str  # "end-to-end" or "expert (model)" / "expert (oracle)" / "expert (jsonl)"
    source: str
    answerer: str
    score: float | None
    seconds: float | None
    tokens: float | None
    calls: int | None


def _row(results: dict[str, Any], source: Path, folder: Path) -> Row:
    family = results.get("family") or results.get("task", folder.name)
    score, _ = headline_and_categories(family, results.get("metrics", {}))
    cost = results.get("cost") or {}
    if results.get("pipeline") == "expert":
        pipeline = f"expert ({str(results.get('describer', '?')).split(':')[0]})"
        answerer = str(results.get("answerer", "?"))
    else:
        pipeline = "end-to-end" + (" blind" if results.get("blind") else "")
        answerer = "(the model itself)"
    return Row(
        results.get("run", folder.name),
        family,
        pipeline,
        source.name,
        answerer,
        score,
        cost.get("seconds_per_sample"),
        cost.get("tokens_per_sample"),
        cost.get("calls_per_sample"),
    )


def collect(sources: list[str | os.PathLike]) -> list[Row]:
    """One row per ``*/results.json`` of every source folder (demo summaries are passed over)."""
    rows = []
    for source in map(Path, sources):
        if not source.is_dir():
            continue
        for path in sorted(source.glob("*/results.json")):
            rows.append(_row(read_results(path), source, path.parent))
    return rows


def _first(rows: list[Row], pipeline: str) -> float | None:
    return next((r.score for r in rows if r.pipeline == pipeline and r.score is not None), None)


def _gap(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{a - b:+.3f}"


def comparison_markdown(rows: list[Row]) -> str:
    runs = list(dict.fromkeys(r.run for r in rows))
    lines = [
        "# End-to-end vs expert pipelines",
        "",
        "Expert: each image described by an expert (a captioning model, or the oracle: the world's "
        "exact description), the question answered by a text-only LLM. Cost per sample: wall "
        "seconds and tokens of every model call (the expert path makes two).",
    ]
    for run in runs:
        mine = [r for r in rows if r.run == run]
        measure = HEADLINES.get(mine[0].family, "score")
        body = [
            [
                r.pipeline,
                r.source,
                r.answerer,
                fmt(r.score),
                fmt(r.seconds),
                "-" if r.tokens is None else f"{r.tokens:.0f}",
                "-" if r.calls is None else str(r.calls),
            ]
            for r in mine
        ]
        head = ["pipeline", "source", "answerer", measure, "s/sample", "tokens/sample", "calls/sample"]
        lines += ["", f"## {run} ({mine[0].family})", "", *md_table(head, body)]
    summary = []
    for run in runs:
        mine = [r for r in rows if r.run == run]
        e2e, model, oracle = (_first(mine, p) for p in ("end-to-end", "expert (model)", "expert (oracle)"))
        summary.append([run, fmt(e2e), fmt(model), fmt(oracle), _gap(oracle, model), _gap(e2e, oracle)])
    head = ["run", "end-to-end", "expert (model)", "expert (oracle)", "perception gap", "e2e - oracle"]
    lines += ["", "## Where the gap lies", "", *md_table(head, summary)]
    return "\n".join(lines) + "\n"


def write_comparison(sources: list[str | os.PathLike], out_dir: str | os.PathLike) -> Path | None:
    """``out_dir/expert_comparison.md`` when any source holds an expert run; None otherwise (and
    one a report before left there is removed, so the folder never shows a stale comparison)."""
    rows = collect(sources)
    path = Path(out_dir) / FILE
    if not any(r.pipeline.startswith("expert") for r in rows):
        path.unlink(missing_ok=True)
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, comparison_markdown(rows))
    return path
