"""LLM judge (LLaVA-Bench) through any OpenAI-compatible chat-completions endpoint.

The judge reads the image's context (captions, maybe boxes), the question, the reference answer
(as assistant 1) and the model's answer (assistant 2) and writes two 1-10 scores on its first
line. Per category: relative score = mean(model) / mean(reference) x 100, over the judgements
that parsed. Requests run ``concurrency`` at a time, are retried with exponential backoff on
transient errors (connection, timeout, 429, 5xx), and are cached on disk keyed by the request's
content, so a rerun asks only what it has not asked. A failed or unparseable judgement is
excluded and counted, never scored (LLaVA's script averaged them in as -1).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from graft.files import write_text_atomic
from graft.prompts import OPTION_LETTERS

logger = logging.getLogger(__name__)

SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."
# LLaVA's judge instructions (llava/eval/table/rule.json, Apache-2.0), kept word for word because
# the relative scores papers report depend on them.
_ASK = (
    "We would like to request your feedback on the performance of two AI assistants in response to the "
    "user question displayed above. The user asks the question on observing an image. For your reference, "
    "the visual content in the image is represented with {what}. \n"
    "Please rate the helpfulness, relevance, accuracy, level of details of their responses. Each assistant "
    "receives an overall score on a scale of 1 to 10, where a higher score indicates better overall "
    "performance.\nPlease first output a single line containing only two values indicating the scores for "
    "Assistant 1 and 2, respectively. The two scores are separated by a space.\nIn the subsequent line, "
    "please provide a comprehensive explanation of your evaluation, avoiding any potential bias and ensuring "
    "that the order in which the responses were presented does not affect your judgment."
)
_WILD = _ASK.format(what="a few sentences describing the image")
_COCO = _ASK.format(
    what="five descriptive sentences describing the same image and the bounding box coordinates of each "
    "object in the scene. These coordinates are in the form of bounding boxes, represented as (x1, y1, x2, "
    "y2) with floating numbers ranging from 0 to 1. These values correspond to the top left x, top left y, "
    "bottom right x, and bottom right y"
)
RULES = {f"llava_bench_{c}": _WILD for c in ("conv", "detail", "complex")} | {
    c: _COCO for c in ("conv", "detail", "complex")
}


@dataclass
class JudgeConfig:
    """Where and how to ask. ``from_env`` fills unset fields from GRAFT_JUDGE_* / OPENAI_* variables."""

    model: str | None = None
    base_url: str | None = None
    api_key: str | None = None
    concurrency: int = 4
    retries: int = 4
    backoff: float = 1.0  # seconds before the first retry; doubles each time, with jitter
    max_backoff: float = 30.0
    timeout: float = 120.0
    temperature: float = 0.2
    max_tokens: int = 1024
    cache_dir: str | os.PathLike | None = None

    @classmethod
    def from_env(cls, **overrides: Any) -> JudgeConfig:
        env = os.environ
        values = {k: v for k, v in overrides.items() if v is not None}
        values.setdefault("model", env.get("GRAFT_JUDGE_MODEL"))
        values.setdefault("base_url", env.get("GRAFT_JUDGE_BASE_URL") or env.get("OPENAI_BASE_URL"))
        values.setdefault("api_key", env.get("GRAFT_JUDGE_API_KEY") or env.get("OPENAI_API_KEY"))
        values.setdefault("cache_dir", env.get("GRAFT_JUDGE_CACHE"))
        return cls(**values)

    def problem(self) -> str | None:
        """Why no judge can be asked with this config; None when one can."""
        if not self.model:
            return "no judge model: pass --judge-model or set GRAFT_JUDGE_MODEL"
        if not self.base_url and not self.api_key:
            return (
                "no judge API key: pass --judge-api-key or set GRAFT_JUDGE_API_KEY / OPENAI_API_KEY "
                "(or point --judge-base-url at a local server)"
            )
        return None


class JudgeError(RuntimeError):
    """A request that failed for good (after its retries, or at once for a non-transient error)."""


class ChatClient:
    """Chat completions with retries, backoff, a concurrency limit (in ``map``) and a disk cache."""

    def __init__(self, config: JudgeConfig) -> None:
        import openai

        if problem := config.problem():
            raise ValueError(problem)
        self.config = config
        self._openai = openai
        # local servers need no key, but the client insists on one
        self.client = openai.OpenAI(
            base_url=config.base_url, api_key=config.api_key or "none", max_retries=0, timeout=config.timeout
        )
        self.cache = Path(config.cache_dir) if config.cache_dir else None
        if self.cache:
            self.cache.mkdir(parents=True, exist_ok=True)

    def _transient(self, err: Exception) -> bool:
        o = self._openai
        if isinstance(err, (o.APIConnectionError, o.RateLimitError, o.InternalServerError)):
            return True  # APITimeoutError is an APIConnectionError
        return isinstance(err, o.APIStatusError) and err.status_code >= 500

    def complete(self, messages: list[dict[str, str]]) -> str:
        """The reply's text; raises ``JudgeError`` when every try failed."""
        c = self.config
        request = dict(model=c.model, messages=messages, temperature=c.temperature, max_tokens=c.max_tokens)
        key = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()
        path = self.cache / f"{key}.json" if self.cache else None
        if path and path.is_file():
            return json.loads(path.read_text(encoding="utf-8"))["content"]
        delay = c.backoff
        for attempt in range(c.retries + 1):
            try:
                response = self.client.chat.completions.create(**request)
                content = response.choices[0].message.content
                if content is None:
                    raise JudgeError("the reply has no text content")
                break
            except Exception as err:  # noqa: BLE001 (classified below; anything else fails the request)
                if isinstance(err, JudgeError) or not self._transient(err) or attempt == c.retries:
                    raise JudgeError(f"{type(err).__name__}: {err}") from None
                time.sleep(min(delay, c.max_backoff) * (0.5 + random.random()))
                delay *= 2
        if path:
            # written whole then renamed: a killed run never leaves a half entry
            write_text_atomic(path, json.dumps({"request": request, "content": content}))
        return content

    def map(self, conversations: Sequence[list[dict[str, str]]]) -> list[str | JudgeError]:
        """``complete`` over many conversations, ``concurrency`` at a time, in order; a failure is
        returned (not raised) in its slot."""

        def one(messages: list[dict[str, str]]) -> str | JudgeError:
            try:
                return self.complete(messages)
            except JudgeError as err:
                return err

        with ThreadPoolExecutor(max_workers=max(1, self.config.concurrency)) as pool:
            return list(
                tqdm(pool.map(one, conversations), total=len(conversations), desc="judge", unit="req")
            )


