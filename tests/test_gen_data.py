"""graft gen-data: LLaVA-style instruction data through an OpenAI-compatible endpoint, against a fake
server (tests/fake_gen_server.py): prompts, contexts, validation, client limits, cache and resume."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

import graft.cli.gen_data  # noqa: F401  (registers the verb)
from graft.cli.app import app
from graft.data.records import parse_record
from graft.instruct.gen_cache import RunLock, request_key
from graft.instruct.gen_client import TokenBucket
from graft.instruct.gen_contexts import load_contexts
from graft.instruct.gen_prompts import WITH_BOXES, builtin_prompts_root, load_prompts
from graft.instruct.gen_run import generate, plan_jobs
from graft.instruct.gen_settings import RESPONSE_TYPES, GenError, GenSettings
from graft.instruct.gen_validate import parse_qa

from fake_gen_server import FakeGenServer, free_port_url, serve_in_thread

REPO = Path(__file__).resolve().parents[1]


def _row(i: int, marker: str = "") -> dict:
    caption = f"A red circle and a blue square, scene {i}. {marker}".strip()
    boxes = [
        {"category": "red circle", "bbox": [0.1, 0.2, 0.3, 0.4]},
        {"category": "blue square", "bbox": [0.6, 0.55, 0.85, 0.8]},
    ]
    return {
        "id": f"c{i:03d}",
        "image": f"images/{i}.png",
        "captions": [caption, "Two shapes."],
        "boxes": boxes,
    }


def _contexts(tmp_path: Path, markers: list[str], name: str = "contexts.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(_row(i, m)) + "\n" for i, m in enumerate(markers)))
    return path


def _settings(tmp_path: Path, url: str, markers: list[str], **kw) -> GenSettings:
    base = dict(model="fake-gen", base_url=url, backoff_s=0.01, types=("conversation",))
    return GenSettings(contexts=_contexts(tmp_path, markers), out=tmp_path / "out", **(base | kw))


def _cli(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, ["gen-data", *args], env=env)


@pytest.fixture
def server():
    fake = FakeGenServer()
    with serve_in_thread(fake) as url:
        fake.url = url
        yield fake


# ---- prompts and contexts ----


def test_messages_are_system_then_few_shot_pairs_then_the_context(tmp_path):
    ctx = load_contexts(_contexts(tmp_path, ["x"])).contexts[0]
    for t, prompts in load_prompts(RESPONSE_TYPES).items():
        folder = builtin_prompts_root() / t
        assert len(prompts.examples) >= 2
        messages = prompts.messages(ctx)
        k = len(prompts.examples)
        assert [m["role"] for m in messages] == ["system"] + ["user", "assistant"] * k + ["user"]
        assert messages[0]["content"] == (folder / "system_message.txt").read_text().strip()
        assert messages[1]["content"] == (folder / "000_caps.txt").read_text().strip()
        assert messages[2]["content"] == (folder / "000_conv.txt").read_text().strip()
        last = messages[-1]["content"]
        assert last.startswith("A red circle and a blue square, scene 0. x\nTwo shapes.")
        # conversation sees the captions only; detail and complex reasoning the boxes too
        assert ("red circle: [0.100, 0.200, 0.300, 0.400]" in last) == WITH_BOXES[t]
        assert ("blue square: [0.600, 0.550, 0.850, 0.800]" in last) == WITH_BOXES[t]


def test_own_prompts_folder_and_its_errors(tmp_path):
    root = tmp_path / "prompts" / "conversation"
    root.mkdir(parents=True)
    (root / "system_message.txt").write_text("Be brief.")
    (root / "000_caps.txt").write_text("caps zero")
    (root / "000_conv.txt").write_text("Question: a?\nAnswer: b")
    prompts = load_prompts(("conversation",), tmp_path / "prompts")["conversation"]
    assert prompts.system == "Be brief." and prompts.examples == (("caps zero", "Question: a?\nAnswer: b"),)
    (root / "001_caps.txt").write_text("caps one")
    with pytest.raises(GenError, match=r"conversation/001_conv\.txt: missing"):
        load_prompts(("conversation",), tmp_path / "prompts")
    (root / "system_message.txt").unlink()
    with pytest.raises(GenError, match=r"conversation/system_message\.txt: missing"):
        load_prompts(("conversation",), tmp_path / "prompts")
    with pytest.raises(GenError, match="missing prompt folder for response type 'detail'"):
        load_prompts(("detail",), tmp_path / "prompts")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda r: r.update(captions=[]), r":2 \(id 'c001'\): field 'captions' is missing or empty"),
        (
            lambda r: r["boxes"][1].update(bbox=[0.5, 0.5, 1.2, 0.9]),
            r":2 .*field boxes\[1\]\.bbox .* outside 0\.\.1",
        ),
        (
            lambda r: r["boxes"][0].update(bbox=[0.5, 0.5, 0.2, 0.9]),
            r":2 .*field boxes\[0\]\.bbox .* x1 > x2",
        ),
        (lambda r: r.pop("image"), r":2 .*field 'image'"),
    ],
)
def test_bad_context_names_file_line_and_field(tmp_path, change, expected):
    rows = [_row(0), _row(1), _row(2)]
    change(rows[1])
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(GenError, match=f"c.jsonl{expected}"):
        load_contexts(path)
    loaded = load_contexts(path, skip_bad=True)
    assert [c.id for c in loaded.contexts] == ["c000", "c002"] and sum(loaded.skipped.values()) == 1


def test_bad_contexts_through_the_cli(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps(_row(0)) + "\n{not json\n" + json.dumps(_row(1) | {"captions": []}) + "\n")
    result = _cli("--contexts", str(path), "--out", str(tmp_path / "o"), "--model", "m", "--dry-run")
    assert result.exit_code == 2 and "c.jsonl:2: not valid JSON" in result.output
    result = _cli(
        "--contexts", str(path), "--out", str(tmp_path / "o"), "--model", "m", "--dry-run", "--skip-bad"
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index('{\n  "dry_run"') :])
    assert report["contexts"] == 1 and report["bad_contexts"] == {"malformed_json": 1, "no_captions": 1}


def test_parse_qa_tolerates_markdown_numbering_and_separators():
    text = (
        "Here is the conversation.\n\n**Question 1:** What color is it?\n**Answer 1:** It is red.\n\n"
        "2. Q: How many\nshapes are there?\nA: There are two.\n===\n### Question: left dangling"
    )
    assert parse_qa(text) == [
        ("What color is it?", "It is red."),
        ("How many\nshapes are there?", "There are two."),
    ]


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


def test_rerun_is_all_cache_hits_and_the_same_output(tmp_path, server, monkeypatch):
    monkeypatch.setenv("GRAFT_GEN_BASE_URL", server.url)
    monkeypatch.setenv("GRAFT_GEN_MODEL", "fake-gen")
    ctx = _contexts(tmp_path, [""] * 4)
    out = tmp_path / "out"
    result = _cli("--contexts", str(ctx), "--out", str(out))
    assert result.exit_code == 0, result.output
    first = (out / "llava_instruct.json").read_bytes()
    assert len(json.loads(first)) == 12 and len(server.chat_bodies()) == 12
    server.reset()
    result = _cli("--contexts", str(ctx), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert server.seen == []  # not even the endpoint check: nothing was left to ask
    report = json.loads((out / "report.json").read_text())
    assert report["requests_sent"] == 0 and report["cache_hits"] == 12
    assert (out / "llava_instruct.json").read_bytes() == first


def test_dry_run_sends_nothing_and_estimates_cost(tmp_path, server):
    s = _settings(
        tmp_path, server.url, [""] * 5, types=RESPONSE_TYPES, price_in=2.0, price_out=8.0, dry_run=True
    )
    report = generate(s)
    assert server.seen == [] and not s.out.exists()
    assert report["requests_to_send"] == 15 and report["requests_sent"] == 0
    jobs = plan_jobs(replace(s, dry_run=False)).jobs
    chars = sum(len(m["content"]) for job in jobs for m in job.messages)
    n = sum(len(job.messages) for job in jobs)
    assert abs(report["tokens_in_estimate"] - chars / 4 - 4 * n) <= n  # chars / 4 and 4 a message
    assert report["tokens_out_at_most"] == 15 * s.max_tokens
    expected = (report["tokens_in_estimate"] * 2.0 + report["tokens_out_at_most"] * 8.0) / 1e6
    assert report["cost_at_most"] == pytest.approx(expected, abs=1e-6)


def test_max_cost_stops_cleanly_and_a_rerun_goes_on(tmp_path, server):
    s = _settings(
        tmp_path, server.url, [""] * 6, concurrency=1, max_tokens=100, price_in=1000.0, price_out=1000.0
    )
    one = plan_jobs(s).jobs[0]
    per_request = s.cost(sum(len(m["content"]) // 4 + 4 for m in one.messages), 100)
    report = generate(replace(s, max_cost=per_request * 2.5))
    assert report["stopped"] and "--max-cost" in report["stopped"]
    assert 1 <= report["requests_sent"] <= 3 and report["pending"] == 6 - report["requests_sent"]
    assert report["cost"] <= per_request * 2.5
    assert len(json.loads((s.out / "conversation.json").read_text())) == report["requests_sent"]
    sent = report["requests_sent"]
    server.reset()
    report = generate(s)
    assert report["stopped"] is None and report["requests_sent"] == 6 - sent and report["cache_hits"] == sent
    assert len(json.loads((s.out / "conversation.json").read_text())) == 6


def test_rejection_rate_stops_the_run(tmp_path, server):
    s = _settings(tmp_path, server.url, ["MALFORMED"] * 15, concurrency=1, format_retries=1)
    result = _cli(
        "--contexts", str(s.contexts), "--out", str(s.out), "--model", "fake-gen", "--base-url", server.url,
        "--types", "conversation", "--concurrency", "1", "--format-retries", "1",
    )  # fmt: skip
    assert result.exit_code == 3 and "--max-reject-rate" in result.output
    report = json.loads((s.out / "report.json").read_text())
    assert report["answers"] == 20 and report["stopped"] and report["pending"] == 5
    assert json.loads((s.out / "conversation.json").read_text()) == []


@pytest.mark.parametrize("case", ["down", "key", "model"])
def test_endpoint_problems_stop_before_any_work(tmp_path, case):
    fake = FakeGenServer(api_key="right")
    with serve_in_thread(fake) as url:
        ctx = _contexts(tmp_path, [""])
        args = {"down": (free_port_url(), "right", "fake-gen"), "key": (url, "wrong", "fake-gen")}
        base, key, model = args.get(case, (url, "right", "gpt-unknown"))
        out = tmp_path / "out"
        result = _cli(
            "--contexts", str(ctx), "--out", str(out), "--base-url", base, "--api-key", key, "--model", model
        )
    expected = {
        "down": "cannot reach the endpoint",
        "key": "refused the API key (401)",
        "model": "not served by",
    }
    assert result.exit_code == 2 and expected[case] in result.output, result.output
    assert fake.chat_bodies() == [] and not (out / "cache.jsonl").exists()
    if case == "model":
        assert "it serves: fake-gen" in result.output


def test_kill_9_mid_run_then_rerun_sends_exactly_the_missing_requests(tmp_path, server):
    server.delay_s = 0.25
    s = _settings(tmp_path, server.url, [""] * 10, concurrency=1)
    all_keys = {request_key(job.request(s)) for job in plan_jobs(s).jobs}
    code = "import graft.cli.gen_data; from graft.cli.app import app; app()"
    args = [
        "--contexts",
        str(s.contexts),
        "--out",
        str(s.out),
        "--types",
        "conversation",
        "--concurrency",
        "1",
    ]
    env = os.environ | {"GRAFT_GEN_BASE_URL": server.url, "GRAFT_GEN_MODEL": "fake-gen", "TQDM_DISABLE": "1"}
    proc = subprocess.Popen([sys.executable, "-c", code, "gen-data", *args], env=env, cwd=REPO)
    cache = s.out / "cache.jsonl"
    try:
        deadline = time.monotonic() + 60
        while not (cache.exists() and cache.read_text().count("\n") >= 3):
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended or stalled"
            time.sleep(0.05)
        # a second run on the same folder, meanwhile, is refused at once
        with pytest.raises(GenError, match="in use by another `graft gen-data` run"):
            generate(s)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    with cache.open("a") as f:  # as if the kill had landed mid-write
        f.write('{"key": "torn-by-the-kill", "content": "Quest')
    cached = {json.loads(line)["key"] for line in cache.read_text().splitlines()[:-1]}
    assert 3 <= len(cached) < 10 and cached <= all_keys
    server.delay_s = 0.0
    server.reset()
    report = generate(s)
    resent = [request_key(body) for body in server.chat_bodies()]
    assert sorted(resent) == sorted(all_keys - cached)  # each missing one once, nothing else
    assert report["requests_sent"] == len(resent) and report["cache_hits"] == len(cached)
    text = cache.read_text()
    lines = [json.loads(line) for line in text.splitlines()]  # no torn line left
    assert text.endswith("\n") and len(lines) == 10 and {e["key"] for e in lines} == all_keys
    records = json.loads((s.out / "conversation.json").read_text())
    assert len(records) == 10 and len({r["id"] for r in records}) == 10
    assert (
        Counter(r["id"] for r in json.loads((s.out / "llava_instruct.json").read_text())).most_common(1)[0][1]
        == 1
    )


def test_lock_refuses_a_second_run(tmp_path, server):
    s = _settings(tmp_path, server.url, [""])
    with RunLock(s.out):
        result = _cli(
            "--contexts", str(s.contexts), "--out", str(s.out), "--model", "m", "--base-url", server.url
        )
    assert result.exit_code == 2 and "in use by another `graft gen-data` run (pid" in result.output
    assert server.seen == []


def test_world_writes_a_valid_contexts_file(tmp_path):
    from graft.world import build_world
    from graft.world.describe import boxes, captions
    from graft.world.scene import Scene

    manifest = build_world(tmp_path / "w", num_images=12, seed=1)
    loaded = load_contexts(tmp_path / "w" / "contexts.jsonl")
    assert len(loaded.contexts) == manifest["splits"]["train"]
    meta = [json.loads(line) for line in (tmp_path / "w" / "meta" / "train.jsonl").read_text().splitlines()]
    for ctx, row in zip(loaded.contexts, meta, strict=True):
        scene = Scene.from_dict(row["scene"])
        assert (ctx.id, ctx.image) == (row["id"], row["image"]) and (tmp_path / "w" / ctx.image).is_file()
        assert list(ctx.captions) == captions(scene)
        assert [(b.category, list(b.bbox)) for b in ctx.boxes] == boxes(scene)
        for obj, box in zip(scene.objects, ctx.boxes, strict=True):
            assert box.bbox == pytest.approx(
                (obj.x - obj.half, obj.y - obj.half, obj.x + obj.half, obj.y + obj.half), abs=6e-4
            )
    # and gen-data takes it as is
    report = generate(
        GenSettings(contexts=tmp_path / "w" / "contexts.jsonl", out=tmp_path / "g", model="m", dry_run=True)
    )
    assert report["jobs"] == 3 * len(loaded.contexts)
