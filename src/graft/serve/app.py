"""The ASGI app: five routes, each request guarded (auth, body size, draining) and answered in
OpenAI's shapes. The model is touched only by the engine's worker thread; here requests are
parsed, their images fetched and decoded, and prompts encoded off the event loop.

Routes: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health``, ``GET /metrics`` and
``GET /`` (the web page, the one route without auth: it holds no data and asks for the key).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from graft.serve.backend import Backend, context_error
from graft.serve.engine import Engine, Job
from graft.serve.errors import APIError
from graft.serve.media import load_image_url
from graft.serve.metrics import Metrics
from graft.serve.page import page_response
from graft.serve.protocol import Answer, Completion, choices_usage, parse_chat_request
from graft.serve.settings import ServeSettings

logger = logging.getLogger("graft.serve")
ROUTES = {"/v1/chat/completions", "/v1/models", "/health", "/metrics", "/"}


@dataclasses.dataclass
class ServerState:
    backend: Backend
    engine: Engine
    metrics: Metrics
    settings: ServeSettings
    model_name: str
    created: int = 0  # /v1/models' "created": when the checkpoint was saved (Unix seconds)
    draining: bool = False
    in_flight: int = 0


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


class _BodyTooLarge(Exception):
    pass


class Guard:
    """Every HTTP request: an id, draining (503), auth (401), the body limit (413), metrics, and
    a 500 that shows the request id instead of a traceback."""

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state, path = self.state, scope["path"]
        route = path if path in ROUTES else "other"
        request_id = uuid.uuid4().hex[:16]
        started, status = time.monotonic(), [0]

        async def send_counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        refusal = self._refusal(scope, state)
        if refusal is not None:
            await error_response(refusal)(scope, receive, send_counted)
        else:
            await self._guarded(scope, receive, send_counted, request_id, route)
        state.metrics.requests.labels(route, str(status[0])).inc()
        logger.info(
            "%s %s %s %s %.0f ms",
            request_id,
            scope["method"],
            path,
            status[0],
            1000 * (time.monotonic() - started),
        )

    def _refusal(self, scope: Scope, state: ServerState) -> APIError | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if state.draining:
            return APIError(503, "the server is shutting down", "server_shutting_down", type="server_error")
        key = state.settings.api_key
        if key and scope["path"] != "/":
            given = headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
                return APIError(
                    401,
                    "a valid API key is required (Authorization: Bearer KEY)",
                    "invalid_api_key",
                    type="authentication_error",
                    headers={"WWW-Authenticate": "Bearer"},
                )
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > state.settings.max_body_bytes):
            return self._too_large()
        return None

    def _too_large(self) -> APIError:
        limit = self.state.settings.max_body_bytes
        return APIError(413, f"the request body exceeds {limit} bytes", "request_too_large")

    async def _guarded(self, scope: Scope, receive: Receive, send: Send, request_id: str, route: str) -> None:
        seen = [0]
        started = [False]
        # a completion is in flight (SIGTERM's drain waits for it) once its whole body is in: a
        # client that stalls halfway through sending one holds nothing up
        counted = [False]

        async def limited_receive() -> Message:
            message = await receive()
            seen[0] += len(message.get("body", b""))
            if seen[0] > self.state.settings.max_body_bytes:
                raise _BodyTooLarge
            whole = message["type"] == "http.request" and not message.get("more_body")
            if route == "/v1/chat/completions" and whole and not counted[0]:
                counted[0] = True
                self.state.in_flight += 1
            return message

        async def tracked_send(message: Message) -> None:
            started[0] = started[0] or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except _BodyTooLarge:
            if not started[0]:
                await error_response(self._too_large())(scope, receive, send)
        except Exception:
            logger.exception("request %s failed", request_id)
            if not started[0]:
                error = APIError(
                    500, f"internal error (request id {request_id})", "internal_error", type="server_error"
                )
                await error_response(error)(scope, receive, send)
        finally:
            if counted[0]:
                self.state.in_flight -= 1


def _sse(data: Any) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


async def _stream(jobs: list[Job], completion: Completion, include_usage: bool) -> AsyncIterator[str]:
    """Per choice the role chunk, then content deltas and one chunk with ``finish_reason`` as the
    choices produce them; the usage chunk when asked; ``[DONE]``. A failure is one
    ``{"error": ...}`` event before ``[DONE]``. A disconnect cancels the jobs."""
    asked = jobs[0].sampling.top_logprobs is not None
    try:
        for job in jobs:
            yield _sse(completion.chunk({"role": "assistant", "content": ""}, index=job.index))
        usages: list[dict[str, int]] = []
        while len(usages) < len(jobs):
            event = await jobs[0].events.get()
            if event.kind == "delta":
                logprobs = event.logprobs if asked else None
                yield _sse(completion.chunk({"content": event.text}, index=event.index, logprobs=logprobs))
            elif event.kind == "done":
                yield _sse(completion.chunk({}, event.finish_reason, index=event.index))
                usages.append(event.usage or {})
            else:
                yield _sse(event.error.body() if event.error else {"error": {"message": "failed"}})
                break
        else:
            if include_usage:
                yield _sse(completion.usage_chunk(choices_usage(usages)))
        yield _sse("[DONE]")
    finally:
        for job in jobs:
            job.cancel()


async def _until_disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _collect(jobs: list[Job], request: Request) -> tuple[list[Answer], dict[str, int]] | None:
    """Every choice's whole answer and the request's usage; None when the client left (the jobs
    are cancelled: their rows leave the batch at the next step)."""
    asked = jobs[0].sampling.top_logprobs is not None
    answers = [Answer(logprobs=[] if asked else None) for _ in jobs]
    texts: list[list[str]] = [[] for _ in jobs]
    usages: list[dict[str, int]] = []
    gone = asyncio.ensure_future(_until_disconnected(request.receive))
    try:
        while len(usages) < len(jobs):
            get = asyncio.ensure_future(jobs[0].events.get())
            await asyncio.wait({get, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not get.done():
                get.cancel()
                return None
            event = get.result()
            answer = answers[event.index]
            if event.kind == "delta":
                texts[event.index].append(event.text)
                if answer.logprobs is not None:
                    answer.logprobs += event.logprobs
            elif event.kind == "done":
                answer.text, answer.finish_reason = "".join(texts[event.index]), event.finish_reason or "stop"
                usages.append(event.usage or {})
            else:
                raise event.error or APIError(500, "generation failed", "internal_error", type="server_error")
        return answers, choices_usage(usages)
    finally:
        gone.cancel()
        for job in jobs:
            job.cancel()


def build_app(state: ServerState) -> Starlette:
    settings = state.settings

    async def chat(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError as err:  # bad JSON or UTF-8, or an integer past Python's 4,300 digits
            raise APIError(400, f"the request body is not valid JSON: {err}", "invalid_json") from None
        except RecursionError:
            raise APIError(400, "the request body nests too deeply", "invalid_json") from None
        req = parse_chat_request(
            body, state.model_name, state.backend.image_token, settings, state.backend.vocab_size()
        )
        images = await asyncio.gather(
            *(load_image_url(part.url, settings.media, part.param) for part in req.images)
        )
        prompt = await asyncio.to_thread(
            state.backend.encode, req.messages, [i.image for i in images], [i.digest for i in images]
        )
        if settings.log_prompts:
            logger.info(
                "prompt %s; images %s",
                json.dumps([m.content for m in req.messages]),
                [i.digest[:12] for i in images],
            )
        limit, used = state.backend.context_length(), len(prompt.input_ids)
        max_tokens = req.max_tokens or min(settings.default_max_tokens, limit - used)
        if used >= limit or used + max_tokens > limit:  # the prompt alone may fill the context
            raise context_error(used + max_tokens, limit, "the prompt and max_tokens together")
        jobs = state.engine.submit(prompt, req.samplings(max_tokens))
        completion = Completion(state.model_name)
        if req.stream:
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            return StreamingResponse(
                _stream(jobs, completion, req.include_usage), media_type="text/event-stream", headers=headers
            )
        answers = await _collect(jobs, request)
        if answers is None:
            return Response(status_code=499)  # nginx's "client closed request": for the metrics only
        return JSONResponse(completion.response(*answers))

    async def models(request: Request) -> Response:
        card = {
            "id": state.model_name,
            "object": "model",
            "created": state.created,
            "owned_by": "graft",
            "context_length": state.backend.context_length(),
            "max_images_per_request": settings.max_images_per_request if state.backend.supports_images else 0,
            "vision": state.backend.supports_images,
        }
        return JSONResponse({"object": "list", "data": [card]})

    async def health(request: Request) -> Response:
        if not state.engine.alive:
            raise APIError(503, "the model worker is not running", "worker_down", type="server_error")
        return JSONResponse({"status": "ok"})

    async def metrics(request: Request) -> Response:
        state.metrics.queue_depth.set(state.engine.queue_depth())
        body, content_type = state.metrics.render()
        return Response(body, media_type=content_type)

    async def page(request: Request) -> Response:
        html, headers = page_response()
        return Response(html, headers=headers)

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, APIError)
        return error_response(exc)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return error_response(APIError(exc.status_code, message, code))

    routes = [
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/", page, methods=["GET"]),
    ]
    middleware = [Middleware(Guard, state=state)]
    if settings.cors_origins:
        cors = Middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
        middleware.insert(0, cors)
    handlers = {APIError: api_error, HTTPException: http_error}
    return Starlette(routes=routes, middleware=middleware, exception_handlers=handlers)  # type: ignore[arg-type]
