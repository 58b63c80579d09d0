"""ScienceQA in LLaVA's converted form (``llava_test_CQM-A.json``), IMG subset by default.

A JSON list (or JSONL) of LLaVA records ``{"id", "image"?, "conversations": [{"from": "human",
"value": "<image>\\nContext: ...\\nQuestion\\nA. opt\\nB. opt\\nAnswer with the option's letter
from the given choices directly."}, {"from": "gpt", "value": "B"}]}``. The options are the
``X. text`` lines (LLaVA-1.5) or an ``Options: (A) x (B) y`` line (LLaVA-1); the answer is the
letter the gpt turn gives (bare, ``The answer is B.`` or ``ANSWER: B``). ScienceQA-IMG = the
records with an image.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from graft.eval.readers.base import IMAGE_MARKER, Collector, ReadResult, Sample, image_folder, need
from graft.prompts import OPTION_LETTERS
from graft.record_files import RecordError, check_id, iter_records

LETTERS = OPTION_LETTERS[:10]  # A-J, as the patterns below read them
_OPTION_LINE = re.compile(r"^([A-J])\. (.*)$")
_OPTIONS_INLINE = re.compile(r"\(([A-J])\)\s*(.*?)(?=\s*\([A-J]\)|$)")
_ANSWER = re.compile(r"^\s*\(?([A-J])\)?\s*\.?\s*$|The answer is \(?([A-J])\b|ANSWER:\s*\(?([A-J])\b")


def parse_options(question: str) -> list[str]:
    """The option texts of a converted ScienceQA question, in letter order."""
    lines = question.splitlines()
    found = [m for m in (_OPTION_LINE.match(ln.strip()) for ln in lines) if m]
    if found:
        letters = "".join(m.group(1) for m in found)
        if LETTERS.startswith(letters):
            return [m.group(2).strip() for m in found]
    for ln in lines:
        if ln.strip().startswith("Options:"):
            pairs = _OPTIONS_INLINE.findall(ln.strip()[len("Options:") :])
            if pairs and LETTERS.startswith("".join(p[0] for p in pairs)):
                return [p[1].strip() for p in pairs]
    return []


def parse_answer_letter(text: str) -> str | None:
    m = _ANSWER.search(text)
    return next((g for g in m.groups() if g), None) if m else None


def read_scienceqa(
    path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    images_only: bool = True,
    skip_bad: bool = False,
    check_images: bool = True,
) -> ReadResult:
    """Questions of a converted ScienceQA file; ``images_only`` keeps the IMG subset.

    ``image_root`` defaults to ``images/`` beside the file when that exists, else its folder.
    """
    path = Path(path)
    image_root = image_folder(path.parent, image_root)
    out = Collector(skip_bad, check_images)

    def sample(record: dict, where: str) -> Sample | None:
        if images_only and "image" not in record:
            return None
        rid = check_id(record.get("id"), where)
        where = f"{where} (id {rid!r})"
        turns = need(record, "conversations", list, where)
        if len(turns) < 2 or not all(
            isinstance(t, dict) and isinstance(t.get("value"), str) for t in turns[:2]
        ):
            raise RecordError(f"{where}: 'conversations' needs a human turn and a gpt turn with 'value'")
        question, answer_text = turns[0]["value"], turns[1]["value"]
        choices = parse_options(question)
        if len(choices) < 2:
            raise RecordError(
                f"{where}: no options found in the question ('A. text' lines or 'Options: (A) ...')"
            )
        answer = parse_answer_letter(answer_text)
        if answer is None or LETTERS.index(answer) >= len(choices):
            raise RecordError(f"{where}: the gpt turn names no option letter: {answer_text!r:.80}")
        images, prompt = [], question
        if "image" in record:
            images = [out.image(image_root / need(record, "image", str, where), where)]
            if IMAGE_MARKER not in prompt:
                prompt = f"{IMAGE_MARKER}\n{prompt}"
        elif IMAGE_MARKER in prompt:
            raise RecordError(f"{where}: the question holds {IMAGE_MARKER} but the record has no image")
        return Sample(rid, prompt, images, answer, {"choices": choices, "has_image": bool(images)}, where)

    return out.collect(iter_records(path), sample)
