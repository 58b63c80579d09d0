"""A scripted chat-completions server on 127.0.0.1 for judge tests; it stops by itself.

The reply depends on the model answer in the request (the text between "[Assistant 2]" and
"[End of Assistant 2]", or the whole user message when there is none):
  "score=N"  -> "8 N" and an explanation (the reference gets 8)
  "GARBAGE"  -> a reply without scores
  "FLAKY"    -> HTTP 500 the first time a request is seen, then as "score=N"
  "DOWN"     -> HTTP 500 always
  "PICKn"    -> the n-th capital letter (for the multiple-choice fallback)
Every request is counted per content in ``server.seen``.
"""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # noqa: ANN002 (keep test output quiet)
        pass

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        length = int(self.headers.get("Content-Length", 0))
        request = json.loads(self.rfile.read(length))
        if not self.path.endswith("/chat/completions"):
            self._send(404, {"error": {"message": f"no route {self.path}"}})
            return
        user = request["messages"][-1]["content"]
        m = re.search(r"\[Assistant 2\]\n(.*?)\n\n\[End of Assistant 2\]", user, re.S)
        answer = m.group(1) if m else user
        server: JudgeServer = self.server  # type: ignore[assignment]
        with server.lock:
            server.seen[user] += 1
            times = server.seen[user]
        if "DOWN" in answer or ("FLAKY" in answer and times == 1):
            self._send(500, {"error": {"message": "scripted failure"}})
            return
        if "GARBAGE" in answer:
            content = "I would rather not give numbers."
        elif pick := re.search(r"PICK(\d)", answer):
            content = chr(64 + int(pick.group(1)))
        else:
            n = re.search(r"score=(\d+)", answer)
            content = f"8 {n.group(1) if n else 5}\nAssistant 1 is more detailed."
        self._send(
            200,
            {
                "id": "chatcmpl-test",
                "object": "chat.completion",
                "created": 0,
                "model": request.get("model", "test"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            },
        )


class JudgeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, lifetime: float = 60.0) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.seen: Counter[str] = Counter()
        self.lock = threading.Lock()
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        # bounded: whatever the test does, the server goes away after ``lifetime`` seconds
        self._timer = threading.Timer(lifetime, self.shutdown)
        self._timer.daemon = True

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def __enter__(self) -> JudgeServer:
        self._thread.start()
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)
