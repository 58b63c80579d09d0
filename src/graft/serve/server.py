"""Run the server: load, warm up, report ready, serve; on SIGTERM drain and exit 0.

The first SIGTERM (or Ctrl-C) makes every new request a 503 while the requests in flight finish,
for at most ``grace_period_s``; then uvicorn closes. A second signal exits at once.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from pathlib import Path
from types import FrameType

import uvicorn

from graft.serve.app import ServerState, build_app
from graft.serve.backend import load_backend
from graft.serve.engine import Engine
from graft.serve.metrics import Metrics
from graft.serve.settings import ServeSettings

logger = logging.getLogger("graft.serve")


def check_exposure(settings: ServeSettings) -> None:
    """A host other than loopback needs an API key, unless the user said ``insecure_no_auth``."""
    host = settings.host
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not settings.api_key and not settings.insecure_no_auth:
        raise ValueError(
            f"--host {host} exposes the server beyond this machine: give an API key (--api-key or "
            "GRAFT_API_KEY), or say --insecure-no-auth to serve without one"
        )


class _DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self.state = state
        self._draining = False

    async def startup(self, sockets: list | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            backend = self.state.backend
            kind = "vision" if backend.supports_images else "text-only"
            host, port = self.config.host, self.config.port
            logger.info("ready: %s (%s) on http://%s:%d", self.state.model_name, kind, host, port)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining:  # a second signal: uvicorn's own (immediate) exit
            self.force_exit = True
            super().handle_exit(sig, frame)
            return
        self._draining = True
        self.state.draining = True
        self.state.engine.drain()
        logger.info(
            "draining: new requests get 503; waiting up to %.0f s", self.state.settings.grace_period_s
        )
        threading.Thread(target=self._exit_when_done, daemon=True).start()

    def _exit_when_done(self) -> None:
        deadline = time.monotonic() + self.state.settings.grace_period_s
        while (self.state.in_flight or not self.state.engine.idle) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.should_exit = True  # not handle_exit: uvicorn would re-raise the signal and exit 143


def build_state(model_dir: Path, settings: ServeSettings) -> ServerState:
    """Load the model and start its worker (after a one-token warm-up)."""
    backend = load_backend(model_dir, settings)
    metrics = Metrics()
    engine = Engine(backend, settings, metrics)
    engine.start()
    name = settings.served_model_name or Path(model_dir).resolve().name
    saved = int(Path(model_dir, "config.json").stat().st_mtime)  # the checkpoint's, as OpenAI's "created"
    return ServerState(backend, engine, metrics, settings, name, saved)


def serve(model_dir: Path, settings: ServeSettings) -> None:
    check_exposure(settings)
    state = build_state(model_dir, settings)
    config = uvicorn.Config(
        build_app(state),
        host=settings.host,
        port=settings.port,
        log_level="warning",
        timeout_graceful_shutdown=5,
        limit_concurrency=settings.max_queue + 64,
    )
    _DrainingServer(config, state).run()
    state.engine.join(timeout=1)
