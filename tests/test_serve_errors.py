"""``graft serve`` refusing what it must: bad requests in OpenAI's error shape, limits, auth, CORS,
remote media, failures that show no internals; each time the next valid request still succeeds."""

from __future__ import annotations

import json
import threading

import httpx
import openai
import pytest

from graft.serve.settings import ServeSettings
from graft.templates import Message

import serve_fixtures
from serve_fixtures import ask, client, raw_stream, running_server, slowed, user
from tiny import random_image

model_dir = serve_fixtures.model_dir  # shared by the serve tests


@pytest.fixture(scope="module")
def server(model_dir):
    with running_server(model_dir, ServeSettings(port=0)) as (url, state):
        yield url, state


def body(content="x", role="user", **extra) -> dict:
    return {"model": "tiny-vlm", "messages": [{"role": role, "content": content}], **extra}


def image_body(url: str) -> dict:
    return body([{"type": "image_url", "image_url": {"url": url}}])


URL = "messages[0].content[0].image_url.url"
BAD = [
    # (body or raw bytes, status, code, param)
    (b"{not json", 400, "invalid_json", None),
    ([1, 2], 400, "invalid_json", None),
    (b"[" * 100_000 + b"]" * 100_000, 400, "invalid_json", None),
    ({**body(), "model": "other"}, 404, "model_not_found", "model"),
    ({"model": "tiny-vlm"}, 400, "invalid_value", "messages"),
    (body(tools=[{"type": "function"}]), 400, "unsupported_parameter", "tools"),
    (body(response_format={"type": "json_object"}), 400, "unsupported_parameter", "response_format"),
    (body(n=0), 400, "invalid_value", "n"),
    (body(n=99), 400, "invalid_value", "n"),
    (body(logprobs="yes"), 400, "invalid_value", "logprobs"),
    (body(top_logprobs=2), 400, "invalid_value", "top_logprobs"),
    (body(logprobs=True, top_logprobs=21), 400, "invalid_value", "top_logprobs"),
    (body(presence_penalty=2.5), 400, "invalid_value", "presence_penalty"),
    (body(frequency_penalty="high"), 400, "invalid_value", "frequency_penalty"),
    (body(logit_bias={"x": 1}), 400, "invalid_value", "logit_bias"),
    (body(logit_bias={"99999999": 1}), 400, "invalid_value", "logit_bias"),
    (body(logit_bias={"5": 101}), 400, "invalid_value", "logit_bias"),
    (body(logit_bias=[5]), 400, "invalid_value", "logit_bias"),
    (body(logit_bias={"\u00b2": 5}), 400, "invalid_value", "logit_bias"),  # "²".isdigit()
    (
        json.dumps(body()).replace("}]", '}], "logit_bias": {"5": NaN}', 1).encode(),
        400,
        "invalid_value",
        "logit_bias",
    ),
    (body(seed=2**64, temperature=1), 400, "invalid_value", "seed"),
    (body(seed=2**63 - 1, n=2, temperature=1), 400, "invalid_value", "seed"),  # seed + 1 for choice 1
    (
        json.dumps(body()).replace("}]", '}], "max_tokens": ' + "9" * 5000, 1).encode(),
        400,
        "invalid_json",
        None,
    ),
    (
        b'{"model": "tiny-vlm", "messages": [{"role": "user", "content": "hi \\ud800"}]}',
        400,
        "invalid_value",
        "messages[0].content[0].text",
    ),
    (json.dumps(body(stop="\ud800")).encode(), 400, "invalid_value", "stop"),
    (
        body(stream=True, stream_options={"include_usage": "no"}),
        400,
        "invalid_value",
        "stream_options.include_usage",
    ),
    (
        {"model": "tiny-vlm", "messages": [{"role": "user", "content": "x", "name": {"a": 1}}]},
        400,
        "invalid_value",
        "messages[0].name",
    ),
    (body(role="tool"), 400, "invalid_value", "messages[0].role"),
    (body("look <image> here"), 400, "image_token_in_text", "messages[0].content[0].text"),
    (body(max_tokens=0), 400, "invalid_value", "max_tokens"),
    (body(temperature=5), 400, "invalid_value", "temperature"),
    (body(role="assistant"), 400, "invalid_value", "messages[0].role"),
    (image_body("data:image/png;base64,!!!!"), 400, "invalid_image_url", URL),
    (image_body("http://example.com/cat.png"), 400, "remote_media_disabled", URL),
    (image_body("file:///etc/passwd"), 400, "local_media_disabled", URL),
    (body("x " * 600), 400, "context_length_exceeded", "messages"),
    (body(max_tokens=500), 400, "context_length_exceeded", "messages"),
]


