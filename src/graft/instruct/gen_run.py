"""``graft gen-data``: LLaVA's GPT-assisted instruction data, through any OpenAI-compatible endpoint.

For every context and response type, one request (system message, few-shot pairs, the context);
its answer is cached, validated and turned into a LLaVA record ``{context_id}-{type}``. A
malformed answer is asked again with a varied request (another ``seed``, the temperature 0.1
higher), so the retry is a different request with its own cache key. The order of work:

1. read the contexts and the prompts (bad ones stop here, naming the file and line);
2. lock the output folder, read the cache, replay every job whose answers are all cached;
3. if any job is left: check the endpoint (``GET /models``), then ask, ``concurrency`` at a time;
4. write ``{type}.json``, ``llava_instruct.json`` and ``report.json`` (atomically), rebuilt from
   the cache's answers to this run's jobs (its contexts, ``limit`` and ``types``), so they never
   hold a duplicate or a torn record.

A run stops early, cleanly (outputs written, the rest left for a rerun), when the rejection
rate passes ``max_reject_rate``, when the next request could pass ``max_cost``, or when the
endpoint refuses the key or the model mid-run.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from graft.files import write_text_atomic

from .gen_cache import FailureLog, ResponseCache, RunLock, request_key
from .gen_client import Answer, GenClient, RequestFailed, prompt_tokens_estimate
from .gen_contexts import Context, load_contexts
from .gen_prompts import PromptSet, load_prompts
from .gen_report import RunStats
from .gen_settings import RESPONSE_TYPES, GenSettings
from .gen_validate import RETRY_REASONS, Verdict, to_record

logger = logging.getLogger(__name__)

MERGED_FILE = "llava_instruct.json"
REPORT_FILE = "report.json"


@dataclass
class Job:
    ctx: Context
    type: str
    messages: list[dict[str, str]]

    def request(self, s: GenSettings, variant: int = 0) -> dict[str, Any]:
        """The request of try ``variant`` (0 the first; each format retry varies seed and temperature)."""
        request: dict[str, Any] = {
            "model": s.model,
            "messages": self.messages,
            "temperature": round(min(2.0, s.temperature + 0.1 * variant), 3),
            "max_tokens": s.max_tokens,
            "seed": s.seed + variant,
        }
        if s.top_p is not None:
            request["top_p"] = s.top_p
        return request


@dataclass
class Plan:
    jobs: list[Job]
    stats: RunStats = field(default_factory=RunStats)


def plan_jobs(s: GenSettings) -> Plan:
    """Every job of a run: contexts x types, in the contexts' order (raises ``GenError`` early)."""
    prompts: dict[str, PromptSet] = load_prompts(s.types, s.prompts_dir)
    loaded = load_contexts(s.contexts, skip_bad=s.skip_bad, limit=s.limit)
    jobs = [Job(c, t, prompts[t].messages(c)) for c in loaded.contexts for t in s.types]
    stats = RunStats(contexts=len(loaded.contexts), jobs=len(jobs), bad_contexts=loaded.skipped)
    return Plan(jobs, stats)


def _cached_answer(entry: dict[str, Any]) -> Answer:
    return Answer(
        entry.get("content"), entry.get("finish_reason"), entry.get("usage"), entry.get("latency_s", 0)
    )


def _all_cached(job: Job, s: GenSettings, cache: ResponseCache) -> bool:
    """True when the job's outcome follows from cached answers alone."""
    for variant in range(s.format_retries + 1):
        entry = cache.get(request_key(job.request(s, variant)))
        if entry is None:
            return False
        verdict = to_record(entry.get("content"), entry.get("finish_reason"), job.ctx, job.type, s)
        if verdict.record is not None or verdict.reason not in RETRY_REASONS:
            return True
    return True


