"""``graft serve`` driven over HTTP as clients drive it: the openai client, raw SSE, bad input."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch

from graft.generate import generate_answers
from graft.processing import GraftProcessor
from graft.serve import backend
from graft.serve.settings import ServeSettings
from graft.templates import Message

import serve_fixtures
from serve_fixtures import (
    ask,
    client,
    data_url,
    raw_stream,
    running_server,
    save_sensitive_model,
    slowed,
    user,
)
from tiny import random_image

model_dir, server = serve_fixtures.model_dir, serve_fixtures.server  # shared by the serve tests


def test_models_lists_context_and_image_limits(server, model_dir):
    url, state = server
    (card,) = client(url).models.list().data
    assert card.id == "tiny-vlm"
    assert card.context_length == 512 and card.max_images_per_request == 8 and card.vision is True
    assert card.created == int((model_dir / "config.json").stat().st_mtime)  # when it was saved, not 0


def test_answer_equals_graft_generation_and_usage_counts_image_tokens(server, model_dir):
    url, state = server
    image = random_image(1)
    reply = client(url).chat.completions.create(
        model="tiny-vlm", messages=[user("Is there a red circle?", image)], temperature=0, max_tokens=12
    )
    processor = GraftProcessor.from_pretrained(model_dir)
    conv = [Message("user", "Is there a red circle?<image>")]
    expected = generate_answers(state.backend.model, processor, [conv], [[image]], max_new_tokens=12)[0]
    assert reply.choices[0].message.content == expected
    prompt = processor.encode(conv, [image], add_generation_prompt=True)
    assert reply.usage.prompt_tokens == len(prompt.input_ids) > processor.image_seq_length
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_stream_shape_and_equals_non_streamed(server):
    url, _ = server
    messages = [user("How many objects are there?", random_image(2))]
    body = {"model": "tiny-vlm", "messages": messages, "temperature": 0, "max_tokens": 16, "stream": True}
    events = raw_stream(url, body)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finals) == 1 and finals[0] is chunks[-1]  # no usage chunk unless asked
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == ask(url, messages, max_tokens=16)

    with_usage = raw_stream(url, {**body, "stream_options": {"include_usage": True}})
    assert with_usage[-2]["choices"] == [] and with_usage[-2]["usage"]["completion_tokens"] >= 1


def test_images_keep_their_order_across_parts_and_turns(server, model_dir):
    url, state = server
    a, b, c = random_image(3), random_image(4), random_image(5)
    first = {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": data_url(a)}},
            {"type": "text", "text": " left, right: "},
            {"type": "image_url", "image_url": {"url": data_url(b)}},
        ],
    }
    messages = [first, {"role": "assistant", "content": "Yes."}, user("And this one?", c)]
    served = ask(url, messages)
    processor = GraftProcessor.from_pretrained(model_dir)
    conv = [
        Message("user", "<image> left, right: <image>"),
        Message("assistant", "Yes."),
        Message("user", "And this one?<image>"),
    ]
    assert (
        served == generate_answers(state.backend.model, processor, [conv], [[a, b, c]], max_new_tokens=12)[0]
    )
    swapped = [
        {**first, "content": [first["content"][2], first["content"][1], first["content"][0]]}
    ] + messages[1:]
    assert ask(url, swapped) != served, "image order should change the answer"


def test_concurrent_requests_are_batched_and_equal_solo_answers(server):
    url, state = server
    requests = [
        [user(f"Is there a red circle? {i % 4}", random_image(10 + i % 8))]
        if i % 3
        else [user(f"Hi {i % 5}")]
        for i in range(32)
    ]
    solo = [ask(url, m, max_tokens=10) for m in requests[:12]]
    before = state.metrics.batch_size.collect()[0].samples

    def either(i: int) -> str:  # every other request streams
        if i % 2:
            return ask(url, requests[i], max_tokens=10)
        stream = raw_stream(
            url,
            {
                "model": "tiny-vlm",
                "messages": requests[i],
                "max_tokens": 10,
                "temperature": 0,
                "stream": True,
            },
        )
        return "".join(c["choices"][0]["delta"].get("content") or "" for c in stream[:-1] if c["choices"])

    with ThreadPoolExecutor(32) as pool:
        together = list(pool.map(either, range(32)))
    assert together[:12] == solo
    assert together[12:] == [together[i % 12] for i in range(12, 32)] or len(set(together)) > 3
    after = {s.name + str(s.labels): s.value for s in state.metrics.batch_size.collect()[0].samples}
    small = {s.name + str(s.labels): s.value for s in before}
    one = "graft_batch_size_bucket{'le': '1.0'}"
    grown = after["graft_batch_size_count{}"] - small["graft_batch_size_count{}"]
    singles = after[one] - small[one]
    assert grown > singles, "some steps should have decoded more than one row"


def test_same_image_reuses_cached_features(server):
    url, state = server
    image = random_image(30)
    ask(url, [user("What is this?", image)])
    hits = state.metrics.feature_cache_hits._value.get()
    ask(url, [user("And now?", image)])
    assert state.metrics.feature_cache_hits._value.get() == hits + 1
    text = httpx.get(f"{url}/metrics").text
    for name in (
        "graft_requests_total",
        "graft_queue_depth",
        "graft_batch_size_bucket",
        "graft_time_to_first_token_seconds",
        "graft_decode_tokens_per_second",
    ):
        assert name in text


def steps_after_leaving(state, steps: list[float], left: float) -> int:
    """The model steps that started after the client left, once the engine is idle."""
    deadline = time.monotonic() + 5
    while not state.engine.idle and time.monotonic() < deadline:
        time.sleep(0.01)
    assert state.engine.idle
    return sum(t > left for t in steps)


def test_cancelled_stream_frees_its_slot(model_dir):
    settings = ServeSettings(port=0, max_batch_size=1, max_queue=1, max_tokens_limit=400)
    with running_server(model_dir, settings) as (url, state):
        slowed(state)
        long = {"model": "tiny-vlm", "messages": [user("Hi")], "max_tokens": 400, "stream": True}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=long, timeout=30) as r:
            lines = r.iter_lines()  # held: a dropped iterator would close the connection
            next(lines)
            # the worker holds this row; one more waits in the queue; a third is refused
            queued = threading.Thread(target=ask, args=(url, [user("Hi")]), kwargs={"max_tokens": 2})
            queued.start()
            deadline = time.monotonic() + 20
            while state.engine.queue_depth() < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert state.engine.queue_depth() == 1, "the second request should be waiting in the queue"
            third = httpx.post(f"{url}/v1/chat/completions", json={**long, "stream": False, "max_tokens": 2})
            assert third.status_code == 503 and third.headers["Retry-After"] == "1"
            assert third.json()["error"]["code"] == "server_busy"
        queued.join(timeout=20)  # the cancelled row left: the queued request ran
        assert not queued.is_alive()
        deadline = time.monotonic() + 5
        while not state.engine.idle and time.monotonic() < deadline:
            time.sleep(0.02)
        assert state.engine.idle


def test_a_client_that_leaves_stops_its_row_within_one_step(model_dir):
    with running_server(model_dir, ServeSettings(port=0, max_tokens_limit=400)) as (url, state):
        steps = slowed(state)
        body = {
            "model": "tiny-vlm",
            "messages": [user("Hi")],
            "max_tokens": 400,
            "temperature": 0,
        }  # ~8 s of steps
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/chat/completions", json=body, timeout=0.5)
        assert steps_after_leaving(state, steps, time.monotonic()) <= 1

        with httpx.stream("POST", f"{url}/v1/chat/completions", json={**body, "stream": True}) as r:
            lines = r.iter_lines()
            next(lines)
            next(lines)
        assert steps_after_leaving(state, steps, time.monotonic()) <= 1


def save_text_model(directory):
    from tiny import tiny_llm, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = (
        "{% if messages[0]['role'] == 'assistant' %}{{ raise_exception('start with user') }}{% endif %}"
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    tokenizer.save_pretrained(directory)
    tiny_llm(len(tokenizer)).save_pretrained(directory)
    return directory


def test_a_plain_causal_lm_serves_text_and_refuses_images(tmp_path):
    with running_server(save_text_model(tmp_path / "judge"), ServeSettings(port=0)) as (url, _):
        (card,) = client(url).models.list().data
        assert card.vision is False and card.max_images_per_request == 0
        messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
        reply = client(url).chat.completions.create(
            model="judge", messages=messages, max_tokens=5, temperature=0
        )
        assert reply.usage.completion_tokens >= 1
        body = {"model": "judge", "messages": [user("What is it?", random_image(1))]}
        r = httpx.post(f"{url}/v1/chat/completions", json=body)
        assert r.status_code == 400 and r.json()["error"]["code"] == "images_not_supported"
        turns = [{"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Hi"}]
        r = httpx.post(f"{url}/v1/chat/completions", json={"model": "judge", "messages": turns})
        assert r.status_code == 400 and "start with user" in r.json()["error"]["message"]


QFORMER = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
INSTRUCT = {**QFORMER, "vocab_size": 64, "max_position_embeddings": 64}


@pytest.mark.parametrize(
    "connector,instruction",
    [
        (
            {"name": "vpgc", "vpg": {"name": "qformer", "num_query_tokens": 4, "qformer_config": QFORMER}},
            False,
        ),
        ({"name": "qformer_instruct", "num_query_tokens": 4, "qformer_config": INSTRUCT}, True),
    ],
    ids=["vpgc", "qformer_instruct"],
)
def test_connectors_that_read_the_prompt_serve_graft_answers(tmp_path, connector, instruction):
    from test_qformer import _tiny_instruction_tokenizer

    tokenizer = _tiny_instruction_tokenizer() if instruction else None
    model_dir = save_sensitive_model(tmp_path / "tiny-vlm", connector, tokenizer)
    prompts = [("Is there a red circle?", 40), ("How many objects are there?", 41), ("What is this?", 40)]
    with running_server(model_dir, ServeSettings(port=0)) as (url, state):
        with ThreadPoolExecutor(3) as pool:  # batched together
            served = list(pool.map(lambda q: ask(url, [user(q[0], random_image(q[1]))]), prompts))
        processor = GraftProcessor.from_pretrained(model_dir)
        convs = [[Message("user", f"{q}<image>")] for q, _ in prompts]
        images = [[random_image(seed)] for _, seed in prompts]
        expected = generate_answers(state.backend.model, processor, convs, images, max_new_tokens=12)
    assert served == expected
    assert len(set(served)) > 1, "answers should depend on the prompt"


def test_auto_dtype_is_bf16_only_on_a_gpu_that_computes_it_natively(monkeypatch):
    monkeypatch.setattr(backend, "native_bf16", lambda device: True)
    assert backend._dtype("auto", torch.device("cpu")) == torch.float32
    assert backend._dtype("auto", torch.device("cuda")) == torch.bfloat16
    monkeypatch.setattr(backend, "native_bf16", lambda device: False)
    assert backend._dtype("auto", torch.device("cuda")) == torch.float32
    assert backend._dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="--dtype"):
        backend._dtype("fp8", torch.device("cpu"))
