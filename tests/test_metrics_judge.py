"""LLM judge against a scripted chat-completions server on loopback."""

import pytest

from graft.eval.metrics.choice import ChoiceRow, choice_scores
from graft.eval.metrics.judge import (
    ChatClient,
    JudgeConfig,
    LLMChoiceMatcher,
    judge_scores,
    parse_scores,
    review_prompt,
)

from judge_server import JudgeServer


@pytest.fixture
def server():
    with JudgeServer(lifetime=60) as s:
        yield s


def _item(i, category, answer):
    return {
        "id": i,
        "category": category,
        "context": "A red circle on a white background.",
        "question": "What is in the image?",
        "reference": "A red circle.",
        "answer": answer,
        "rule": f"llava_bench_{category}",
    }


def test_parse_scores():
    assert parse_scores("8 6\nbecause") == (8.0, 6.0)
    assert parse_scores("8, 6") == (
        8.0,
        6.0,
    )  # LLaVA's parser rejected this (two spaces after the comma swap)
    assert parse_scores("8.5 7\n") == (8.5, 7.0)
    assert parse_scores("Assistant 1: 8\nAssistant 2: 6") is None
    assert parse_scores("8 6 7") is None
    assert parse_scores("") is None
    assert parse_scores("80 60") is None  # out of the 1-10 scale


def test_review_prompt_layout():
    messages = review_prompt("ctx", "q?", "ref", "ans", "llava_bench_conv")
    assert messages[0]["role"] == "system"
    user = messages[1]["content"]
    assert user.startswith(
        "[Context]\nctx\n\n[Question]\nq?\n\n[Assistant 1]\nref\n\n[End of Assistant 1]\n\n"
    )
    assert "[Assistant 2]\nans\n\n[End of Assistant 2]\n\n[System]\nWe would like" in user
    assert "a few sentences describing the image" in user
    with pytest.raises(ValueError, match="unknown judge rule"):
        review_prompt("c", "q", "r", "a", "nope")


def test_relative_scores_counts_and_cache(server, tmp_path):
    cfg = JudgeConfig(
        model="judge",
        base_url=server.base_url,
        api_key="k",
        backoff=0.01,
        retries=2,
        cache_dir=tmp_path / "c",
    )
    items = [
        _item(1, "conv", "score=6"),
        _item(2, "conv", "score=4 FLAKY"),  # fails once, then succeeds on retry
        _item(3, "detail", "score=8"),
        _item(4, "detail", "GARBAGE"),  # unparseable: excluded, counted
        _item(5, "complex", "DOWN"),  # fails every retry: excluded, counted
    ]
    out = judge_scores(items, ChatClient(cfg))
    assert out["counts"] == {"items": 5, "judged": 3, "failed": 1, "unparseable": 1}
    assert out["conv"] == pytest.approx(100 * 5 / 8)  # mean(6, 4) / mean(8, 8)
    assert out["detail"] == pytest.approx(100.0)
    assert out["complex"] is None and out["details"]["complex"]["n"] == 0
    assert out["all"] == pytest.approx(100 * 6 / 8)
    down = [s for s in out["samples"] if s["id"] == 5][0]
    assert "InternalServerError" in down["error"]
    assert (
        server.seen[
            review_prompt(**{k: items[4][k] for k in ("context", "question", "reference", "answer", "rule")})[
                1
            ]["content"]
        ]
        == 3
    )

    # a rerun is answered from the cache: only the failed request is asked again
    before = sum(server.seen.values())
    again = judge_scores(items, ChatClient(cfg))
    assert sum(server.seen.values()) - before == 3  # the DOWN item, 1 try + 2 retries
    assert again["conv"] == out["conv"] and again["counts"] == out["counts"]


def test_an_endpoint_that_judges_nothing_is_an_error_not_a_score_of_nulls(tmp_path):
    # nothing listens on this port (bound, then closed); one failure among answers is counted (above)
    with JudgeServer() as s:
        url = s.base_url
    cfg = JudgeConfig(model="judge", base_url=url, backoff=0.01, retries=1, timeout=5)
    with pytest.raises(ValueError, match=r"all 2 judge requests failed \(first: .*\); no score written"):
        judge_scores([_item(1, "conv", "score=5"), _item(2, "detail", "score=5")], ChatClient(cfg))


def test_config_from_env(monkeypatch):
    monkeypatch.setenv("GRAFT_JUDGE_MODEL", "m-env")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://x/v1")
    monkeypatch.setenv("GRAFT_JUDGE_API_KEY", "secret")
    cfg = JudgeConfig.from_env(model=None, concurrency=2)
    assert (cfg.model, cfg.base_url, cfg.api_key, cfg.concurrency) == ("m-env", "http://x/v1", "secret", 2)
    assert JudgeConfig.from_env(model="flag").model == "flag"
    monkeypatch.delenv("GRAFT_JUDGE_MODEL")
    with pytest.raises(ValueError, match="no judge model"):
        ChatClient(JudgeConfig.from_env())
    for var in ("OPENAI_BASE_URL", "GRAFT_JUDGE_API_KEY", "OPENAI_API_KEY", "GRAFT_JUDGE_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ValueError, match="no judge API key"):
        ChatClient(JudgeConfig.from_env(model="m"))


def test_llm_choice_fallback(server):
    cfg = JudgeConfig(model="judge", base_url=server.base_url, backoff=0.01, retries=0)
    matcher = LLMChoiceMatcher(ChatClient(cfg))
    rows = [
        ChoiceRow(1, "hmm, PICK2", "B", ["red", "blue"]),  # no letter or option text: asks the LLM
        ChoiceRow(2, "it is red", "A", ["red", "blue"]),  # found by text: no request
        ChoiceRow(3, "PICK9", "A", ["red", "blue"]),  # the LLM names no valid letter
    ]
    out = choice_scores(rows, fallback=matcher)
    assert [s["picked"] for s in out["samples"]] == ["B", "A", None]
    assert sum(server.seen.values()) == 2
