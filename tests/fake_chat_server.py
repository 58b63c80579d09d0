"""A scripted stand-in for ``graft serve``: the chat page at ``/`` and the public API it uses.

``FakeChat(...).app()`` is a Starlette app; ``serve_in_thread(app)`` runs any ASGI app with
uvicorn on a free 127.0.0.1 port and yields its base URL. Every chat request's JSON body and
``Authorization`` header are kept in ``requests`` / ``auth``. The answer depends on the last user
text:
  "SLOW"  -> an endless stream, a token every 50 ms, until the client hangs up (sets ``hung_up``)
  "XSS"   -> an answer with markup that would run if the page rendered it as HTML
  "FAIL"  -> a few tokens, then an error event mid-stream (its message holds markup too)
  else    -> "Answer N: I see K image(s) in M message(s)." token by token
Any data-URL image over ``max_image_bytes`` (decoded) is refused with 400 ``image_too_large``.
With ``api_key`` set, every API route wants ``Authorization: Bearer KEY`` (401 otherwise).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import re
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from graft.serve.errors import APIError, invalid
from graft.serve.page import page_response

XSS_ANSWER = 'Look: <img src=x onerror="window.__xss=1"> and <script>window.__xss=2</script> done.'
FAIL_MESSAGE = 'the model fell over <img src=x onerror="window.__xss=3">'


def user_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    return " ".join(p.get("text", "") for p in content or [] if p.get("type") == "text")


def image_urls(messages: list[dict[str, Any]]) -> list[str]:
    return [
        p["image_url"]["url"]
        for m in messages
        if isinstance(m.get("content"), list)
        for p in m["content"]
        if p.get("type") == "image_url"
    ]


def _sse(obj: Any) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n"


@dataclass
class FakeChat:
    api_key: str | None = None
    max_image_bytes: int = 100_000
    model: str = "fake-vlm"
    token_delay_s: float = 0.03
    requests: list[dict[str, Any]] = field(default_factory=list)
    auth: list[str | None] = field(default_factory=list)
    hung_up: threading.Event = field(default_factory=threading.Event)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/", self.index),
                Route("/v1/models", self.models),
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
            ]
        )

    async def index(self, request: Request) -> Response:
        html, headers = page_response()
        return Response(html, headers=headers)

    def _check_key(self, request: Request) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
            raise APIError(
                401,
                "Invalid or missing API key.",
                "invalid_api_key",
                type="authentication_error",
                headers={"WWW-Authenticate": "Bearer"},
            )

    async def models(self, request: Request) -> Response:
        try:
            self._check_key(request)
        except APIError as e:
            return JSONResponse(e.body(), e.status, headers=e.headers)
        card = {"id": self.model, "object": "model", "owned_by": "graft", "context_length": 2048}
        card |= {"max_images_per_request": 8, "vision": True}
        return JSONResponse({"object": "list", "data": [card]})

    async def chat(self, request: Request) -> Response:
        try:
            self._check_key(request)
            try:
                body = json.loads(await request.body())
            except ValueError:
                raise invalid("The body is not JSON.") from None
            self.requests.append(body)
            self.auth.append(request.headers.get("authorization"))
            if not body.get("stream"):
                raise invalid("This fake server only streams.", "stream")
            messages = body["messages"]
            for i, url in enumerate(image_urls(messages), 1):
                size = len(base64.b64decode(url.partition(",")[2]))
                if size > self.max_image_bytes:
                    raise APIError(
                        400,
                        f"Image {i} is {size} bytes; this server takes at most {self.max_image_bytes}.",
                        "image_too_large",
                        "messages",
                    )
        except APIError as e:
            return JSONResponse(e.body(), e.status, headers=e.headers)
        text = user_text([m for m in messages if m["role"] == "user"][-1])
        events = self._script(text, messages, body.get("model", self.model))
        return StreamingResponse(events, media_type="text/event-stream")

    async def _script(self, text: str, messages: list[dict[str, Any]], model: str) -> AsyncIterator[str]:
        head = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time())}
        head["model"] = model

        def chunk(delta: dict[str, str], finish: str | None = None) -> str:
            return _sse(head | {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

        yield chunk({"role": "assistant"})
        if "SLOW" in text:
            try:
                for i in range(1200):  # at most a minute
                    yield chunk({"content": f"tick{i} "})
                    await asyncio.sleep(0.05)
            except BaseException:
                self.hung_up.set()
                raise
            return
        if "FAIL" in text:
            for token in ("Partial ", "answer "):
                yield chunk({"content": token})
                await asyncio.sleep(self.token_delay_s)
            error = {"message": FAIL_MESSAGE, "type": "server_error", "param": None, "code": "internal_error"}
            yield _sse({"error": error})
            yield _sse("[DONE]")
            return
        if "XSS" in text:
            answer = XSS_ANSWER
        else:
            turns = sum(m["role"] == "user" for m in messages)
            n_images = len(image_urls(messages))
            answer = f"Answer {turns}: I see {n_images} image(s) in {len(messages)} message(s)."
        for token in re.findall(r"\S+\s*", answer):
            yield chunk({"content": token})
            await asyncio.sleep(self.token_delay_s)
        yield chunk({}, "stop")
        yield _sse("[DONE]")
