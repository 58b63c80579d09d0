"""A real ``graft serve`` on a free loopback port, in this process, for the server's tests."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch
from PIL import Image

from graft.serve.app import ServerState, build_app
from graft.serve.server import build_state
from graft.serve.settings import ServeSettings

from asgi_thread import serve_in_thread
from tiny import tiny_model_and_processor


def save_sensitive_model(
    directory: Path, connector: dict | str = "mlp2x_gelu", instruction_tokenizer: Any = None
) -> Path:
    """The tiny model with larger random weights (its greedy answers depend on prompt and images),
    saved as a graft model folder; ``instruction_tokenizer`` for connectors that read the prompt."""
    model, processor = tiny_model_and_processor(connector=connector)
    processor.instruction_tokenizer = instruction_tokenizer
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def data_url(image: Image.Image, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buffer.getvalue()).decode()


@contextlib.contextmanager
def running_server(model_dir: Path, settings: ServeSettings) -> Iterator[tuple[str, ServerState]]:
    """``graft serve``'s app for ``model_dir`` on a free loopback port; yields its base URL and state."""
    state = build_state(model_dir, settings)
    try:
        with serve_in_thread(build_app(state)) as url:
            yield url, state
    finally:
        state.engine.drain()


def client(url: str, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)


def user(text: str, *images) -> dict:
    parts = [{"type": "text", "text": text}]
    parts += [{"type": "image_url", "image_url": {"url": data_url(img)}} for img in images]
    return {"role": "user", "content": parts}


def ask(url: str, messages: list, **kwargs) -> str:
    reply = client(url).chat.completions.create(
        model="tiny-vlm", messages=messages, temperature=0, max_tokens=kwargs.pop("max_tokens", 12), **kwargs
    )
    return reply.choices[0].message.content


def raw_stream(url: str, body: dict, headers: dict | None = None) -> list:
    """The SSE events of a streamed request: parsed JSON objects, and the string '[DONE]'."""
    events = []
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers, timeout=60) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                data = line.removeprefix("data: ")
                events.append(data if data == "[DONE]" else json.loads(data))
    return events


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """The sensitive tiny model saved once per test module (a test file takes it by assignment:
    ``model_dir = serve_fixtures.model_dir``)."""
    return save_sensitive_model(tmp_path_factory.mktemp("serve") / "tiny-vlm")


@pytest.fixture(scope="module")
def server(model_dir):
    """A server on ``model_dir`` for the module, batching up to 8 rows: ``(url, state)``."""
    with running_server(model_dir, ServeSettings(port=0, max_batch_size=8)) as (url, state):
        yield url, state


def slowed(state, seconds: float = 0.02) -> list[float]:
    """Every model step of the server takes at least ``seconds`` (a long answer stays in flight);
    returns the list the steps' start times go to."""
    forward, steps = state.backend.forward, []

    def slow(inputs):
        steps.append(time.monotonic())
        time.sleep(seconds)
        return forward(inputs)

    state.backend.forward = slow
    return steps
