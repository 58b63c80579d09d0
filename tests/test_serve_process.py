"""``graft serve`` as a process: ready after warm-up, SIGTERM drains in-flight requests, exit 0."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx

from asgi_thread import free_port
from serve_fixtures import save_sensitive_model


def _start(model, port: int, grace_s: int) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "graft.cli",
        "serve",
        str(model),
        "--port",
        str(port),
        "--grace-period",
        str(grace_s),
    ]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ
    )
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, proc.stdout.read()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the server did not become ready"
        time.sleep(0.2)


def test_sigterm_finishes_in_flight_requests_refuses_new_ones_and_exits_0(tmp_path):
    model = save_sensitive_model(tmp_path / "tiny-vlm")
    port = free_port()
    proc = _start(model, port, grace_s=30)
    url = f"http://127.0.0.1:{port}"
    try:
        body = {
            "model": "tiny-vlm",
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 420,
            "temperature": 0,
        }
        with httpx.stream(
            "POST", f"{url}/v1/chat/completions", json={**body, "stream": True}, timeout=60
        ) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")
            proc.send_signal(signal.SIGTERM)
            refused = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=10)
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "server_shutting_down"
            events = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        assert json.loads(events[-2])["choices"][0]["finish_reason"] == "length"
        assert proc.wait(timeout=30) == 0
        assert "ready: tiny-vlm" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_client_stalled_halfway_through_its_body_does_not_hold_sigterm_for_the_grace_period(tmp_path):
    model = save_sensitive_model(tmp_path / "tiny-vlm")
    port = free_port()
    proc = _start(model, port, grace_s=60)
    try:
        with socket.create_connection(("127.0.0.1", port)) as stalled:
            stalled.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 400\r\n\r\n" + b'{"model": "tiny-vlm", "mess'
            )
            time.sleep(0.5)  # the server has read what came
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0  # uvicorn's own 5 s close, not the 60 s drain
            assert time.monotonic() - started < 15
    finally:
        if proc.poll() is None:
            proc.kill()
