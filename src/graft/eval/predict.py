"""A JSONL file of questions -> a JSONL file of answers, resumable.

Input rows: ``{"id", "image" | "images", "question" | "text"}``; image paths are relative to
``image_root``; a question places its images by ``graft.prompts.place_images`` (``{image#k}``
placeholders, else ``<image>`` markers, else the images first). Output rows: ``{"id",
"prediction"}``, appended and flushed after every batch, longest question first
(``EvalSettings.by_length``). A rerun skips the ids already written,
so a run killed at any moment loses at most the batch in flight and never writes an id twice (a
half-written last line is cut off before resuming). What a run does (batch size, answer length,
bad rows, blind images) comes as one ``EvalSettings``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from graft.eval.readers.base import Collector, Sample, need
from graft.eval.settings import EvalSettings
from graft.files import FileLock, cut_partial_last_line
from graft.generate import GenerationSettings, Reply, generate_replies, length_order
from graft.processing import GraftProcessor, ImageLoadError, SampleTooLongError, load_image
from graft.prompts import ImageMarkerError, place_images
from graft.record_files import RecordError, check_id, iter_jsonl
from graft.templates import Message

logger = logging.getLogger(__name__)


def parse_prompt_row(record: dict, where: str, image_root: Path, marker: str) -> Sample:
    """The row as a sample without a target: its question, one ``marker`` per image, the images."""
    rid = check_id(record.get("id"), where)
    if "image" in record and "images" in record:
        raise RecordError(f"{where}: give 'image' or 'images', not both")
    names = record.get("images", [record["image"]] if "image" in record else [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise RecordError(f"{where}: 'image' must be a path string and 'images' a list of them")
    question = need(record, "question" if "question" in record else "text", str, where)
    text, order = place_images(question, len(names), where, marker, what="the question")
    paths = [image_root / names[i] for i in order]
    for p in paths:
        if not p.is_file():
            raise RecordError(f"{where}: image not found: {p}")
    return Sample(rid, text, paths, None, where=where)


def done_ids(out_path: Path) -> set[str | int]:
    """Ids already answered; a half-written last line (a run killed mid-write) is cut off."""
    if not out_path.exists():
        return set()
    done: set[str | int] = set()
    for lineno, line in enumerate(cut_partial_last_line(out_path).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{out_path}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise RecordError(
                f"{where}: the existing output is corrupt (not JSON); move it away to restart"
            ) from None
        done.add(check_id(record.get("id"), where))
    return done


def _answer(
    model: Any,
    processor: GraftProcessor,
    batch: list[Sample],
    images: list[list[Any]],
    bad: Collector,
    gen: GenerationSettings,
) -> list[tuple[Sample, Reply]]:
    """(row, answer) for every row of a batch that can be answered.

    A prompt that cannot be encoded (longer than the model's context, markers that do not match
    the images) fails its whole batch; the batch is then answered row by row so the one at fault
    is named (``bad.fail``: raised, or skipped and counted with ``skip_bad``).
    """
    convs = [[Message("user", row.prompt)] for row in batch]
    try:
        return list(zip(batch, generate_replies(model, processor, convs, images, settings=gen), strict=True))
    except (SampleTooLongError, ImageMarkerError) as err:
        if len(batch) == 1:
            bad.fail(f"{batch[0].where}: {err}")
            return []
    return [
        done
        for row, imgs in zip(batch, images, strict=True)
        for done in _answer(model, processor, [row], [imgs], bad, gen)
    ]


def _row(rid: str | int, reply: Reply) -> dict[str, Any]:
    """A predictions line: ``{"id", "prediction"}``, and ``"cut": true`` for a cut answer."""
    return {"id": rid, "prediction": reply.text} | ({"cut": True} if reply.cut else {})


def count_cut(predictions: Path) -> int:
    """How many answers of a predictions file were cut at the length limit (``"cut": true``)."""
    return (
        sum(record.get("cut") is True for record, _ in iter_jsonl(predictions)) if predictions.exists() else 0
    )


def _append_answers(
    model: Any,
    processor: GraftProcessor,
    pending: list[Sample],
    out_path: Path,
    settings: EvalSettings,
    bad: Collector,
    gen: GenerationSettings,
    label: str,
) -> int:
    """Answer ``pending`` in batches, appending each batch's answers to ``out_path`` (flushed and
    synced: a kill loses at most the batch in flight); returns how many were written. An answer
    cut at the length limit is marked ``"cut": true`` (``count_cut``)."""
    written = 0
    bar = tqdm(total=len(pending), desc=f"predict {label}", unit="q", disable=not settings.progress)
    with out_path.open("a", encoding="utf-8") as out:
        for start in range(0, len(pending), settings.batch_size):
            chunk = pending[start : start + settings.batch_size]
            batch, images = [], []
            for row in chunk:
                try:
                    loaded = [load_image(p) for p in row.images]
                except ImageLoadError as err:
                    bad.fail(f"{row.where}: {err}")
                    continue
                images.append([processor.blank_image(img) for img in loaded] if settings.blind else loaded)
                batch.append(row)
            if batch:
                done_rows = _answer(model, processor, batch, images, bad, gen)
                out.write("".join(json.dumps(_row(r.id, a)) + "\n" for r, a in done_rows))
                out.flush()
                os.fsync(out.fileno())
                written += len(done_rows)
            bar.update(len(chunk))
    bar.close()
    return written


def predict_jsonl(
    model: Any,
    processor: GraftProcessor,
    questions_path: str | os.PathLike,
    out_path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    settings: EvalSettings | None = None,
    generation_kwargs: Mapping[str, Any] | None = None,
    shard: tuple[int, int] | None = None,
    also_done: Sequence[str | os.PathLike] = (),
    label: str | None = None,
    **changes: Any,
) -> dict[str, int]:
    """Answer every question of ``questions_path`` into ``out_path``; resumes where a run stopped.
    The progress bar says ``predict {label}`` (default: the question file's name).

    ``image_root`` defaults to the question file's folder. ``settings`` (default
    ``EvalSettings()``, with ``changes`` to its fields on top: ``batch_size=2``) say how many
    questions, in which batches, and whether the images are blanked; ``generation_kwargs`` are a
    task's (``do_sample``, ``temperature``, ``top_p``, ``seed``, ``max_new_tokens``). Returns
    counts: ``total`` rows read, ``already_done``, ``written`` now, ``bad`` rows skipped.

    Several processes share the work with ``shard=(rank, world_size)``: of the questions not yet
    answered in ``out_path`` or in any ``also_done`` file, this one answers every
    ``world_size``-th, from the ``rank``-th on. Every process must see the same finished ids (the
    caller keeps the ``also_done`` files still while they run); bad rows of the question file are
    counted by rank 0 only.
    """
    settings = (settings or EvalSettings()).replace(**changes)
    gen = settings.generation(generation_kwargs)
    questions_path, out_path = Path(questions_path), Path(out_path)
    root = Path(image_root) if image_root is not None else questions_path.parent
    marker = processor.image_token
    # bad rows raise, or with skip_bad are counted; a repeated id is bad too (ids key the resume:
    # it would be answered once and silently dropped once)
    bad = Collector(settings.skip_bad)
    read = bad.collect(
        iter_jsonl(questions_path, bad.skip), lambda r, w: parse_prompt_row(r, w, root, marker)
    )
    rows = read.samples[: settings.limit]

    out_path.parent.mkdir(parents=True, exist_ok=True)
    # one run at a time appends to a predictions file: a second one would read the finished ids
    # while the first still writes, and answer (and append) the same questions again
    with FileLock(out_path.with_name(f".{out_path.name}.lock"), "evaluation run"):
        done = done_ids(out_path).union(*(done_ids(Path(p)) for p in also_done))
        pending = [row for row in rows if row.id not in done]
        already_done = len(rows) - len(pending)
        if already_done:
            logger.info(
                "%s: %d of %d questions already answered, resuming", out_path, already_done, len(rows)
            )
        if gen.by_length:  # before sharding: every process orders the same pending rows alike
            convs = [[Message("user", row.prompt)] for row in pending]
            pending = [pending[i] for i in length_order(processor, convs, [len(r.images) for r in pending])]
        if shard is not None:
            rank, world = shard
            if not 0 <= rank < world:
                raise ValueError(f"shard {shard}: rank must be in 0..world_size-1")
            pending = pending[rank::world]
            if rank != 0:
                read.bad.clear()
        written = _append_answers(
            model, processor, pending, out_path, settings, bad, gen, label or questions_path.name
        )
    return {"total": len(rows), "already_done": already_done, "written": written, "bad": len(read.bad)}
