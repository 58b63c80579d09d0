"""One answer's tokens to text, and the next token of each row of a batch.

``AnswerText`` decodes incrementally and gives out only text that can no longer change: not a
half-received UTF-8 character, not the start of what may become a stop string, not trailing
whitespace (answers are stripped, as ``graft.generate`` strips them). The streamed deltas joined
are therefore exactly the text a non-streamed answer returns; both go through this class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Sampling:
    """How one request decodes: OpenAI's parameters, checked."""

    max_tokens: int
    #: 0: greedy
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many characters at the end of ``text`` may still change or be cut."""
    hold = 0
    for stop in stops:  # the longest suffix that begins a stop string
        for n in range(min(len(stop) - 1, len(text)), hold, -1):
            if text.endswith(stop[:n]):
                hold = n
                break
    trimmed = len(text.rstrip().rstrip("\ufffd").rstrip())
    return max(hold, len(text) - trimmed)


class AnswerText:
    """Tokens in, safe text deltas out; ``stopped`` once a stop string appeared."""

    def __init__(self, tokenizer: Any, stops: tuple[str, ...]) -> None:
        self.tokenizer = tokenizer
        self.stops = tuple(s for s in stops if s)
        self.tokens: list[int] = []
        self.sent = ""
        self.stopped = False

    def _current(self) -> tuple[str, bool]:
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True).lstrip()
        cut = min((text.index(s) for s in self.stops if s in text), default=-1)
        return (text[:cut], True) if cut >= 0 else (text, False)

    def _delta(self, final: str) -> str:
        # decoding more tokens may rewrite earlier text (rare tokenizer clean-ups): send only what
        # extends what was sent, so the deltas always join to the returned text
        if not final.startswith(self.sent):
            return ""
        delta = final[len(self.sent) :]
        self.sent = final
        return delta

    def add(self, token: int) -> str:
        """The text this token makes final (may be empty)."""
        self.tokens.append(token)
        text, self.stopped = self._current()
        if self.stopped:
            return self._delta(text.rstrip())
        return self._delta(text[: len(text) - _held_back(text, self.stops)])

    def finish(self) -> str:
        """The rest of the answer once decoding ended."""
        text, _ = self._current()
        return self._delta(text.rstrip())


def next_tokens(
    logits: torch.Tensor, rows: list[Sampling], generators: list[torch.Generator | None], suppress: list[int]
) -> list[int]:
    """One token per row of ``logits`` ``[B, V]``: argmax for greedy rows, else sampled with the
    row's temperature, nucleus ``top_p`` and generator (on the CPU: seeds reproduce anywhere)."""
    logits = logits.float()
    if suppress:
        logits[:, suppress] = float("-inf")
    greedy = logits.argmax(dim=-1).tolist()
    out: list[int] = []
    for i, (row, generator) in enumerate(zip(rows, generators, strict=True)):
        if row.greedy:
            out.append(greedy[i])
            continue
        probs = torch.softmax(logits[i].cpu() / row.temperature, dim=-1)
        if row.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            keep = sorted_probs.cumsum(0) - sorted_probs < row.top_p  # always keeps the top token
            probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
        out.append(int(torch.multinomial(probs, 1, generator=generator)))
    return out
