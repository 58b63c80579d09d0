"""The endpoint's client: one check before the run, then chat completions under client-side limits.

``openai.AsyncOpenAI`` with its own retries off (``max_retries=0``), so the retries here are the
only ones: transient errors (connection, timeout, 408, 409, 429, 5xx) are retried up to
``max_retries`` times with exponential backoff and jitter, and a ``Retry-After`` (or
``retry-after-ms``) header on a 429 / 503 is honoured, by every request at once (the client
pauses). Requests per minute and tokens per minute are token buckets; the token bucket is
charged an estimate before a request (prompt chars / 4 + ``max_tokens``) and corrected by the
reply's ``usage`` after it. A 401 / 403 / 404 in the middle of a run is fatal (no other request
would fare better); any other 4xx fails that request alone.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

from .gen_settings import GenError, GenSettings

logger = logging.getLogger(__name__)


def estimate_tokens(text: str) -> int:
    """The simple rule used where the endpoint reports no usage: a token is about four characters."""
    return max(1, round(len(text) / 4))


def prompt_tokens_estimate(messages: list[dict[str, str]]) -> int:
    return sum(estimate_tokens(m["content"]) + 4 for m in messages)


class TokenBucket:
    """``per_minute`` units a minute, holding at most ``burst_s`` seconds' worth (at least one
    request's worth: a bigger request waits for a full bucket and leaves it in debt)."""

    def __init__(self, per_minute: float, burst_s: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * burst_s)
        self.tokens = self.capacity
        self._last = time.monotonic()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self._last) * self.rate)
        self._last = now

    async def take(self, n: float) -> None:
        async with self._lock:  # first come, first served
            while True:
                self._refill()
                need = min(n, self.capacity)
                if self.tokens >= need:
                    self.tokens -= n
                    return
                await asyncio.sleep((need - self.tokens) / self.rate)

    def adjust(self, n: float) -> None:
        """Give back ``n`` units (negative: take more), once the real cost is known."""
        self._refill()
        self.tokens = min(self.capacity, self.tokens + n)


@dataclass
class Answer:
    content: str | None
    finish_reason: str | None
    #: {"prompt_tokens", "completion_tokens"} as reported, or None
    usage: dict[str, int] | None
    latency_s: float


class RequestFailed(Exception):
    """A request that failed for good; ``fatal`` when no other request would fare better."""

    def __init__(self, message: str, fatal: bool = False) -> None:
        super().__init__(message)
        self.fatal = fatal


def retry_after(err: Exception) -> float | None:
    """Seconds the server asked to wait (``retry-after-ms`` or ``Retry-After``), or None."""
    response = getattr(err, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


class GenClient:
    """Chat completions with retries, rate limits and counters (``retries``, ``requests``)."""

    def __init__(self, s: GenSettings) -> None:
        import openai

        self.s = s
        self._openai = openai
        # a local server needs no key, but the client insists on one
        self.client = openai.AsyncOpenAI(
            base_url=s.base_url, api_key=s.api_key or "none", max_retries=0, timeout=s.timeout_s
        )
        self.requests_bucket = TokenBucket(s.rpm, s.burst_s) if s.rpm else None
        self.tokens_bucket = TokenBucket(s.tpm, s.burst_s) if s.tpm else None
        self._resume_at = 0.0  # a Retry-After holds every request until then
        self.requests = 0  # HTTP requests sent, retries included
        self.retries = 0

    @property
    def base_url(self) -> str:
        return str(self.client.base_url).rstrip("/")

    async def close(self) -> None:
        await self.client.close()

    async def check(self) -> None:
        """``GET /models``: the endpoint is up, takes the key and serves the model; else ``GenError``."""
        o, s = self._openai, self.s
        try:
            page = await self.client.models.list()
        except o.APIConnectionError as err:
            raise GenError(f"cannot reach the endpoint {self.base_url} ({err}); is the server up?") from None
        except (o.AuthenticationError, o.PermissionDeniedError) as err:
            raise GenError(
                f"{self.base_url} refused the API key ({err.status_code}); pass the right --api-key "
                "(or GRAFT_GEN_API_KEY / OPENAI_API_KEY)"
            ) from None
        except o.NotFoundError:
            logger.warning(
                "%s has no /models route: the model name %r is not checked", self.base_url, s.model
            )
            return
        except o.APIError as err:
            raise GenError(f"{self.base_url}/models failed: {err}") from None
        served = [m.id for m in page.data]
        if s.model not in served:
            listed = ", ".join(served) or "nothing"
            raise GenError(f"model {s.model!r} is not served by {self.base_url} (it serves: {listed})")

    def _transient(self, err: Exception) -> bool:
        o = self._openai
        if isinstance(err, o.APIConnectionError):  # APITimeoutError is one
            return True
        return isinstance(err, o.APIStatusError) and (
            err.status_code in (408, 409, 429) or err.status_code >= 500
        )

    def _fatal(self, err: Exception) -> bool:
        o = self._openai
        return isinstance(err, (o.AuthenticationError, o.PermissionDeniedError, o.NotFoundError))

    async def _wait_turn(self, tokens: float) -> None:
        while (wait := self._resume_at - time.monotonic()) > 0:
            await asyncio.sleep(wait)
        if self.requests_bucket:
            await self.requests_bucket.take(1)
        if self.tokens_bucket:
            await self.tokens_bucket.take(tokens)

    async def complete(self, request: dict[str, Any]) -> Answer:
        """One answer to ``request``; ``RequestFailed`` when every try failed."""
        s = self.s
        estimate = prompt_tokens_estimate(request["messages"]) + request.get("max_tokens", s.max_tokens)
        delay = s.backoff_s
        for attempt in range(s.max_retries + 1):
            await self._wait_turn(estimate)
            self.requests += 1
            start = time.monotonic()
            try:
                response = await self.client.chat.completions.create(**request)
            except Exception as err:  # noqa: BLE001 (classified below)
                if self.tokens_bucket:
                    self.tokens_bucket.adjust(estimate)  # nothing was generated
                message = f"{type(err).__name__}: {err}"
                if self._fatal(err):
                    raise RequestFailed(message, fatal=True) from None
                if not self._transient(err) or attempt == s.max_retries:
                    raise RequestFailed(message) from None
                self.retries += 1
                asked = retry_after(err) if getattr(err, "status_code", None) in (429, 503) else None
                if asked is not None:
                    wait = min(asked, s.max_retry_after_s)
                    self._resume_at = max(self._resume_at, time.monotonic() + wait)
                else:
                    wait = min(delay, s.max_backoff_s) * (0.5 + random.random())
                    delay *= 2
                logger.debug("retry %d in %.2fs after %s", attempt + 1, wait, message)
                await asyncio.sleep(wait)
                continue
            latency = time.monotonic() - start
            choice = response.choices[0] if response.choices else None
            content = choice.message.content if choice is not None else None
            usage = None
            if response.usage is not None:
                usage = {
                    "prompt_tokens": int(response.usage.prompt_tokens or 0),
                    "completion_tokens": int(response.usage.completion_tokens or 0),
                }
            if self.tokens_bucket and usage:
                self.tokens_bucket.adjust(estimate - usage["prompt_tokens"] - usage["completion_tokens"])
            return Answer(content, choice.finish_reason if choice else None, usage, latency)
        raise AssertionError("unreachable")
