"""A scripted OpenAI-compatible server for ``graft gen-data`` tests (Starlette + uvicorn in a thread).

``/v1/models`` lists ``models``; ``/v1/chat/completions`` answers in the format of the request's
few-shot examples (``Question:`` / ``Answer:`` pairs when the first example answer has them: three
pairs, or one when the example has one; else a description). Faults are keyed by a marker in the
last user message (the real context); "once" faults hit the first request of a conversation
(same messages, whatever the seed) and not its retries:

  R429      429 with ``Retry-After: 1`` once        E500      500 once
  E503      503 with ``retry-after-ms: 300`` once   DOWN500   500 always
  BAD400    400 always (not retried)                MALFORMED_ONCE  no blocks once, then good
  MALFORMED an answer without Question/Answer blocks  TRUNCATE  cut, ``finish_reason: length``
  LEAK      mentions the captions                   COORDS    raw coordinates in an answer
  SHORTQ    a too-short question                    SHORTA    a too-short answer
  LONGA     a too-long answer                       DUPQ      the same question twice
  EMPTY     empty content                           NOUSAGE   no ``usage`` in the reply
  SLOW      ``slow_s`` seconds before answering (``delay_s`` delays every answer)

With ``api_key`` set every route wants ``Authorization: Bearer KEY`` (401 otherwise). Every
request is kept in ``seen`` (arrival time, path, body, status); ``max_in_flight`` is the most
chat requests answered at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import asgi_thread


@dataclass
class Seen:
    time: float
    path: str
    body: dict[str, Any] | None
    status: int = 0


def _error(status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return JSONResponse(body, status, headers=headers)


def _pairs(n: int, answer: str = "It is shown clearly in the middle of the picture.") -> str:
    return "\n\n".join(f"Question: What is object number {i + 1} like?\nAnswer: {answer}" for i in range(n))


@dataclass
class FakeGenServer:
    api_key: str | None = None
    models: tuple[str, ...] = ("fake-gen",)
    delay_s: float = 0.0
    slow_s: float = 1.0
    seen: list[Seen] = field(default_factory=list)
    first: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/models", self.list_models),
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
            ]
        )

    def chat_bodies(self) -> list[dict[str, Any]]:
        with self.lock:
            return [s.body for s in self.seen if s.path.endswith("/chat/completions") and s.body]

    def reset(self) -> None:
        with self.lock:
            self.seen.clear()
            self.max_in_flight = 0

    def _auth(self, request: Request) -> Response | None:
        if self.api_key and request.headers.get("authorization") != f"Bearer {self.api_key}":
            return _error(401, "Incorrect API key provided.", "invalid_request_error")
        return None

    async def list_models(self, request: Request) -> Response:
        with self.lock:
            self.seen.append(Seen(time.monotonic(), request.url.path, None))
        if refused := self._auth(request):
            return refused
        cards = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.models]
        return JSONResponse({"object": "list", "data": cards})

    async def chat(self, request: Request) -> Response:
        body = json.loads(await request.body())
        seen = Seen(time.monotonic(), request.url.path, body)
        with self.lock:
            self.seen.append(seen)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            response = await self._answer(request, body)
        finally:
            with self.lock:
                self.in_flight -= 1
        seen.status = response.status_code
        return response

    async def _answer(self, request: Request, body: dict[str, Any]) -> Response:
        if refused := self._auth(request):
            return refused
        messages = body["messages"]
        text = messages[-1]["content"]
        conversation = hashlib.sha256(json.dumps(messages).encode()).hexdigest()
        with self.lock:
            self.first[conversation] += 1
            once = self.first[conversation] == 1
        delay = self.delay_s + (self.slow_s if "SLOW" in text else 0.0)
        if delay:
            await asyncio.sleep(delay)
        if "R429" in text and once:
            return _error(429, "Rate limit reached.", "rate_limit_error", {"Retry-After": "1"})
        if "E503" in text and once:
            return _error(503, "Overloaded.", "server_error", {"retry-after-ms": "300"})
        if ("E500" in text and once) or "DOWN500" in text:
            return _error(500, "Scripted failure.", "server_error")
        if "BAD400" in text:
            return _error(400, "The request is too long.", "invalid_request_error")
        content, finish = self._content(messages, text, once), "stop"
        if "TRUNCATE" in text:
            content, finish = content[: len(content) // 2], "length"
        reply: dict[str, Any] = {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model"),
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}
            ],
        }
        if "NOUSAGE" not in text:
            prompt = sum(len(m["content"]) for m in messages) // 4
            reply["usage"] = {
                "prompt_tokens": prompt,
                "completion_tokens": len(content) // 4 + 1,
                "total_tokens": prompt + len(content) // 4 + 1,
            }
        return JSONResponse(reply)

    def _content(self, messages: list[dict[str, str]], text: str, once: bool) -> str:
        example = messages[2]["content"] if len(messages) > 2 else ""
        qa = "Question:" in example
        n = 1 if example.count("Question:") == 1 else 3
        if "EMPTY" in text:
            return ""
        if "MALFORMED" in text and (once or "MALFORMED_ONCE" not in text):
            return "I see some shapes. They are nice. I would rather not list questions."
        if not qa:  # a detail description
            if "LEAK" in text:
                return "The captions mention several shapes, and the picture shows them on a grey background."
            if "SHORTA" in text:
                return "Shapes."
            return "The picture shows a few simple shapes on a plain grey background, well apart."
        if "LEAK" in text:
            return _pairs(n - 1) + "\n\nQuestion: What do the captions say?\nAnswer: They list the shapes."
        if "COORDS" in text:
            return "Question: Where is the circle?\nAnswer: Its box is [0.12, 0.34, 0.56, 0.78]."
        if "SHORTQ" in text:
            return "Question: Why?\nAnswer: Because the shapes are arranged that way."
        if "SHORTA" in text:
            return "Question: How many shapes are there?\nAnswer: 2"
        if "LONGA" in text:
            return "Question: What can you see in the image?\nAnswer: " + "shapes " * 800
        if "DUPQ" in text:
            return (
                _pairs(1)
                + "\n\n"
                + _pairs(1)
                + "\n\nQuestion: Is there a square?\nAnswer: Yes, there is one."
            )
        return _pairs(n)


@contextmanager
def serve_in_thread(server: FakeGenServer) -> Iterator[str]:
    """Run the fake on a free loopback port; yield its base URL (…/v1)."""
    with asgi_thread.serve_in_thread(server.app(), lifespan="off") as url:
        yield f"{url}/v1"


def free_port_url() -> str:
    """A base URL where nothing listens (for the endpoint-down test)."""
    return f"http://127.0.0.1:{asgi_thread.free_port()}/v1"
