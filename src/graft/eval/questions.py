"""Single-image questions with exact answers: yes/no, multiple choice, short answer.

File format (JSONL, one record per line): ``{"id", "image", "question", "answer", "qtype"}``;
multiple-choice records add ``"choices": [...]`` and their answer is the option's letter. The
question is the whole user turn (answer-format suffix included); the image goes first:
``<image>\\n{question}``.

Answers are normalised before they are compared, so a model is not punished for "Yes." or
"B. red": yes/no reads the first word; multiple choice reads the first standalone option
letter, else the one option whose text the answer contains; short answers compare after
lower-casing and dropping punctuation.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm.auto import tqdm

from graft.eval.answers import score_answer
from graft.eval.predict import field_str
from graft.generate import generate_answers
from graft.processing import ImageLoadError, load_image
from graft.prompts import OPTION_LETTERS, place_images
from graft.record_files import RecordError, check_id, load_records
from graft.templates import Message

logger = logging.getLogger(__name__)


# --- records -----------------------------------------------------------------------------------
@dataclass
class Question:
    id: str | int
    image: Path
    question: str
    answer: str
    qtype: str
    choices: list[str] | None
    where: str


def _parse_question(record: dict, where: str, image_root: Path) -> Question:
    rid = check_id(record.get("id"), where)
    fields = {k: field_str(record, k, where) for k in ("image", "question", "answer", "qtype")}
    choices = record.get("choices")
    if choices is not None:
        if not isinstance(choices, list) or not choices or not all(isinstance(c, str) for c in choices):
            raise RecordError(f"{where}: 'choices' must be a non-empty list of strings")
        if len(choices) > len(OPTION_LETTERS):
            raise RecordError(f"{where}: {len(choices)} choices; at most {len(OPTION_LETTERS)}")
        if fields["answer"].strip().upper() not in OPTION_LETTERS[: len(choices)]:
            raise RecordError(f"{where}: the answer of a multiple-choice record must be an option letter")
    image = image_root / fields["image"]
    if not image.is_file():
        raise RecordError(f"{where}: image not found: {image}")
    return Question(rid, image, fields["question"], fields["answer"], fields["qtype"], choices, where)


def read_questions(path: str | os.PathLike, image_root: str | os.PathLike | None = None) -> list[Question]:
    """Every record of a question file, validated (errors name file:line)."""
    root = Path(image_root) if image_root is not None else Path(path).parent
    rows, _ = load_records(path, lambda r, w: _parse_question(r, w, root))
    return rows


# --- evaluation --------------------------------------------------------------------------------
def evaluate_questions(
    model: Any,
    processor: Any,
    path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    blind: bool = False,
    limit: int | None = None,
    batch_size: int = 32,
    max_new_tokens: int = 16,
    progress: bool = True,
) -> dict[str, Any]:
    """Greedy answers to a question file, scored overall and per qtype.

    ``blind`` replaces every image by a blank one of the same size in the image processor's mean
    colour: the gap to the seeing score is how much the model uses the image. Returns
    ``{"accuracy", "n", "qtype/<name>/accuracy", "qtype/<name>/n", "predictions": [...]}``.
    """
    questions = read_questions(path, image_root)[:limit]
    marker = processor.image_token
    predictions: list[dict[str, Any]] = []
    bar = tqdm(total=len(questions), desc=f"eval {Path(path).name}", unit="q", disable=not progress)
    for start in range(0, len(questions), batch_size):
        chunk = questions[start : start + batch_size]
        images = []
        for q in chunk:
            try:
                img = load_image(q.image)
            except ImageLoadError as err:
                raise RecordError(f"{q.where}: {err}") from None
            images.append([Image.new("RGB", img.size, processor.image_fill()) if blind else img])
        convs = [[Message("user", place_images(q.question, 1, q.where, marker)[0])] for q in chunk]
        answers = generate_answers(
            model, processor, convs, images, max_new_tokens=max_new_tokens, batch_size=batch_size
        )
        for q, pred in zip(chunk, answers, strict=True):
            parsed, correct = score_answer(pred, q.answer, q.choices)
            predictions.append(
                {"id": q.id, "qtype": q.qtype, "question": q.question, "answer": q.answer}
                | {"prediction": pred, "parsed": parsed, "correct": correct}
            )
        bar.update(len(chunk))
    bar.close()
    return summarize(predictions)


def summarize(predictions: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy overall and per qtype from per-sample ``{"qtype", "correct"}`` records."""
    by_type: dict[str, list[bool]] = defaultdict(list)
    for p in predictions:
        by_type[p["qtype"]].append(bool(p["correct"]))
    n = len(predictions)
    result: dict[str, Any] = {"accuracy": sum(p["correct"] for p in predictions) / n if n else 0.0, "n": n}
    for qtype in sorted(by_type):
        hits = by_type[qtype]
        result[f"qtype/{qtype}/accuracy"] = sum(hits) / len(hits)
        result[f"qtype/{qtype}/n"] = len(hits)
    result["predictions"] = predictions
    return result
