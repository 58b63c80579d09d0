"""graft gen-data runs that stop and go on: the cache and reruns, dry runs and cost limits, stops on
rejection rate or endpoint problems, kill -9 mid-run, and the lock against a second run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from graft.instruct.gen_cache import RunLock, request_key
from graft.instruct.gen_run import generate, plan_jobs
from graft.instruct.gen_settings import RESPONSE_TYPES, GenError

import gen_data_fixtures
from fake_gen_server import FakeGenServer, free_port_url, serve_in_thread
from gen_data_fixtures import _cli, _contexts, _settings

REPO = Path(__file__).resolve().parents[1]

server = gen_data_fixtures.server  # the fake endpoint, a fixture shared by the gen-data tests


def test_rerun_is_all_cache_hits_and_the_same_output(tmp_path, server, monkeypatch, caplog):
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
    assert "latency: no request answered in this run" in result.output and "None s" not in result.output

    # a narrower rerun writes this run's types; the file of a type left out is from before, said so
    result = _cli("--contexts", str(ctx), "--out", str(out), "--types", "detail")
    assert result.exit_code == 0, result.output
    assert len(json.loads((out / "llava_instruct.json").read_text())) == 4 and server.seen == []
    assert len(json.loads((out / "conversation.json").read_text())) == 4
    assert "conversation.json, complex_reasoning.json are from an earlier run" in caplog.text


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


def test_max_cost_stop_counts_what_the_requests_in_flight_hold(tmp_path, server):
    server.delay_s = 0.3  # the first request is still in flight when the second would start
    s = _settings(
        tmp_path, server.url, [""] * 2, concurrency=2, max_tokens=100, price_in=1000.0, price_out=1000.0
    )
    one = plan_jobs(s).jobs[0]
    per_request = s.cost(sum(len(m["content"]) // 4 + 4 for m in one.messages), 100)
    report = generate(replace(s, max_cost=per_request * 1.5))
    assert report["requests_sent"] == 1
    pattern = r"\(spent 0\.0000, (\d+\.\d{4}) more held by the requests in flight\)"
    held = re.search(pattern, report["stopped"])
    assert held and float(held[1]) == pytest.approx(per_request, rel=0.01)


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
