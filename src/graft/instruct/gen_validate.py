"""From a model's answer to a LLaVA record, or to a rejection with its reason.

Conversation and complex-reasoning answers are ``Question:`` / ``Answer:`` blocks (whitespace,
markdown bold, headings and numbering tolerated: ``**Question 2:**``, ``1. Q:``); a detail answer
is the description itself. Rejection reasons:

- ``truncated``: the endpoint stopped at ``max_tokens`` (finish reason ``length``)
- ``empty``: no text, or blocks with nothing in them
- ``malformed``: no question/answer pair found
- ``leak``: the text gives the source away (captions, bounding boxes, coordinates, raw numbers
  like ``[0.12, 0.34``)
- ``question_too_short`` / ``question_too_long`` / ``answer_too_short`` / ``answer_too_long``
- ``invalid_record``: the record fails ``graft.data.records.parse_record`` (never expected)

Exact-duplicate questions within a record are dropped (and counted), not rejected. The records
alternate human / gpt, with one ``<image>`` marker in the first human turn, before or after the
question (seeded, as LLaVA does).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from graft.config import DEFAULT_IMAGE_TOKEN
from graft.data.records import parse_record
from graft.record_files import RecordError

from .gen_contexts import Context
from .gen_prompts import DETAIL_INSTRUCTIONS, record_rng
from .gen_settings import GenSettings

#: answers rejected for these reasons are asked again, with a varied request
RETRY_REASONS = frozenset({"truncated", "empty", "malformed"})

_LABEL = re.compile(
    r"^\s*(?:#+\s*|[-*>]\s+)?(?:\(?\d+[.):]\s*)?(?:\*\*|__)?\s*"
    r"(question|answer|q|a)\s*(?:\d+)?\s*(?:\*\*|__)?\s*[:：]\s*(?:\*\*|__)?\s*(.*)$",
    re.IGNORECASE,
)
_LEAKS = (
    re.compile(r"\bcaptions?\b", re.IGNORECASE),
    re.compile(r"\bbounding[\s-]*box(?:es)?\b", re.IGNORECASE),
    re.compile(r"\bcoordinates?\b", re.IGNORECASE),
    # a raw box or point: "[0.12, 0.34" or "(0.120, 0.5"
    re.compile(r"[\[(]\s*[01]?\.\d+\s*,\s*[01]?\.\d+"),
)
_DETAIL_LABEL = re.compile(r"^\s*(?:\*\*|__)?\s*(?:detailed\s+)?description\s*(?:\*\*|__)?\s*:\s*", re.I)


@dataclass
class Verdict:
    """A record, or the reason there is none; ``dropped`` counts duplicate questions dropped."""

    record: dict[str, Any] | None = None
    reason: str | None = None
    dropped: int = 0


def _clean(text: str) -> str:
    text = text.replace(DEFAULT_IMAGE_TOKEN, " ").strip()
    # a whole block in bold or italics: drop the wrapper (not the emphasis inside a sentence)
    for mark in ("**", "__"):
        if text.startswith(mark) and text.endswith(mark) and len(text) > 2 * len(mark):
            text = text[len(mark) : -len(mark)].strip()
    lines = [line.rstrip() for line in text.splitlines()]
    return "\n".join(lines).strip()


def parse_qa(text: str) -> list[tuple[str, str]]:
    """(question, answer) pairs in order; a question without an answer, or text before the first
    label, is left out. Blank-line or ``===`` separators, bold and numbering are tolerated."""
    blocks: list[list[str]] = []  # [kind, text]
    for line in text.splitlines():
        if m := _LABEL.match(line):
            kind = "q" if m.group(1).lower().startswith("q") else "a"
            blocks.append([kind, m.group(2)])
        elif blocks and not re.fullmatch(r"\s*(=+|-{3,}|\*{3,})\s*", line):
            blocks[-1][1] += "\n" + line
    pairs = []
    question = None
    for kind, body in blocks:
        if kind == "q":
            question = _clean(body)
        elif question is not None:
            pairs.append((question, _clean(body)))
            question = None
    return pairs


def leaks(text: str) -> bool:
    return any(p.search(text) for p in _LEAKS)


def _length_problem(pairs: list[tuple[str, str]], s: GenSettings, min_answer: int) -> str | None:
    for q, a in pairs:
        if q and len(q) < s.min_question_chars:
            return "question_too_short"
        if len(q) > s.max_question_chars:
            return "question_too_long"
        if len(a) < min_answer:
            return "answer_too_short"
        if len(a) > s.max_answer_chars:
            return "answer_too_long"
    return None


def _turns(pairs: list[tuple[str, str]], rng_side: bool) -> list[dict[str, str]]:
    turns = []
    for i, (q, a) in enumerate(pairs):
        if i == 0:
            q = f"{DEFAULT_IMAGE_TOKEN}\n{q}" if rng_side else f"{q}\n{DEFAULT_IMAGE_TOKEN}"
        turns += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    return turns


def to_record(
    content: str | None, finish_reason: str | None, ctx: Context, response_type: str, s: GenSettings
) -> Verdict:
    """Validate one answer of ``response_type`` for ``ctx`` and build its LLaVA record."""
    if finish_reason == "length":
        return Verdict(reason="truncated")
    if not content or not content.strip():
        return Verdict(reason="empty")
    rng = record_rng(s.seed, ctx.id, response_type)
    if response_type == "detail":
        description = _clean(_DETAIL_LABEL.sub("", content.strip(), count=1))
        if not description:
            return Verdict(reason="empty")
        pairs = [(rng.choice(DETAIL_INSTRUCTIONS), description)]
        min_answer = s.min_description_chars
        dropped = 0
    else:
        found = parse_qa(content)
        if not found:
            return Verdict(reason="malformed")
        if response_type == "complex_reasoning":
            found = found[:1]  # one question, one reasoned answer
        pairs, seen = [], set()
        for q, a in found:
            if q in seen:
                continue
            seen.add(q)
            pairs.append((q, a))
        dropped = len(found) - len(pairs)
        pairs = [(q, a) for q, a in pairs if q and a]
        if not pairs:
            return Verdict(reason="empty", dropped=dropped)
        min_answer = s.min_answer_chars
    if any(leaks(q) or leaks(a) for q, a in pairs):
        return Verdict(reason="leak", dropped=dropped)
    if problem := _length_problem(pairs, s, min_answer):
        return Verdict(reason=problem, dropped=dropped)
    record = {"id": f"{ctx.id}-{response_type}", "image": ctx.image}
    record["conversations"] = _turns(pairs, rng.random() < 0.5)
    try:
        parse_record(record, f"{ctx.where} ({response_type})")
    except (RecordError, ValueError):
        return Verdict(reason="invalid_record", dropped=dropped)
    return Verdict(record=record, dropped=dropped)
