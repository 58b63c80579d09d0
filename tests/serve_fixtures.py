"""A real ``graft serve`` on a free loopback port, in this process, for the server's tests."""

from __future__ import annotations

import base64
import contextlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
