"""Every way graft reads a model's answer: yes/no, option letters, "Image X". One home, so each
scorer states which reading it applies and two scorers never read the same answer two ways.

- graft's own readings (the demo's question files, task files): ``parse_yesno`` (the first
  word), ``parse_choice`` (the first standalone option letter, else the one option whose text
  the answer contains);
- the benchmarks' official readings, each as its reference script does it: ``pope_yes_no``
  (LLaVA's ``eval_pope.py``), ``mme_yes_no`` (MME's ``calculation.py``), ``sqa_letter``
  (LLaVA's ``eval_science_qa.py``), ``image_choice`` (DEMON's ``evaluate.py``), and
  ``named_image``, DEMON's lenient reading on request.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

from graft.prompts import OPTION_LETTERS

_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_text(text: str) -> str:
    """Lower-case, punctuation dropped, whitespace collapsed."""
    return " ".join(text.lower().translate(_PUNCT).split())


def parse_yesno(text: str) -> str:
    """The verdict: the first word, lower-cased, punctuation stripped ('' for an empty answer);
    the last word instead when it, and not the first, is yes or no (a reply that names what it
    sees first: "circle, so no", ``graft.world.questions.reply``)."""
    words = normalize_text(text).split()
    if not words:
        return ""
    if words[0] not in ("yes", "no") and words[-1] in ("yes", "no"):
        return words[-1]
    return words[0]


def parse_choice(text: str, choices: list[str]) -> str | None:
    """The option letter an answer picks, or None when it picks none (or several by text)."""
    letters = OPTION_LETTERS[: len(choices)]
    for m in re.finditer(rf"(?<![A-Za-z0-9])([{letters}])(?![A-Za-z0-9])", text):
        # "A red circle": a capital A followed by a lower-case word is the article, not option A
        if m.group(1) == "A" and re.match(r"\s+[a-z]", text[m.end() :]):
            continue
        return m.group(1)
    answer = f" {normalize_text(text)} "
    hits = [i for i, c in enumerate(choices) if normalize_text(c) and f" {normalize_text(c)} " in answer]
    # an option contained in another hit ("circle" in "red circle") is not a separate pick
    hits = [
        i
        for i in hits
        if not any(i != j and normalize_text(choices[i]) in normalize_text(choices[j]) for j in hits)
    ]
    return letters[hits[0]] if len(hits) == 1 else None


def score_answer(prediction: str, answer: str, choices: list[str] | None = None) -> tuple[str | None, bool]:
    """graft's rule for its own question files: (what the prediction was read as, whether it is
    right); ``parse_choice`` with options, the first word for a yes/no answer, else the
    normalised text."""
    if choices:
        picked = parse_choice(prediction, choices)
        return picked, picked is not None and picked == answer.strip().upper()
    yes_no = normalize_text(answer) in ("yes", "no")
    parsed = parse_yesno(prediction) if yes_no else normalize_text(prediction)
    return parsed, parsed == normalize_text(answer)


def pope_yes_no(text: str) -> str:
    """yes | no, the way LLaVA's ``eval_pope.py`` reads an answer (``metrics.pope``)."""
    first = text.split(".")[0] if "." in text else text
    words = first.replace(",", "").split(" ")
    return "no" if "No" in words or "not" in words or "no" in words else "yes"


def mme_yes_no(text: str) -> str:
    """yes | no | other, the way MME's ``calculation.py`` reads an answer (``metrics.mme``)."""
    text = text.strip().lower()
    if text in ("yes", "no"):
        return text
    head = text[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


_SQA_ANSWER = re.compile(r"The answer is ([A-Z]).")
_SQA_LETTERS = OPTION_LETTERS[:5]  # eval_science_qa.py reads A-E only


def sqa_letter(answer: str, choices: Sequence[str]) -> str | None:
    """LLaVA's ScienceQA reading (``eval_science_qa.py``), strict: the answer is a bare letter,
    starts with "X. ", or says "The answer is X" (followed by a character) exactly once."""
    letters = _SQA_LETTERS[: len(choices)]
    if answer in _SQA_LETTERS and len(answer) == 1:
        return answer if answer in letters else None
    if len(answer) >= 3 and answer[0] in _SQA_LETTERS and answer[1:3] == ". ":
        return answer[0] if answer[0] in letters else None
    found = _SQA_ANSWER.findall(answer)
    return found[0] if len(found) == 1 and found[0] in letters else None


_NAMED_IMAGE = re.compile(r"\bimage ([a-z])\b")
_OFFICIAL_IMAGES = ("image a", "image b", "image c", "image d")
_IMAGE_AT_START = re.compile(r"image ([a-z])")


def named_image(answer: str) -> str | None:
    """The lenient reading: the one image letter a (normalised) answer names anywhere
    ("the answer is image b" -> "b"), else None."""
    letters = set(_NAMED_IMAGE.findall(answer))
    return letters.pop() if len(letters) == 1 else None


def image_choice(answer: str) -> str | None:
    """The benchmark's reading (``evaluate.py``): the letter of the "image x" a (normalised)
    answer begins with, None when it begins otherwise or also mentions another of image a-d."""
    m = _IMAGE_AT_START.fullmatch(answer[:7])
    if m is None or sum(option in answer for option in _OFFICIAL_IMAGES) > 1:
        return None
    return m.group(1)
