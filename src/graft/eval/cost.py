"""What an end-to-end run cost per sample: wall seconds and tokens, as results.json's ``cost``.

Seconds are the answering step's wall time over the samples it answered in this invocation (a
fully resumed run keeps the figure the run before measured). Tokens are counted from the files:
the prompt's text tokens plus ``image_seq_length`` per image (the chat template's own tokens
left out), and the answer's tokens. The expert pipeline's cost, with the same keys, is
``graft.pipelines.expert.expert_cost``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from graft.record_files import iter_jsonl


def _count(tokenizer: Any, texts: list[str]) -> int:
    """All the tokens of ``texts`` (0 without a tokenizer or texts)."""
    if tokenizer is None or not texts:
        return 0
    return sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])


def end_to_end_cost(
    processor: Any, questions: Path, predictions: Path, seconds: float, written: int, folder: Path
) -> dict[str, Any]:
    tokenizer = getattr(processor, "tokenizer", None)
    marker = getattr(processor, "image_token", "<image>")
    per_image = getattr(processor, "image_seq_length", 0)
    prompts = {str(r.get("id")): r for r, _ in iter_jsonl(questions)}
    answered = {str(r.get("id")): r.get("prediction", "") for r, _ in iter_jsonl(predictions)}
    n = max(1, len(answered))
    asked = [prompts[i] for i in answered if i in prompts]
    texts = [r.get("question", "").replace(marker, "") for r in asked]
    answers = [a for a in answered.values() if a]
    prompt_tokens = per_image * sum(len(r.get("images", [])) for r in asked)
    prompt_tokens += _count(tokenizer, texts)
    answer_tokens = _count(tokenizer, answers)
    if written:
        per_sample = seconds / written
    else:  # nothing answered now: the last measured figure, if any
        before = folder / "results.json"
        old = json.loads(before.read_text(encoding="utf-8")).get("cost", {}) if before.exists() else {}
        per_sample = old.get("seconds_per_sample")
    return {
        "calls_per_sample": 1,
        "samples_timed": written,
        "seconds_per_sample": per_sample,
        "prompt_tokens_per_sample": prompt_tokens / n,
        "answer_tokens_per_sample": answer_tokens / n,
        "tokens_per_sample": (prompt_tokens + answer_tokens) / n,
    }
