"""What a ``graft gen-data`` run did and what it cost: counted as it goes, reported at the end.

Tokens and cost are this run's (cache hits cost nothing); an answer without ``usage`` is
counted with the chars / 4 estimate (``usage_estimated`` says how many). The acceptance rate is
accepted records over answers validated (a format retry's answers count as answers too).
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from .gen_client import Answer, estimate_tokens, prompt_tokens_estimate
from .gen_settings import GenSettings


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-quantile (0..1), linearly interpolated; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass
class RunStats:
    contexts: int = 0
    jobs: int = 0
    bad_contexts: Counter[str] = field(default_factory=Counter)
    cache_hits: int = 0
    format_retries: int = 0
    failures: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    usage_estimated: int = 0
    answers: int = 0
    accepted: int = 0
    rejections: Counter[str] = field(default_factory=Counter)
    dropped_duplicate_questions: int = 0
    latencies: list[float] = field(default_factory=list)
    records: Counter[str] = field(default_factory=Counter)
    stopped: str | None = None
    pending: int = 0
    reserved_cost: float = 0.0  # estimates of requests in flight (for --max-cost)
    window: deque[bool] = field(default_factory=deque)

    def spend(self, answer: Answer, request: dict[str, Any], s: GenSettings) -> None:
        """Count a fresh answer's tokens (estimated when the endpoint gave no usage)."""
        if answer.usage is not None:
            self.tokens_in += answer.usage["prompt_tokens"]
            self.tokens_out += answer.usage["completion_tokens"]
        else:
            self.usage_estimated += 1
            self.tokens_in += prompt_tokens_estimate(request["messages"])
            self.tokens_out += estimate_tokens(answer.content or "")
        self.latencies.append(answer.latency_s)

    def cost(self, s: GenSettings) -> float:
        return s.cost(self.tokens_in, self.tokens_out)

    def note(self, reason: str | None, s: GenSettings) -> None:
        """One validated answer: accepted (``reason`` None) or rejected for ``reason``."""
        self.answers += 1
        if reason is None:
            self.accepted += 1
        else:
            self.rejections[reason] += 1
        self.window.append(reason is not None)
        while len(self.window) > s.reject_window:
            self.window.popleft()

    def reject_rate_problem(self, s: GenSettings) -> str | None:
        """Why the run must stop for rejections, or None."""
        if self.answers < s.reject_min_answers or not self.window:
            return None
        rate = sum(self.window) / len(self.window)
        if rate <= s.max_reject_rate:
            return None
        top = ", ".join(f"{r} {n}" for r, n in self.rejections.most_common(3))
        return (
            f"{rate:.0%} of the last {len(self.window)} answers were rejected ({top}), more than "
            f"--max-reject-rate {s.max_reject_rate}; check the prompts and the model (failures.jsonl, "
            "cache.jsonl hold the answers), then rerun to resume"
        )

    def report(
        self, s: GenSettings, requests_sent: int, retries: int, base_url: str | None
    ) -> dict[str, Any]:
        p50, p90 = percentile(self.latencies, 0.5), percentile(self.latencies, 0.9)
        return {
            "model": s.model,
            "base_url": base_url,
            "types": list(s.types),
            "contexts": self.contexts,
            "bad_contexts": dict(self.bad_contexts),
            "jobs": self.jobs,
            "requests_sent": requests_sent,
            "cache_hits": self.cache_hits,
            "retries": retries,
            "format_retries": self.format_retries,
            "failures": self.failures,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "usage_estimated": self.usage_estimated,
            "cost": round(self.cost(s), 6),
            "price_in": s.price_in,
            "price_out": s.price_out,
            "answers": self.answers,
            "accepted": self.accepted,
            "rejections": dict(sorted(self.rejections.items())),
            "dropped_duplicate_questions": self.dropped_duplicate_questions,
            "acceptance_rate": round(self.accepted / self.answers, 4) if self.answers else None,
            "latency_s": {
                "p50": None if p50 is None else round(p50, 3),
                "p90": None if p90 is None else round(p90, 3),
            },
            "records": {t: self.records[t] for t in s.types} | {"all": sum(self.records.values())},
            "pending": self.pending,
            "stopped": self.stopped,
        }


def summary_lines(report: dict[str, Any]) -> list[str]:
    """A few lines for people; the JSON holds everything."""
    lat = report["latency_s"]
    rejected = ", ".join(f"{k} {v}" for k, v in report["rejections"].items()) or "none"
    rate = report["acceptance_rate"]
    return [
        f"records: {report['records']}",
        f"requests sent {report['requests_sent']}, cache hits {report['cache_hits']}, retries "
        f"{report['retries']} (+{report['format_retries']} after malformed answers), "
        f"failures {report['failures']}",
        f"tokens in {report['tokens_in']}, out {report['tokens_out']}, cost {report['cost']:.4f}"
        + (
            f" ({report['usage_estimated']} answers without usage: estimated)"
            if report["usage_estimated"]
            else ""
        ),
        f"answers {report['answers']}, accepted {report['accepted']}"
        + (f" ({rate:.0%})" if rate is not None else "")
        + f"; rejected: {rejected}",
        f"latency p50 {lat['p50']} s, p90 {lat['p90']} s"
        if lat["p50"] is not None
        else "latency: no request answered in this run",
    ]
