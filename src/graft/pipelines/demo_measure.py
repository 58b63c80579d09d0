"""What ``graft demo`` measures: held-out accuracy with and without the images, the learning
curve during stage 2, the diagnostics (perception, alignment, reasoning) and the summary table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from graft.report.demo import CHANCE, read_curve

#: the stages whose output is the aligned model, latest first
ALIGNED_STAGES = ("snap", "stage1", "align", "ground")
#: what the grounding's record (``ground/ground.json``) tells of its held-out cells
GROUNDING_KEYS = ("cell_acc", "object_shape_acc", "object_colour_acc", "cosine")
#: training records whose loss with their own and with another image says whether a model sees
RELIANCE_RECORDS = 32


class LearningCurve:
    """Held-out accuracy with images and blind at a few evenly spaced steps of a training run,
    one JSON line per point in ``path``; points already there (a resumed run) are kept. With
    ``skip_last`` the last step is left to the caller's final evaluation (``record``), which
    would otherwise answer the same questions of the same model twice."""

    def __init__(
        self, path: Path, world: Path, points: int, limit: int | None, skip_last: bool = False
    ) -> None:
        self.path, self.world, self.points, self.limit = path, world, points, limit
        self.skip_last = skip_last
        self.done = {row["step"] for row in read_curve(path)}

    def __call__(self, step: int, total: int, model: Any, processor: Any) -> None:
        if not self.points or not total or step in self.done or (self.skip_last and step == total):
            return
        marks = {round(total * k / self.points) for k in range(self.points + 1)}
        if step not in marks:
            return
        folder = self.path.parent / "curve" / f"step{step}"
        shutil.rmtree(folder, ignore_errors=True)  # a point cut by a kill: its model may differ now
        metrics = evaluate_demo(
            model,
            processor,
            self.world,
            folder,
            self.limit,
            progress=False,
        )
        self.record(step, metrics)

    def record(self, step: int, metrics: dict[str, float]) -> None:
        """Append the point of ``step`` from ``evaluate_demo``'s metrics (overall accuracies only),
        unless the curve has it already."""
        if not self.points or step in self.done:
            return
        row = {"step": step} | {k: v for k, v in metrics.items() if "/accuracy" in k and "qtype" not in k}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        self.done.add(step)


def last_step(run: Path) -> int:
    """The optimizer step a finished training run ended at (the loop always logs its last step)."""
    lines = (run / "log.jsonl").read_text().splitlines()
    return int(json.loads(lines[-1])["step"])


def diagnose(
    out: Path, world: Path, vision: Path, limit: int | None, bf16: bool, eval_limit: int | None = None
) -> dict[str, float]:
    """Where the model fails: the vision probe (perception), stage 1's caption loss and caption
    accuracy, how well the grounding's tokens name each cell's object, and the words the
    aligned model's soft tokens say (alignment), the text upper bound
    (the LLM's reasoning without perception), the exact-token bound (the grounded model given
    the grounding's exact tokens: its reasoning with perfect perception), whether the stage-2
    model says where an object is (``graft.world.place``) and, for both stages,
    how much the loss of training records grows when each gets another record's image (does the
    model use the image at all). ``limit`` questions or images per measurement; the exact-token
    bound answers ``eval_limit`` questions per family, the held-out evaluation's, to be read
    beside it."""
    from graft.eval.image_reliance import image_reliance
    from graft.inference import load_for_inference
    from graft.world.diagnostics import caption_accuracy, exact_token_bound, text_upper_bound, word_readout
    from graft.world.place import place_accuracy
    from graft.world.probe import probe_vision_features

    probe = probe_vision_features(vision, world, train_images=1000, test_images=limit)
    result = {f"probe/{k}": v for k, v in probe.items()}
    log = out / "stage1" / "log.jsonl"
    losses = [json.loads(line)["loss"] for line in log.read_text().splitlines()] if log.exists() else []
    if losses:
        result["stage1/final_loss"] = losses[-1]
    grounding = out / "ground" / "ground.json"
    for stage, data, measure in (
        ("stage1", "stage1.json", caption_accuracy),
        ("stage2", "stage2.json", text_upper_bound),
    ):
        if not (out / stage / "config.json").exists():  # a demo run without a caption stage
            continue
        model, processor = load_for_inference(out / stage, bf16)
        result.update(measure(model, processor, world, limit))
        if stage == "stage2":
            result.update(place_accuracy(model, processor, world, limit))
        if stage == "stage2" and grounding.exists():  # the grounding's token design, made exact
            cells = json.loads(grounding.read_text())["cells"]
            result.update(exact_token_bound(model, processor, world, eval_limit, cells=cells))
        reliance = image_reliance(model, processor, world / data, world, limit=RELIANCE_RECORDS)
        result.update({f"reliance/{stage}_{k}": v for k, v in reliance.items() if k != "records"})
    if grounding.exists():  # measured on the grounding's held-out images when it ran
        fidelity = json.loads(grounding.read_text())["fidelity"]
        result.update({f"ground/{k}": fidelity[k] for k in GROUNDING_KEYS})
    # the model the question stages start from: the snapped, word-aligned, caption-aligned or
    # grounded one
    aligned = next((out / s for s in ALIGNED_STAGES if (out / s / "config.json").exists()), None)
    if aligned is not None:
        result.update(word_readout(*load_for_inference(aligned, bf16), world, limit))
    return result


def evaluate_demo(
    model: Any,
    processor: Any,
    world: Path,
    out: Path,
    limit: int | None,
    blind: bool = True,
    progress: bool = True,
) -> dict[str, float]:
    """Held-out binary and multiple-choice accuracy (``binary/accuracy``, ``mcq/accuracy``, per
    question type), with the images and (``blind``) without; run folders under ``out``."""
    from graft.eval.questions import evaluate_question_files
    from graft.eval.settings import EvalSettings

    files = [world / "eval" / f"{family}.jsonl" for family in CHANCE]
    settings = EvalSettings(limit=limit, batch_size=32, progress=progress)
    return evaluate_question_files(model, processor, files, out, world, settings, blind)


def summary_markdown(summary: dict[str, float], reused: set[str], curve: list[dict[str, float]]) -> str:
    lines = ["# graft demo: shapes world", "", "| metric | with images | images blanked | chance |"]
    lines.append("|---|---|---|---|")
    for family, chance in CHANCE.items():
        seen, blind = summary.get(f"{family}/accuracy"), summary.get(f"{family}/accuracy_blind")
        lines.append(f"| {family}/accuracy | {seen:.3f} | {blind:.3f} | {chance:.2f} |")
    lines += ["", "| question type | questions | with images | images blanked | chance |"]
    lines.append("|---|---|---|---|---|")
    for key, value in sorted(summary.items()):
        if key.startswith("qtype/") and key.endswith("/accuracy"):
            name = key.split("/")[1]
            blind = summary.get(f"{key}_blind", float("nan"))
            # a type asked 15 times moves by 0.067 a question: its count says how far to trust it
            n = summary.get(f"qtype/{name}/n")
            asked = "" if n is None else f"{n:.0f}"
            chance = CHANCE[name.split("_")[0]]
            lines.append(f"| {name} | {asked} | {value:.3f} | {blind:.3f} | {chance:.2f} |")
    if curve:
        lines += ["", "## Learning curve (stage 2, held-out questions)", ""]
        lines += ["| step | binary | binary blind | mcq | mcq blind |", "|---|---|---|---|---|"]
        for row in curve:
            cells = [row.get(f"{f}/accuracy{b}", float("nan")) for f in CHANCE for b in ("", "_blind")]
            lines.append(f"| {row['step']} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    diagnostics = {
        k: v
        for k, v in summary.items()
        if k.split("/")[0] in ("probe", "caption", "ground", "words", "stage1", "reliance")
    }
    diagnostics.update(
        {k: v for k, v in summary.items() if k.endswith(("/accuracy_text", "/accuracy_exact_tokens"))}
    )
    if diagnostics:
        lines += ["", "## Diagnostics", "", "| measurement | value |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in sorted(diagnostics.items())]
    lines += ["", "| step | wall time (s) |", "|---|---|"]
    for key, value in summary.items():
        if key.startswith("time/"):
            step = key.removeprefix("time/").removesuffix("_s")
            lines.append(f"| {step}{' (reused)' if step in reused else ''} | {value:.1f} |")
    return "\n".join(lines) + "\n"
