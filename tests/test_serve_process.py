"""``graft serve`` as a process: ready after warm-up, SIGTERM drains in-flight requests, exit 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx

from asgi_thread import free_port
from serve_fixtures import save_sensitive_model


def test_sigterm_finishes_in_flight_requests_refuses_new_ones_and_exits_0(tmp_path):
    model = save_sensitive_model(tmp_path / "tiny-vlm")
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "graft.cli",
        "serve",
        str(model),
        "--port",
        str(port),
        "--grace-period",
        "30",
    ]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.2)
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