class _Runner:
    def __init__(self, s: GenSettings, plan: Plan, cache: ResponseCache, failures: FailureLog) -> None:
        self.s, self.plan, self.stats = s, plan, plan.stats
        self.cache, self.failures = cache, failures
        self.client: GenClient | None = None
        self.records: dict[int, dict[str, Any]] = {}
        self.done: set[int] = set()
        self.bar: tqdm | None = None

    def stop(self, reason: str) -> None:
        if self.stats.stopped is None:
            self.stats.stopped = reason
            logger.warning("stopping: %s", reason)

    def _cost_allows(self, request: dict[str, Any]) -> float | None:
        """The request's cost estimate (reserved), or None when it could pass ``max_cost``."""
        s = self.s
        estimate = s.cost(prompt_tokens_estimate(request["messages"]), request["max_tokens"])
        if s.max_cost is not None and self.stats.cost(s) + self.stats.reserved_cost + estimate > s.max_cost:
            return None
        self.stats.reserved_cost += estimate
        return estimate

    async def _ask(self, job: Job, variant: int, request: dict[str, Any], key: str) -> Answer | None:
        s, stats = self.s, self.stats
        assert self.client is not None
        estimate = self._cost_allows(request)
        if estimate is None:
            held = (
                f", {stats.reserved_cost:.4f} more held by the requests in flight"
                if stats.reserved_cost
                else ""
            )
            self.stop(
                f"the next request could pass --max-cost {s.max_cost} (spent {stats.cost(s):.4f}{held}); "
                "rerun with a higher limit to go on"
            )
            return None
        try:
            answer = await self.client.complete(request)
        except RequestFailed as err:
            stats.failures += 1
            self.failures.add(
                {"id": job.ctx.id, "type": job.type, "variant": variant, "key": key, "error": str(err)}
            )
            if err.fatal:
                self.stop(f"the endpoint refused a request: {err}")
            return None
        finally:
            stats.reserved_cost -= estimate
        stats.spend(answer, request, s)
        entry = {"key": key, "id": job.ctx.id, "type": job.type, "variant": variant}
        entry |= {"model": s.model, "content": answer.content, "finish_reason": answer.finish_reason}
        entry |= {
            "usage": answer.usage,
            "latency_s": round(answer.latency_s, 4),
            "time": round(time.time(), 3),
        }
        self.cache.put(entry)
        return answer

    async def resolve(self, index: int) -> None:
        """Every try of one job, from the cache where it can, else from the endpoint."""
        s, stats, job = self.s, self.stats, self.plan.jobs[index]
        for variant in range(s.format_retries + 1):
            request = job.request(s, variant)
            key = request_key(request)
            if (entry := self.cache.get(key)) is not None:
                stats.cache_hits += 1
                answer: Answer | None = _cached_answer(entry)
            elif self.stats.stopped is not None:
                return
            else:
                answer = await self._ask(job, variant, request, key)
                if answer is None:  # failed (logged) or stopped: left for a rerun
                    self._tick()
                    return
            verdict: Verdict = to_record(answer.content, answer.finish_reason, job.ctx, job.type, s)
            stats.note(verdict.reason, s)
            stats.dropped_duplicate_questions += verdict.dropped
            if (problem := stats.reject_rate_problem(s)) is not None:
                self.stop(problem)
            if verdict.record is not None:
                self.records[index] = verdict.record
                stats.records[job.type] += 1
                break
            if verdict.reason not in RETRY_REASONS:
                break
            if variant < s.format_retries:
                stats.format_retries += 1
        self.done.add(index)
        self._tick()

    def _tick(self) -> None:
        if self.bar is not None:
            stats = self.stats
            self.bar.update(1)
            self.bar.set_postfix(
                ok=stats.accepted, rejected=sum(stats.rejections.values()), failed=stats.failures
            )

    async def run(self) -> None:
        s = self.s
        jobs = self.plan.jobs
        cached = [i for i, job in enumerate(jobs) if _all_cached(job, s, self.cache)]
        for i in tqdm(cached, desc="replay cache", unit="job", disable=not cached):
            await self.resolve(i)
        todo = deque(i for i in range(len(jobs)) if i not in self.done)
        if todo and self.stats.stopped is None:
            self.client = GenClient(s)
            try:
                await self.client.check()
                self.bar = tqdm(total=len(todo), desc=f"gen-data {s.model}", unit="job")

                async def worker() -> None:
                    while todo and self.stats.stopped is None:
                        await self.resolve(todo.popleft())

                await asyncio.gather(*(worker() for _ in range(min(s.concurrency, len(todo)))))
            finally:
                if self.bar is not None:
                    self.bar.close()
                await self.client.close()
        self.stats.pending = len(jobs) - len(self.done)