@pytest.mark.parametrize("bad,status,code,param", BAD)
def test_bad_requests_get_openai_errors_and_the_server_goes_on(server, bad, status, code, param):
    url, _ = server
    kwargs = {"content": bad} if isinstance(bad, bytes) else {"json": bad}
    r = httpx.post(f"{url}/v1/chat/completions", timeout=30, **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and error["param"] == param and error["message"]
    assert error["type"] == "invalid_request_error"
    assert ask(url, [user("Hi")], max_tokens=2) is not None


def test_too_many_images_and_oversized_images(server):
    url, _ = server
    nine = [user("Many", *[random_image(i) for i in range(9)])]
    r = httpx.post(f"{url}/v1/chat/completions", json={"model": "tiny-vlm", "messages": nine}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "too_many_images"
    from PIL import Image

    huge = Image.new("1", (20000, 20000))  # a few KB as PNG, 400 Mpixels decoded
    r = httpx.post(
        f"{url}/v1/chat/completions", json={"model": "tiny-vlm", "messages": [user("Big", huge)]}, timeout=30
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "image_too_large"


def test_body_limit_unknown_routes_and_methods(model_dir):
    settings = ServeSettings(port=0, max_body_bytes=2048)
    with running_server(model_dir, settings) as (url, _):
        big = {"model": "tiny-vlm", "messages": [{"role": "user", "content": "x" * 4096}]}
        r = httpx.post(f"{url}/v1/chat/completions", json=big)
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

        def chunks():
            yield b'{"model": "tiny-vlm", "messages": [{"role": "user", "content": "'
            yield b"x" * 4096
            yield b'"}]}'

        r = httpx.post(f"{url}/v1/chat/completions", content=chunks())  # chunked: no Content-Length
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        r = httpx.get(f"{url}/v1/completions")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        r = httpx.get(f"{url}/v1/chat/completions")
        assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_api_key_guards_every_route_but_the_page(model_dir):
    with running_server(model_dir, ServeSettings(port=0, api_key="s3cret")) as (url, _):
        body = {"model": "tiny-vlm", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
        for method, path in [
            ("GET", "/v1/models"),
            ("GET", "/health"),
            ("GET", "/metrics"),
            ("POST", "/v1/chat/completions"),
            ("GET", "/nowhere"),
        ]:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
                r = httpx.request(method, url + path, json=body, headers=headers)
                assert r.status_code == 401, (path, headers)
                assert r.json()["error"]["code"] == "invalid_api_key"
                assert r.json()["error"]["type"] == "authentication_error"
        assert httpx.get(url + "/").status_code == 200
        good = {"Authorization": "Bearer s3cret"}
        for path in ("/v1/models", "/health", "/metrics"):
            assert httpx.get(url + path, headers=good).status_code == 200
        assert client(url, "s3cret").chat.completions.create(**body).choices[0].message.content is not None
        with pytest.raises(openai.AuthenticationError):
            client(url, "wrong").models.list()


def test_remote_media_when_enabled_refuses_private_addresses(model_dir):
    import http.server

    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        from graft.serve.settings import MediaPolicy

        settings = ServeSettings(port=0, media=MediaPolicy(allow_remote=True))
        with running_server(model_dir, settings) as (url, _):
            for target in (
                f"http://127.0.0.1:{server.server_port}/x.png",
                f"http://localhost:{server.server_port}/",
            ):
                body = {
                    "model": "tiny-vlm",
                    "messages": [
                        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": target}}]}
                    ],
                }
                r = httpx.post(f"{url}/v1/chat/completions", json=body)
                assert r.status_code == 400 and r.json()["error"]["code"] == "media_forbidden", r.text
    finally:
        server.shutdown()


def test_a_prompt_that_fills_the_context_is_refused_without_max_tokens(model_dir):
    with running_server(model_dir, ServeSettings(port=0)) as (url, state):
        prompt = len(state.backend.encode([Message("user", "x")], [], []).input_ids)
        state.backend.context_length = lambda: prompt  # no room left for one answer token
        r = httpx.post(f"{url}/v1/chat/completions", json=body("x"))
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text


def test_a_request_that_fails_to_join_fails_alone(model_dir):
    with running_server(model_dir, ServeSettings(port=0, max_tokens_limit=400)) as (url, state):
        slowed(state)
        prefill, engine = state.engine._prefill, state.engine

        def failing(prompts):  # the prefill of a request that says BOOM fails
            if any("BOOM" in state.backend.tokenizer.decode(p.input_ids) for p in prompts):
                raise RuntimeError("boom")
            return prefill(prompts)

        engine._prefill = failing
        long = {**body("Hi"), "stream": True, "max_tokens": 60, "temperature": 0}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=long, timeout=60) as r:
            lines = r.iter_lines()
            next(lines)  # the long answer is decoding
            bad = httpx.post(f"{url}/v1/chat/completions", json=body("BOOM"), timeout=30)
            assert bad.status_code == 500 and bad.json()["error"]["code"] == "internal_error"
            rest = [line for line in lines if line.startswith("data: ")]
        assert rest[-1] == "data: [DONE]" and "error" not in "".join(rest)  # the long one went on


def test_failures_are_shaped_logged_without_prompts_and_health_follows_the_worker(model_dir, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="graft.serve")
    with running_server(model_dir, ServeSettings(port=0)) as (url, state):
        encode = state.backend.encode
        state.backend.encode = lambda *a: (_ for _ in ()).throw(RuntimeError("secret internals"))
        r = httpx.post(f"{url}/v1/chat/completions", json=body("a private question"))
        assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
        assert r.headers["x-request-id"] in r.json()["error"]["message"]
        assert "secret internals" not in r.text and "Traceback" not in r.text
        state.backend.encode = encode

        forward, calls = state.backend.forward, []

        def failing(inputs):  # the prefill works, the third decode step fails
            calls.append(1)
            if len(calls) == 4:
                raise RuntimeError("boom")
            return forward(inputs)

        state.backend.forward = failing
        events = raw_stream(url, {**body("Hi"), "stream": True, "max_tokens": 20})
        assert events[-1] == "[DONE]" and events[-2]["error"]["code"] == "internal_error"
        state.backend.forward = forward
        assert ask(url, [user("Hi")], max_tokens=2) is not None  # the worker survived

        assert "a private question" not in caplog.text and "Hi" not in caplog.text.replace("Hi", "", 0)
        assert httpx.get(f"{url}/health").status_code == 200
        state.engine.drain()
        state.engine.join(timeout=5)
        r = httpx.get(f"{url}/health")
        assert r.status_code == 503 and r.json()["error"]["code"] == "worker_down"


def test_cors_is_off_unless_origins_are_given(server, model_dir):
    url, _ = server
    origin = {"Origin": "http://evil.example"}
    assert "access-control-allow-origin" not in httpx.get(f"{url}/v1/models", headers=origin).headers
    with running_server(model_dir, ServeSettings(port=0, cors_origins=("http://app.example",))) as (url2, _):
        allowed = httpx.get(f"{url2}/v1/models", headers={"Origin": "http://app.example"})
        assert allowed.headers["access-control-allow-origin"] == "http://app.example"
        assert "access-control-allow-origin" not in httpx.get(f"{url2}/v1/models", headers=origin).headers