_NUMBER = r"[-+]?\d+(?:\.\d+)?"


def parse_scores(review: str) -> tuple[float, float] | None:
    """The two scores on the first line ("8 6", "8, 6", "8.5 6"), or None."""
    lines = review.strip().splitlines()
    parts = lines[0].replace(",", " ").split() if lines else []
    if len(parts) != 2 or not all(re.fullmatch(_NUMBER, p) for p in parts):
        return None
    a, b = float(parts[0]), float(parts[1])
    return (a, b) if 0 <= a <= 10 and 0 <= b <= 10 else None


def review_prompt(
    context: str, question: str, reference: str, answer: str, rule: str
) -> list[dict[str, str]]:
    """The judge's conversation, laid out as LLaVA's review script lays it out."""
    if rule not in RULES:
        raise ValueError(f"unknown judge rule {rule!r}; one of {sorted(RULES)}")
    content = (
        f"[Context]\n{context}\n\n[Question]\n{question}\n\n"
        f"[Assistant 1]\n{reference}\n\n[End of Assistant 1]\n\n"
        f"[Assistant 2]\n{answer}\n\n[End of Assistant 2]\n\n[System]\n{RULES[rule]}\n\n"
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": content}]


def judge_scores(items: Sequence[dict[str, Any]], client: ChatClient) -> dict[str, Any]:
    """Relative scores of items ``{"id", "category", "context", "question", "reference",
    "answer", "rule"}``: ``{"all", <category>: relative x100, "details", "counts", "samples"}``."""
    replies = client.map(
        [review_prompt(i["context"], i["question"], i["reference"], i["answer"], i["rule"]) for i in items]
    )
    pairs: dict[str, list[tuple[float, float]]] = defaultdict(list)
    samples, failed, unparseable = [], 0, 0
    for item, reply in zip(items, replies, strict=True):
        record: dict[str, Any] = {"id": item["id"], "category": item["category"]}
        if isinstance(reply, JudgeError):
            failed += 1
            record["error"] = str(reply)
        else:
            record["review"] = reply
            scores = parse_scores(reply)
            if scores is None:
                unparseable += 1
            else:
                record["scores"] = list(scores)
                pairs[item["category"]].append(scores)
                pairs["all"].append(scores)
        samples.append(record)
    if failed:
        first = next(s["error"] for s in samples if "error" in s)
        if failed == len(items):  # nothing was judged: no score to write, not one of nulls
            raise ValueError(
                f"all {failed} judge requests failed (first: {first}); no score written: check the "
                "judge's endpoint, model and key (--judge-*), then rerun (the answers are kept)"
            )
        logger.warning(
            "%d of %d judge requests failed (first: %s); they are excluded", failed, len(items), first
        )
    if unparseable:
        logger.warning(
            "%d judgement(s) had no two scores on their first line; they are excluded", unparseable
        )
    out: dict[str, Any] = {}
    details = {}
    # every category asked about is reported, None where no judgement of it parsed
    for cat in ["all", *sorted({i["category"] for i in items})]:
        got = pairs.get(cat, [])
        ref, mod = (sum(p[k] for p in got) / len(got) if got else None for k in (0, 1))
        out[cat] = 100.0 * mod / ref if ref else None
        details[cat] = {"reference": ref, "model": mod, "n": len(got)}
    out["details"] = details
    out["counts"] = {
        "items": len(items),
        "judged": len(pairs.get("all", [])),
        "failed": failed,
        "unparseable": unparseable,
    }
    out["samples"] = samples
    return out


class LLMChoiceMatcher:
    """A ``choice`` fallback: asks the judge model which option a free-form answer picks."""

    def __init__(self, client: ChatClient) -> None:
        self.client = client

    def __call__(self, answer: str, choices: Sequence[str]) -> str | None:
        letters = OPTION_LETTERS[: len(choices)]
        options = "\n".join(f"{letter}. {c}" for letter, c in zip(letters, choices, strict=True))
        prompt = (
            "Which option does the answer below choose? Reply with the option's letter only, "
            f"or Z if it chooses none of them.\n\nOptions:\n{options}\n\nAnswer: {answer}"
        )
        try:
            reply = self.client.complete([{"role": "user", "content": prompt}])
        except JudgeError as err:
            logger.warning("choice fallback failed: %s", err)
            return None
        m = re.search(rf"\b([{letters}])\b", reply.strip())
        return m.group(1) if m else None