def _write_outputs(s: GenSettings, plan: Plan, records: dict[int, dict[str, Any]]) -> None:
    by_type: dict[str, list[dict[str, Any]]] = {t: [] for t in s.types}
    merged = []
    for i in sorted(records):
        by_type[plan.jobs[i].type].append(records[i])
        merged.append(records[i])
    for t, rows in by_type.items():
        write_text_atomic(s.out / f"{t}.json", json.dumps(rows, indent=1, ensure_ascii=False) + "\n")
    write_text_atomic(s.out / MERGED_FILE, json.dumps(merged, indent=1, ensure_ascii=False) + "\n")
    stale = [f"{t}.json" for t in RESPONSE_TYPES if t not in s.types and (s.out / f"{t}.json").is_file()]
    if stale:  # left by an earlier run with other --types: not part of this run's merged file
        logger.warning(
            "%s: %s %s from an earlier run (not in --types); %s holds this run's types only: %s",
            s.out,
            ", ".join(stale),
            "is" if len(stale) == 1 else "are",
            MERGED_FILE,
            ", ".join(s.types),
        )


def dry_run(s: GenSettings) -> dict[str, Any]:
    """Build every request and estimate tokens and cost; nothing is sent, nothing written."""
    s = s.with_env()
    s.check()
    plan = plan_jobs(s)
    cache = ResponseCache(s.out, readonly=True)
    todo = [job for job in plan.jobs if not _all_cached(job, s, cache)]
    tokens_in = sum(prompt_tokens_estimate(job.messages) for job in todo)
    tokens_out = len(todo) * s.max_tokens
    return {
        "dry_run": True,
        "model": s.model,
        "types": list(s.types),
        "contexts": plan.stats.contexts,
        "bad_contexts": dict(plan.stats.bad_contexts),
        "jobs": len(plan.jobs),
        "cached": len(plan.jobs) - len(todo),
        "requests_to_send": len(todo),
        "requests_sent": 0,
        "tokens_in_estimate": tokens_in,
        "tokens_out_at_most": tokens_out,
        "cost_at_most": round(s.cost(tokens_in, tokens_out), 6),
        "note": "tokens in: characters / 4; tokens out: max_tokens per request; format retries not counted",
    }


def generate(s: GenSettings) -> dict[str, Any]:
    """One run (or, with ``s.dry_run``, its estimate); returns the report, also in OUT/report.json.
    ``GenError`` when it cannot start; a run that stopped early says why in ``report["stopped"]``."""
    if s.dry_run:
        return dry_run(s)
    s = s.with_env()
    s.check()
    plan = plan_jobs(s)
    with RunLock(s.out):
        cache, failures = ResponseCache(s.out), FailureLog(s.out)
        runner = _Runner(s, plan, cache, failures)
        try:
            asyncio.run(runner.run())
        finally:
            cache.close()
            failures.close()
        _write_outputs(s, plan, runner.records)
        client = runner.client
        report = plan.stats.report(
            s,
            requests_sent=client.requests if client else 0,
            retries=client.retries if client else 0,
            base_url=client.base_url if client else s.base_url,
        )
        write_text_atomic(s.out / REPORT_FILE, json.dumps(report, indent=2) + "\n")
    return report
