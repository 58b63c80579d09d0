"""graft gen-data against the fake server: answer validation and its rejection counts, retries and
backoff, request-rate and concurrency limits, and asking again after a malformed answer."""

from __future__ import annotations

import asyncio
import json
import time

from graft.data.records import parse_record
from graft.instruct.gen_cache import request_key
from graft.instruct.gen_client import TokenBucket
from graft.instruct.gen_run import generate

import gen_data_fixtures
from fake_gen_server import FakeGenServer
from gen_data_fixtures import _settings

server = gen_data_fixtures.server  # the fake endpoint, a fixture shared by the gen-data tests

# ---- validation and the client, against the fake server ----


def test_every_rejection_reason_is_counted_and_records_are_valid(tmp_path, server):
    markers = [
        "",
        "NOUSAGE",
        "DUPQ",
        "LEAK",
        "COORDS",
        "SHORTQ",
        "SHORTA",
        "LONGA",
        "EMPTY",
        "MALFORMED",
        "TRUNCATE",
    ]
    s = _settings(
        tmp_path, server.url, markers, format_retries=1, types=("conversation", "detail"), max_reject_rate=1.0
    )
    report = generate(s)
    rejections = {"leak": 3, "question_too_short": 1, "answer_too_short": 2, "answer_too_long": 1}
    rejections |= {"empty": 4, "malformed": 2, "truncated": 4}  # format retries: asked twice each
    assert report["rejections"] == rejections
    assert report["dropped_duplicate_questions"] == 1 and report["usage_estimated"] == 2
    ok_conv = {"c000", "c001", "c002"}
    ok_detail = ok_conv | {"c004", "c005", "c007", "c009"}  # no Q/A markers bite a description
    assert report["records"] == {"conversation": len(ok_conv), "detail": len(ok_detail), "all": 10}
    assert report["acceptance_rate"] == round(10 / report["answers"], 4)
    merged = json.loads((s.out / "llava_instruct.json").read_text())
    conv = json.loads((s.out / "conversation.json").read_text())
    detail = json.loads((s.out / "detail.json").read_text())
    assert {r["id"] for r in conv} == {f"{i}-conversation" for i in ok_conv}
    assert {r["id"] for r in detail} == {f"{i}-detail" for i in ok_detail}
    assert len(merged) == 10 and {r["id"] for r in merged} == {r["id"] for r in conv + detail}
    sides = set()
    for record in merged:
        parse_record(record, "test")
        turns = record["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        assert sum(t["value"].count("<image>") for t in turns) == 1 and "<image>" in turns[0]["value"]
        sides.add(turns[0]["value"].startswith("<image>"))
    assert sides == {True, False}  # the marker goes on either side, seeded
    dup = next(r for r in conv if r["id"] == "c002-conversation")
    questions = [t["value"].replace("<image>", "").strip() for t in dup["conversations"][::2]]
    assert len(questions) == len(set(questions)) == 2
    on_disk = json.loads((s.out / "report.json").read_text())
    assert on_disk["rejections"] == rejections and on_disk["latency_s"]["p50"] is not None


def _by_marker(server: FakeGenServer) -> dict[str, list]:
    out: dict[str, list] = {}
    for seen in server.seen:
        if seen.body:  # the marker ends the first caption: "... scene 3. MARKER\nTwo shapes."
            out.setdefault(seen.body["messages"][-1]["content"].split()[-3], []).append(seen)
    return out


def test_retries_back_off_and_fail_for_good(tmp_path, server):
    s = _settings(tmp_path, server.url, ["", "E500", "DOWN500", "BAD400"], max_retries=2)
    report = generate(s)
    assert report["retries"] == 1 + 2 and report["failures"] == 2 and report["pending"] == 2
    seen = _by_marker(server)
    e500 = seen["E500"]
    assert [x.status for x in e500] == [500, 200] and e500[1].time - e500[0].time < 0.5  # backoff 0.01 s
    assert [x.status for x in seen["DOWN500"]] == [500] * 3  # 1 + max_retries
    assert [x.status for x in seen["BAD400"]] == [400]  # a 400 is not retried
    failures = [json.loads(line) for line in (s.out / "failures.jsonl").read_text().splitlines()]
    assert {f["id"] for f in failures} == {"c002", "c003"} and any(
        "InternalServerError" in f["error"] for f in failures
    )
    cached = [json.loads(line) for line in (s.out / "cache.jsonl").read_text().splitlines()]
    assert {c["id"] for c in cached} == {"c000", "c001"}  # failures are never cached
    server.reset()
    assert generate(s)["requests_sent"] == 3 + 1  # a rerun asks the failed ones again


def test_retries_honour_retry_after(tmp_path, server):
    s = _settings(tmp_path, server.url, ["R429", "E503", ""], concurrency=1)
    report = generate(s)
    assert report["retries"] == 2 and report["failures"] == 0
    seen = _by_marker(server)
    r429, r503 = seen["R429"], seen["E503"]
    assert [x.status for x in r429] == [429, 200] and r429[1].time - r429[0].time >= 1.0  # Retry-After: 1
    assert [x.status for x in r503] == [503, 200] and r503[1].time - r503[0].time >= 0.3  # retry-after-ms


def test_request_rate_limit(tmp_path, server):
    s = _settings(tmp_path, server.url, [""] * 10, rpm=240, concurrency=4)  # 4 a second, bucket of 4
    generate(s)
    times = sorted(x.time for x in server.seen if x.body)
    assert len(times) == 10
    assert times[-1] - times[0] >= (10 - 4) / 4 - 0.1
    for t in times:  # any half second holds at most the bucket plus half a second's refill
        assert sum(t <= u < t + 0.5 for u in times) <= 6


def test_token_bucket_waits_and_takes_refunds():
    async def go() -> list[float]:
        bucket = TokenBucket(per_minute=600, burst_s=1.0)  # 10 a second, holds 10
        start = time.monotonic()
        await bucket.take(10)
        t0 = time.monotonic() - start
        await bucket.take(4)  # waits for 0.4 s of refill
        t1 = time.monotonic() - start
        bucket.adjust(4)  # the request cost less than charged: given back
        await bucket.take(4)
        return [t0, t1, time.monotonic() - start - t1]

    t0, t1, t2 = asyncio.run(go())
    assert t0 < 0.05 and 0.35 <= t1 < 0.6 and t2 < 0.05


def test_concurrency_limit(tmp_path, server):
    server.delay_s = 0.15
    generate(_settings(tmp_path, server.url, [""] * 8, concurrency=3))
    assert server.max_in_flight == 3


def test_malformed_answer_is_asked_again_with_another_request(tmp_path, server):
    s = _settings(tmp_path, server.url, ["MALFORMED_ONCE"])
    report = generate(s)
    first, second = server.chat_bodies()
    assert first["messages"] == second["messages"]
    assert (first["seed"], second["seed"]) == (0, 1) and second["temperature"] > first["temperature"]
    keys = [json.loads(line)["key"] for line in (s.out / "cache.jsonl").read_text().splitlines()]
    assert keys == [request_key(first), request_key(second)] and keys[0] != keys[1]
    assert report["rejections"] == {"malformed": 1} and report["records"]["conversation"] == 1
    server.reset()
    again = generate(s)  # the whole chain replays from the cache
    assert server.seen == [] and again["cache_hits"] == 2 and again["records"]["conversation"] == 1
