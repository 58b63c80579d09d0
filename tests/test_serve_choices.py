"""``graft serve``'s sampling parameters beyond one greedy answer: ``n`` choices, log-probabilities,
penalties and ``logit_bias``, checked against the model's own forward pass where they report it."""

from __future__ import annotations

import math

import torch

from graft.processing import GraftProcessor
from graft.serve.decoding import Sampling, next_tokens
from graft.templates import Message

import serve_fixtures
from serve_fixtures import client, raw_stream, user
from tiny import random_image

model_dir, server = serve_fixtures.model_dir, serve_fixtures.server  # shared by the serve tests


def create(url: str, messages: list, **kwargs):
    return client(url).chat.completions.create(model="tiny-vlm", messages=messages, **kwargs)


def test_n_choices_sample_with_seed_plus_index_and_count_the_prompt_once(server):
    url, _ = server
    messages = [user("What is in the image?", random_image(1))]
    many = create(url, messages, n=4, temperature=1.5, seed=7, max_tokens=10)
    assert [c.index for c in many.choices] == [0, 1, 2, 3]
    answers = [c.message.content for c in many.choices]
    alone = [
        create(url, messages, temperature=1.5, seed=7 + i, max_tokens=10).choices[0].message.content
        for i in range(4)
    ]
    assert answers == alone  # choice i is the answer seed + i gives alone
    assert len(set(answers)) > 1
    single = create(url, messages, temperature=1.5, seed=7, max_tokens=10)
    assert many.usage.prompt_tokens == single.usage.prompt_tokens
    assert 4 <= many.usage.completion_tokens <= 40
    assert many.usage.total_tokens == many.usage.prompt_tokens + many.usage.completion_tokens


def test_logprobs_are_the_models_own_distribution(server, model_dir):
    url, state = server
    image = random_image(2)
    reply = create(
        url, [user("Describe it.", image)], temperature=0, max_tokens=6, logprobs=True, top_logprobs=3
    )
    entries = reply.choices[0].logprobs.content
    assert 1 <= len(entries) <= 6
    assert "".join(e.token for e in entries).strip() == reply.choices[0].message.content
    for e in entries:
        assert bytes(e.bytes).decode("utf-8", errors="backslashreplace") == e.token
        assert len(e.top_logprobs) == 3 and e.top_logprobs[0].token == e.token  # greedy: the likeliest
        first, second, third = (t.logprob for t in e.top_logprobs)
        assert first == e.logprob >= second >= third

    # the first token's log-probability from the model's forward pass, computed here
    processor = GraftProcessor.from_pretrained(model_dir)
    sample = processor.encode([Message("user", "Describe it.<image>")], [image], add_generation_prompt=True)
    with torch.no_grad():
        logits = state.backend.model(
            input_ids=torch.tensor([sample.input_ids]), pixel_values=sample.pixel_values
        ).logits[0, -1]
    logits[processor.image_token_id] = float("-inf")
    expected = torch.log_softmax(logits.float(), dim=-1)
    first = int(expected.argmax())
    assert entries[0].token == processor.tokenizer.decode([first])
    assert math.isclose(entries[0].logprob, float(expected[first]), abs_tol=1e-4)

    plain = create(url, [user("Describe it.", image)], temperature=0, max_tokens=6)
    assert plain.choices[0].logprobs is None
    assert plain.choices[0].message.content == reply.choices[0].message.content


def test_streamed_choices_and_logprobs_equal_the_non_streamed(server):
    url, _ = server
    messages = [user("How many?", random_image(3))]
    settings = {"n": 2, "temperature": 1.2, "seed": 3, "max_tokens": 8, "logprobs": True}
    whole = create(url, messages, **settings)
    events = raw_stream(
        url,
        {"model": "tiny-vlm", "messages": messages, "stream": True, "stream_options": {"include_usage": True}}
        | settings,
    )
    assert events[-1] == "[DONE]" and events[-2]["usage"] == whole.usage.model_dump(exclude_none=True)
    text, tokens, finished = {0: "", 1: ""}, {0: [], 1: []}, {0: 0, 1: 0}
    for chunk in events[:-2]:
        (choice,) = chunk["choices"]
        text[choice["index"]] += choice["delta"].get("content") or ""
        tokens[choice["index"]] += (choice["logprobs"] or {}).get("content") or []
        finished[choice["index"]] += choice["finish_reason"] is not None
    assert finished == {0: 1, 1: 1}
    for c in whole.choices:
        assert text[c.index] == c.message.content
        assert [t["token"] for t in tokens[c.index]] == [t.token for t in c.logprobs.content]


def test_logit_bias_forces_and_bans_tokens(server):
    url, state = server
    messages = [user("Say something.", random_image(4))]
    tokenizer = state.backend.tokenizer
    forced = tokenizer.convert_tokens_to_ids("z")
    reply = create(url, messages, temperature=0, max_tokens=5, logit_bias={str(forced): 100})
    assert reply.choices[0].message.content == "zzzzz"
    plain = create(url, messages, temperature=0, max_tokens=5, logprobs=True)
    first = plain.choices[0].logprobs.content[0]
    banned_id = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(first.token))[0]
    banned = create(
        url, messages, temperature=0, max_tokens=5, logit_bias={str(banned_id): -100}, logprobs=True
    )
    assert banned.choices[0].logprobs.content[0].token != first.token


def test_penalties_follow_openais_formula():
    logits = torch.tensor([[0.0, 2.0, 1.5, 1.0]])
    greedy = Sampling(max_tokens=4)
    assert next_tokens(logits, [greedy], [None], [[1, 1]]) == [1]
    # token 1 was generated twice: 2.0 - 2 x 0.3 = 1.4 < 1.5
    assert next_tokens(logits, [Sampling(max_tokens=4, frequency_penalty=0.3)], [None], [[1, 1]]) == [2]
    # presence counts once: 2.0 - 0.4 = 1.6 > 1.5; then 2.0 - 0.6 = 1.4 < 1.5
    assert next_tokens(logits, [Sampling(max_tokens=4, presence_penalty=0.4)], [None], [[1, 1]]) == [1]
    assert next_tokens(logits, [Sampling(max_tokens=4, presence_penalty=0.6)], [None], [[1, 1]]) == [2]
    # a negative penalty encourages repetition
    assert next_tokens(logits, [Sampling(max_tokens=4, frequency_penalty=-1.5)], [None], [[3]]) == [3]
    assert torch.equal(logits, torch.tensor([[0.0, 2.0, 1.5, 1.0]]))  # the model's logits stay as they were
