"""One answer's tokens to text, the next token of each row of a batch, and its log-probabilities.

``AnswerText`` decodes incrementally and gives out only text that can no longer change: not a
half-received UTF-8 character, not the start of what may become a stop string, not trailing
whitespace (answers are stripped, as ``graft.generate`` strips them). The streamed deltas joined
are therefore exactly the text a non-streamed answer returns; both go through this class.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import cache
from typing import Any

import torch
from transformers.convert_slow_tokenizer import bytes_to_unicode


@dataclass(frozen=True)
class Sampling:
    """How one request decodes: OpenAI's parameters, checked."""

    max_tokens: int
    #: 0: greedy
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    #: OpenAI's penalties on tokens already in the answer: ``logit -= count * frequency_penalty +
    #: (count > 0) * presence_penalty``
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    #: (token id, bias) pairs added to the logits before choosing (-100 bans, 100 forces)
    logit_bias: tuple[tuple[int, float], ...] = ()
    #: None: no log-probabilities; else each chosen token's, with this many likeliest alternatives
    top_logprobs: int | None = None

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


def _adjusted(logits: torch.Tensor, row: Sampling, answer: list[int]) -> torch.Tensor:
    """One row's logits after its ``logit_bias`` and penalties (a new tensor only when changed)."""
    if not (row.logit_bias or (answer and (row.presence_penalty or row.frequency_penalty))):
        return logits
    logits = logits.clone()
    for token, bias in row.logit_bias:
        logits[token] += bias
    if answer and (row.presence_penalty or row.frequency_penalty):
        counts = Counter(answer)
        ids = torch.tensor(list(counts), device=logits.device)
        times = torch.tensor(list(counts.values()), dtype=logits.dtype, device=logits.device)
        logits[ids] -= times * row.frequency_penalty + row.presence_penalty
    return logits


def next_tokens(
    logits: torch.Tensor,
    rows: list[Sampling],
    generators: list[torch.Generator | None],
    answers: list[list[int]] | None = None,
) -> list[int]:
    """One token per row of ``model_logits`` ``[B, V]``: argmax for greedy rows, else sampled
    with the row's temperature, nucleus ``top_p`` and generator (on the CPU: seeds reproduce
    anywhere); each row's ``logit_bias`` and penalties (against ``answers``, the tokens each row
    has generated so far) apply first."""
    answers = answers if answers is not None else [[] for _ in rows]
    greedy = logits.argmax(dim=-1).tolist()
    out: list[int] = []
    for i, (row, generator) in enumerate(zip(rows, generators, strict=True)):
        model_row = logits[i]
        row_logits = _adjusted(model_row, row, answers[i])
        if row.greedy:
            out.append(greedy[i] if row_logits is model_row else int(row_logits.argmax()))
            continue
        probs = torch.softmax(row_logits.cpu() / row.temperature, dim=-1)
        if row.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            keep = sorted_probs.cumsum(0) - sorted_probs < row.top_p  # always keeps the top token
            probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
        out.append(int(torch.multinomial(probs, 1, generator=generator)))
    return out


def model_logits(logits: torch.Tensor, suppress: list[int]) -> torch.Tensor:
    """The model's next-token logits in fp32 with the never-generated tokens at -inf: what the
    tokens are chosen from and what log-probabilities report."""
    logits = logits.float().clone()
    if suppress:
        logits[:, suppress] = float("-inf")
    return logits


@cache
def _byte_of_char() -> dict[str, int]:
    return {char: byte for byte, char in bytes_to_unicode().items()}


def token_bytes(tokenizer: Any, token: int) -> bytes:
    """A token's exact bytes: byte-level BPE pieces (GPT-2, Llama 3, SmolLM2) and SentencePiece's
    ``<0xNN>`` byte tokens map back byte for byte; any other piece is its decoded text."""
    piece = tokenizer.convert_ids_to_tokens(token)
    decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
    table = _byte_of_char()
    if isinstance(piece, str) and "ByteLevel" in repr(decoder) and all(c in table for c in piece):
        return bytes(table[c] for c in piece)
    if isinstance(piece, str) and len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        return bytes([int(piece[3:5], 16)])
    return tokenizer.decode([token]).encode("utf-8")


def _entry(tokenizer: Any, token: int, logprob: float) -> dict[str, Any]:
    raw = token_bytes(tokenizer, token)
    text = raw.decode("utf-8", errors="backslashreplace")  # a part of a character shows its bytes
    return {"token": text, "logprob": max(logprob, -9999.0), "bytes": list(raw)}


def token_logprobs(tokenizer: Any, logits: torch.Tensor, token: int, top: int) -> dict[str, Any]:
    """OpenAI's ``logprobs.content`` entry of ``token`` chosen from ``logits`` ``[V]`` (the
    model's distribution, before temperature, ``top_p``, bias and penalties, as vLLM reports it),
    with the ``top`` likeliest tokens. A token the model rules out gets -9999.0, OpenAI's floor."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    entry = _entry(tokenizer, token, float(logprobs[token]))
    values, ids = logprobs.topk(top) if top else (logprobs[:0], logprobs[:0].long())
    entry["top_logprobs"] = [
        _entry(tokenizer, int(i), float(v)) for v, i in zip(values.tolist(), ids.tolist(), strict=True)
    ]
    return entry
