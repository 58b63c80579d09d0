"""The settings of one ``graft gen-data`` run, in one dataclass passed down to every part.

The endpoint comes from the flags, else ``GRAFT_GEN_BASE_URL`` / ``GRAFT_GEN_API_KEY`` /
``GRAFT_GEN_MODEL``, else ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY``; a model must be given.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

#: LLaVA's three response types, in the order their records are merged
RESPONSE_TYPES: tuple[str, ...] = ("conversation", "detail", "complex_reasoning")


class GenError(RuntimeError):
    """A problem that stops a run before (or instead of) doing any work; its message says what to do."""


@dataclass
class GenSettings:
    contexts: Path
    out: Path
    # the endpoint
    model: str | None = None
    base_url: str | None = None
    api_key: str | None = None
    timeout_s: float = 120.0
    # what to generate
    types: tuple[str, ...] = RESPONSE_TYPES
    prompts_dir: Path | None = None
    limit: int | None = None  # only the first N contexts
    skip_bad: bool = False  # skip (and count) bad context lines instead of stopping
    seed: int = 0  # the detail instruction, the <image> side, and each request's ``seed``
    # sampling
    temperature: float = 0.7
    top_p: float | None = None
    max_tokens: int = 1024
    # the client
    concurrency: int = 8
    rpm: float | None = None  # requests per minute (token bucket, client side)
    tpm: float | None = None  # tokens per minute (estimated before, corrected by usage after)
    burst_s: float = 1.0  # a bucket holds this many seconds of its rate
    max_retries: int = 5  # transient errors (connection, timeout, 429, 5xx)
    backoff_s: float = 1.0  # before the first retry; doubles each time, with jitter
    max_backoff_s: float = 60.0
    max_retry_after_s: float = 300.0  # a longer Retry-After is cut to this
    format_retries: int = 2  # new tries, each with a varied request, after a malformed answer
    # validation
    min_question_chars: int = 8
    max_question_chars: int = 600
    min_answer_chars: int = 2
    max_answer_chars: int = 4000
    min_description_chars: int = 40
    max_reject_rate: float = 0.5
    reject_window: int = 50  # answers the rejection rate is taken over
    reject_min_answers: int = 20  # no stop before this many answers
    # cost
    price_in: float = 0.0  # per million prompt tokens
    price_out: float = 0.0  # per million completion tokens
    max_cost: float | None = None
    dry_run: bool = False

    def with_env(self) -> GenSettings:
        """A copy whose unset endpoint fields are filled from the environment."""
        env = os.environ
        return replace(
            self,
            model=self.model or env.get("GRAFT_GEN_MODEL") or None,
            base_url=self.base_url or env.get("GRAFT_GEN_BASE_URL") or env.get("OPENAI_BASE_URL") or None,
            api_key=self.api_key or env.get("GRAFT_GEN_API_KEY") or env.get("OPENAI_API_KEY") or None,
        )

    def check(self) -> None:
        """Raise ``GenError`` for settings no run can use."""
        if not self.model:
            raise GenError("no model: pass --model or set GRAFT_GEN_MODEL")
        if self.out.exists() and not self.out.is_dir():
            raise GenError(f"out: {self.out} is a file; gen-data writes into a folder")
        if not self.dry_run and not self.base_url and not self.api_key:
            raise GenError(
                "no endpoint: pass --base-url (a local server) and/or --api-key, or set GRAFT_GEN_BASE_URL / "
                "GRAFT_GEN_API_KEY (or OPENAI_BASE_URL / OPENAI_API_KEY)"
            )
        unknown = [t for t in self.types if t not in RESPONSE_TYPES]
        if unknown or not self.types:
            raise GenError(f"unknown response type(s) {unknown}; choose from {', '.join(RESPONSE_TYPES)}")
        if len(set(self.types)) != len(self.types):
            raise GenError(f"a response type is given twice: {', '.join(self.types)}")
        positive = {
            "concurrency": self.concurrency,
            "max_tokens": self.max_tokens,
            "timeout_s": self.timeout_s,
        }
        positive |= {"rpm": self.rpm, "tpm": self.tpm, "burst_s": self.burst_s}  # rpm, tpm: None = no limit
        for name, value in positive.items():
            if value is not None and value <= 0:
                raise GenError(f"{name} must be positive, got {value}")
        if not 0 <= self.temperature <= 2:  # OpenAI's range
            raise GenError(f"temperature must lie in [0, 2], got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise GenError(f"top_p must lie in (0, 1], got {self.top_p}")
        for name in ("max_retries", "format_retries", "price_in", "price_out", "backoff_s"):
            if getattr(self, name) < 0:
                raise GenError(f"{name} must not be negative, got {getattr(self, name)}")
        if not 0 < self.max_reject_rate <= 1:
            raise GenError(f"max_reject_rate must lie in (0, 1], got {self.max_reject_rate}")
        if self.max_cost is not None and self.max_cost < 0:
            raise GenError(f"max_cost must not be negative, got {self.max_cost}")
        if self.limit is not None and self.limit < 1:
            raise GenError(f"limit must be at least 1, got {self.limit}")

    def cost(self, tokens_in: float, tokens_out: float) -> float:
        return (tokens_in * self.price_in + tokens_out * self.price_out) / 1e6
