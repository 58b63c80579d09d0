"""The worker that owns the model: it batches requests, decodes step by step and streams.

One thread runs the model; the event loop only submits ``Job``s and reads their events. New jobs
that arrive within ``batch_wait_ms`` are prefilled together (left-padded, position ids counted
from each row's first token) and join the rows already decoding: their KV caches are merged by
left-padding the shorter one, so a row never waits for another batch to end. A finished or
cancelled row leaves at the next step (``batch_select_indices``), and columns no row attends any
more are cropped. Vision features are cached by image digest: every chat turn resends its images.
A request for ``n`` choices is ``n`` jobs that share one event queue, each event tagged with its
choice's index.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from graft.serve.backend import Backend, Prompt
from graft.serve.decoding import AnswerText, Sampling, model_logits, next_tokens, token_logprobs
from graft.serve.errors import APIError
from graft.serve.metrics import Metrics
from graft.serve.settings import ServeSettings

logger = logging.getLogger(__name__)


@dataclass
class Event:
    """What a job tells its request: text, the end (with usage), or a failure; ``index`` is the
    job's choice. ``logprobs``: OpenAI's ``logprobs.content`` entries of the tokens decoded since
    the previous event (asked with ``top_logprobs``)."""

    kind: str  # "delta" | "done" | "error"
    text: str = ""
    finish_reason: str | None = None
    usage: dict[str, int] | None = None
    error: APIError | None = None
    index: int = 0
    logprobs: list[dict[str, Any]] = field(default_factory=list)


class Job:
    """One choice of a request inside the engine; ``events`` (shared by a request's choices) is
    read on the request's event loop."""

    def __init__(
        self,
        prompt: Prompt,
        sampling: Sampling,
        loop: asyncio.AbstractEventLoop,
        index: int = 0,
        events: asyncio.Queue[Event] | None = None,
    ) -> None:
        self.prompt, self.sampling, self.loop, self.index = prompt, sampling, loop, index
        self.events: asyncio.Queue[Event] = events if events is not None else asyncio.Queue()
        self.cancelled = threading.Event()
        self.submitted = time.monotonic()

    def emit(self, event: Event) -> None:
        event.index = self.index
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the request's loop is gone (server shutting down): nobody listens
            self.cancelled.set()

    def cancel(self) -> None:
        self.cancelled.set()


@dataclass
class _Row:
    job: Job
    text: AnswerText
    generator: torch.Generator | None
    position: int  # the position id of ``token``
    token: int = -1  # the last sampled token, fed at the next step
    generated: int = 0
    #: log-probability entries not yet sent (with ``top_logprobs``)
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    first_token_at: float | None = None
    started: float = field(default_factory=time.monotonic)


def _left_pad(tensor: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    missing = length - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


class Engine:
    def __init__(self, backend: Backend, settings: ServeSettings, metrics: Metrics) -> None:
        self.backend, self.settings, self.metrics = backend, settings, metrics
        self._queue: queue.Queue[Job] = queue.Queue(maxsize=settings.max_queue)
        self._rows: list[_Row] = []
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None
        self._features: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._stop_ids, stop_texts = backend.stops()
        self._stop_texts = tuple(stop_texts)
        self._suppress = backend.suppressed_tokens()
        self._draining = threading.Event()
        self._thread = threading.Thread(target=self._run, name="graft-engine", daemon=True)

    # --- the event loop's side ------------------------------------------------------------------
    def start(self) -> None:
        """Warm up (one token through the whole path) and start the worker."""
        warm = Prompt(self.backend.tokenizer("Hi", add_special_tokens=False)["input_ids"] or [0])
        with torch.inference_mode():
            self._prefill([warm])
        self._reset()
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def idle(self) -> bool:
        return self._queue.empty() and not self._rows

    def queue_depth(self) -> int:
        return self._queue.qsize()

    def submit(self, prompt: Prompt, samplings: list[Sampling]) -> list[Job]:
        """One job per choice, sharing one event queue; all are queued or none (503)."""
        if self._draining.is_set() or not self.alive:
            raise APIError(503, "the server is shutting down", "server_shutting_down", type="server_error")
        loop, events = asyncio.get_running_loop(), asyncio.Queue[Event]()
        jobs = [Job(prompt, sampling, loop, i, events) for i, sampling in enumerate(samplings)]
        for queued, job in enumerate(jobs):
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                for earlier in jobs[:queued]:
                    earlier.cancel()
                raise APIError(
                    503,
                    "the server is busy: too many requests waiting",
                    "server_busy",
                    type="server_error",
                    headers={"Retry-After": "1"},
                ) from None
        self.metrics.queue_depth.set(self._queue.qsize())
        return jobs

    def drain(self) -> None:
        """Refuse new jobs; the worker finishes the queued and running ones, then exits."""
        self._draining.set()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    # --- the worker -----------------------------------------------------------------------------
    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                jobs = self._take()
                if jobs is None:
                    return
                try:
                    if jobs:
                        rows, prefilled = self._new_rows(jobs)
                except Exception:  # the newcomers alone fail: the rows already decoding go on
                    logger.exception("the engine failed to admit %d request(s)", len(jobs))
                    self._fail(jobs)
                    jobs = []
                try:
                    if jobs:
                        self._join(rows, *prefilled)
                    if self._rows:
                        self._step()
                except Exception:  # a bug must not kill the worker: fail the jobs, keep serving
                    logger.exception("the engine failed a batch")
                    self._fail(jobs + [row.job for row in self._rows])
                    self._reset()

    def _take(self) -> list[Job] | None:
        """New jobs for this step: wait for one when nothing runs, then gather for a moment."""
        free = self.settings.max_batch_size - len(self._rows)
        jobs: list[Job] = []
        if not self._rows:
            while not jobs:
                if self._draining.is_set() and self._queue.empty():
                    return None
                try:
                    jobs.append(self._queue.get(timeout=0.05))
                except queue.Empty:
                    continue
            deadline = time.monotonic() + self.settings.batch_wait_ms / 1000
            while len(jobs) < free and (left := deadline - time.monotonic()) > 0:
                try:
                    jobs.append(self._queue.get(timeout=left))
                except queue.Empty:
                    break
        if self._mergeable():
            while len(jobs) < free:
                try:
                    jobs.append(self._queue.get_nowait())
                except queue.Empty:
                    break
        self.metrics.queue_depth.set(self._queue.qsize())
        return [job for job in jobs if not job.cancelled.is_set()]

    def _mergeable(self) -> bool:
        cache = self._cache
        return cache is None or all(type(layer) is DynamicLayer for layer in cache.layers)

    def _vision_features(self, prompts: list[Prompt]) -> torch.Tensor | None:
        wanted = [
            (p.digests[i], p.pixel_values[i])
            for p in prompts
            if p.pixel_values is not None
            for i in range(len(p.digests))
        ]
        if not wanted:
            return None
        missing = {d: px for d, px in wanted if d not in self._features}
        if missing:
            computed = self.backend.image_features(torch.stack(list(missing.values())))
            for digest, features in zip(missing, computed, strict=True):
                self._features[digest] = features
        for digest, _ in wanted:
            self._features.move_to_end(digest)
        while len(self._features) > self.settings.feature_cache_size:
            self._features.popitem(last=False)
        self.metrics.feature_cache_hits.inc(len(wanted) - len(missing))
        return torch.stack([self._features[d] for d, _ in wanted])

    def _prefill(self, prompts: list[Prompt]) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """Logits of each prompt's last position, its KV cache and attention mask."""
        device = self.backend.device
        length = max(len(p.input_ids) for p in prompts)
        pad = self.backend.tokenizer.pad_token_id or 0
        ids = torch.full((len(prompts), length), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), length), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, length - len(p.input_ids) :] = torch.tensor(p.input_ids)
            mask[i, length - len(p.input_ids) :] = 1
        inputs: dict[str, Any] = {
            "input_ids": ids.to(device),
            "attention_mask": mask.to(device),
            "position_ids": (mask.cumsum(-1) - 1).clamp(min=0).to(device),
            "cache": DynamicCache(),
        }
        features = self._vision_features(prompts)
        if features is not None:
            inputs["vision_features"] = features
        instructions = [p.instruction_ids for p in prompts]
        if any(x is not None for x in instructions):
            width = max(len(x or []) for x in instructions)
            inputs["instruction_ids"] = torch.zeros((len(prompts), width), dtype=torch.long, device=device)
            inputs["instruction_mask"] = torch.zeros_like(inputs["instruction_ids"])
            for i, x in enumerate(instructions):
                inputs["instruction_ids"][i, : len(x or [])] = torch.tensor(x or [], dtype=torch.long)
                inputs["instruction_mask"][i, : len(x or [])] = 1
        out = self.backend.forward(inputs)
        return out.logits[:, -1], out.cache, inputs["attention_mask"]

    def _fail(self, jobs: list[Job]) -> None:
        error = APIError(500, "the model failed on this batch", "internal_error", type="server_error")
        for job in jobs:
            job.emit(Event("error", error=error))

    def _new_rows(self, jobs: list[Job]) -> tuple[list[_Row], tuple[torch.Tensor, Any, torch.Tensor]]:
        """The newcomers' rows and their prefill (logits, KV cache, mask); nothing joins the
        batch yet, so a failure here is theirs alone."""
        rows = []
        for job in jobs:
            generator = None
            if not job.sampling.greedy:
                generator = torch.Generator()
                generator.manual_seed(job.sampling.seed if job.sampling.seed is not None else torch.seed())
            text = AnswerText(self.backend.tokenizer, self._stop_texts + job.sampling.stop)
            rows.append(_Row(job, text, generator, position=len(job.prompt.input_ids) - 1))
        return rows, self._prefill([job.prompt for job in jobs])

    def _join(self, rows: list[_Row], logits: torch.Tensor, cache: Any, mask: torch.Tensor) -> None:
        """The newcomers join the running batch and take their first token."""
        self.metrics.batch_size.observe(len(rows))
        self._merge(rows, cache, mask)
        self._advance(logits, first=len(self._rows) - len(rows))

    def _step(self) -> None:
        device = self.backend.device
        tokens = torch.tensor([[row.token] for row in self._rows], device=device)
        positions = torch.tensor([[row.position] for row in self._rows], device=device)
        assert self._mask is not None
        self._mask = torch.cat([self._mask, self._mask.new_ones((len(self._rows), 1))], dim=1)
        out = self.backend.forward(
            {
                "input_ids": tokens,
                "attention_mask": self._mask,
                "position_ids": positions,
                "cache": self._cache,
            }
        )
        self._cache = out.cache
        self.metrics.batch_size.observe(len(self._rows))
        self._advance(out.logits[:, -1], first=0)

    def _advance(self, logits: torch.Tensor, first: int) -> None:
        """Sample the next token of rows ``first..``, stream their text, drop finished rows."""
        rows = self._rows[first:]
        logits = model_logits(logits, self._suppress)
        samplings = [r.job.sampling for r in rows]
        tokens = next_tokens(logits, samplings, [r.generator for r in rows], [r.text.tokens for r in rows])
        now = time.monotonic()
        for i, (row, token) in enumerate(zip(rows, tokens, strict=True)):
            row.token, row.position, row.generated = token, row.position + 1, row.generated + 1
            if row.first_token_at is None:
                row.first_token_at = now
                self.metrics.time_to_first_token.observe(now - row.job.submitted)
            if token in self._stop_ids:
                self._finish(row, "stop")
                continue
            top = row.job.sampling.top_logprobs
            if top is not None:
                row.logprobs.append(token_logprobs(self.backend.tokenizer, logits[i], token, top))
            delta = row.text.add(token)
            if delta:
                row.job.emit(Event("delta", delta, logprobs=row.logprobs))
                row.logprobs = []
            if row.text.stopped:
                self._finish(row, "stop")
            elif row.generated >= row.job.sampling.max_tokens:
                self._finish(row, "length")
        keep = [i for i, row in enumerate(self._rows) if not row.job.cancelled.is_set()]
        if len(keep) < len(self._rows):
            self._select(keep)

    def _finish(self, row: _Row, reason: str) -> None:
        rest = row.text.finish()
        if rest or row.logprobs:  # tokens whose text was held back still report their logprobs
            row.job.emit(Event("delta", rest, logprobs=row.logprobs))
            row.logprobs = []
        prompt = len(row.job.prompt.input_ids)
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": row.generated,
            "total_tokens": prompt + row.generated,
        }
        row.job.emit(Event("done", finish_reason=reason, usage=usage))
        seconds = time.monotonic() - (row.first_token_at or row.started)
        if row.generated > 1 and seconds > 0:
            self.metrics.tokens_per_second.observe((row.generated - 1) / seconds)
        self.metrics.completion_tokens.inc(row.generated)
        row.job.cancelled.set()  # done: the row leaves the batch

    # --- the batch's KV cache -------------------------------------------------------------------
    def _reset(self) -> None:
        self._rows, self._cache, self._mask = [], None, None

    def _merge(self, rows: list[_Row], cache: DynamicCache, mask: torch.Tensor) -> None:
        if self._cache is None or self._mask is None:
            self._rows, self._cache, self._mask = rows, cache, mask
            return
        length = max(self._mask.shape[1], mask.shape[1])
        for old, new in zip(self._cache.layers, cache.layers, strict=True):
            old.keys = torch.cat([_left_pad(old.keys, length, 2), _left_pad(new.keys, length, 2)])
            old.values = torch.cat([_left_pad(old.values, length, 2), _left_pad(new.values, length, 2)])
        self._mask = torch.cat([_left_pad(self._mask, length, 1), _left_pad(mask, length, 1)])
        self._rows += rows

    def _select(self, keep: list[int]) -> None:
        if not keep:
            self._reset()
            return
        assert self._cache is not None and self._mask is not None
        index = torch.tensor(keep, device=self._mask.device)
        self._cache.batch_select_indices(index)
        self._mask = self._mask[index]
        self._rows = [self._rows[i] for i in keep]
        # columns no remaining row attends: drop them (a long prompt that left frees its width)
        start = int(self._mask.any(dim=0).long().argmax())
        if start > 0 and self._mergeable():
            for layer in self._cache.layers:
                layer.keys, layer.values = layer.keys[:, :, start:], layer.values[:, :, start:]
            self._mask = self._mask[:, start:]
