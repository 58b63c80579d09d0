"""The seven benchmark families: each a reader of the benchmark's real files and the scorer
equal to its reference tool. Task files (``graft.eval.tasks``) name a family by its key here as
``reader:`` and ``metric:``.

A sample with no prediction is counted under ``counts.missing`` and, per family: scored as an
empty answer where that is simply wrong (MME, multiple choice, DEMON), left out where an empty
answer would score as something (POPE reads it as "yes"; captions, the judge).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from graft.eval.answers import score_answer, sqa_letter
from graft.eval.metrics import (
    ChatClient,
    ChoiceRow,
    JudgeConfig,
    LLMChoiceMatcher,
    caption_scores,
    category_scores,
    choice_scores,
    judge_scores,
    mme_scores,
    pope_scores,
    score_tasks,
)
from graft.eval.readers import (
    ReadResult,
    Sample,
    read_coco_captions,
    read_demon,
    read_llava_bench,
    read_mmbench,
    read_mme,
    read_pope,
    read_scienceqa,
)
from graft.eval.readers.mme import MMEResult, match_ids
from graft.eval.readers.questions import read_questions
from graft.record_files import RecordError

logger = logging.getLogger(__name__)

# (samples read, id -> answer, options, counts to fill) -> metrics
Scorer = Callable[[ReadResult, Mapping[str, str], "Options", dict], dict]


@dataclass
class Options:
    """What some scorers need beyond samples and predictions."""

    judge: JudgeConfig | None = None
    llm_choice_fallback: bool = False  # ask the judge model when no option letter is found
    java: bool | None = None  # captioning: None = use Java when found
    lenient_image_choice: bool = False  # DEMON: read "Image X" anywhere, not the benchmark's rule


def answers(samples: list[Sample], preds: Mapping[str, str], counts: dict[str, Any]) -> dict[str, str | None]:
    """Sample id -> its prediction (None when missing); fills the shared counts."""
    ids = {str(s.id) for s in samples}
    got = {str(s.id): preds.get(str(s.id)) for s in samples}
    counts["samples"] = len(samples)
    counts["missing"] = sum(v is None for v in got.values())
    counts["empty"] = sum(v is not None and not v.strip() for v in got.values())
    counts["unknown_ids"] = sum(k not in ids for k in preds)
    if counts["missing"]:
        logger.warning("%d of %d samples have no prediction", counts["missing"], len(samples))
    if counts["empty"]:
        logger.warning("%d predictions are empty", counts["empty"])
    if counts["unknown_ids"]:
        logger.warning(
            "%d prediction ids name no sample and are ignored; the data's ids look like %r",
            counts["unknown_ids"],
            samples[0].id if samples else None,
        )
    return got


def _caption(data: ReadResult, preds: Mapping[str, str], opts: Options, counts: dict) -> dict:
    got = answers(data.samples, preds, counts)
    refs = {str(s.id): s.target for s in data.samples}
    return caption_scores(refs, {k: v for k, v in got.items() if v is not None}, java=opts.java)


def _mme(data: ReadResult, preds: Mapping[str, str], opts: Options, counts: dict) -> dict:
    got = answers(data.samples, preds, counts)
    rows = [
        MMEResult(
            s.meta["subtask"],
            s.meta["image_name"],
            s.meta["question"],
            s.target,
            got[str(s.id)] or "",
            s.where,
        )
        for s in data.samples
    ]
    return mme_scores(rows)


def _pope(data: ReadResult, preds: Mapping[str, str], opts: Options, counts: dict) -> dict:
    got = answers(data.samples, preds, counts)
    return pope_scores(
        (s.meta["split"], s.target, got[str(s.id)]) for s in data.samples if got[str(s.id)] is not None
    )


def _choice(circular: bool, extract: Callable | None = None) -> Scorer:
    def run(data: ReadResult, preds: Mapping[str, str], opts: Options, counts: dict) -> dict:
        got = answers(data.samples, preds, counts)
        unlabelled = [s.where for s in data.samples if s.target is None]
        if unlabelled:
            raise RecordError(
                f"{len(unlabelled)} question(s) have no answer to score against, e.g. {unlabelled[0]}"
            )
        fallback = None
        if opts.llm_choice_fallback:
            if opts.judge is None:
                raise ValueError("the LLM choice fallback needs a judge endpoint (--judge-model ...)")
            fallback = LLMChoiceMatcher(ChatClient(opts.judge))
        rows = [
            ChoiceRow(
                s.id,
                got[str(s.id)] or "",
                s.target,
                s.meta["choices"],
                s.meta.get("group"),
                s.meta.get("category"),
            )
            for s in data.samples
        ]
        # the LLM fallback means the lenient reading; otherwise the family's own one
        out = choice_scores(rows, fallback=fallback, circular=circular, extract=None if fallback else extract)
        with_image = [r for r, s in zip(out["samples"], data.samples, strict=True) if s.images]
        if len(with_image) < len(data.samples):
            # ScienceQA reports IMG accuracy beside the full one
            out["img_accuracy"] = (
                100.0 * sum(r["correct"] for r in with_image) / len(with_image) if with_image else 0.0
            )
        return out

    return run


def _demon(data: ReadResult, preds: Mapping[str, str], opts: Options, counts: dict) -> dict:
    got = answers(data.samples, preds, counts)
    rows = []
    for s in data.samples:
        row = {
            "task": s.meta["task"],
            "kind": s.meta["kind"],
            "prediction": got[str(s.id)] or "",
            "response": s.target,
        }
        rows.append(row | ({"choices": s.meta["choices"]} if "choices" in s.meta else {}))
    try:
        tasks = score_tasks(rows, lenient_images=opts.lenient_image_choice)
    except ValueError as err:
        raise RecordError(f"DEMON: {err}") from None
    cats = category_scores(tasks)
    return {
        "categories": {c: v["score"] for c, v in cats.items()},
        "tasks": {t: v["score"] for t, v in tasks.items()},
        # image-choice answers read by the benchmark's evaluate.py rule, or leniently on request
        "image_choice_rule": "lenient" if opts.lenient_image_choice else "official",
        "details": {"categories": cats, "tasks": tasks},
    }


def _judge(data: ReadResult, preds: Mapping[str, str], opts: Options, counts: dict) -> dict:
    if opts.judge is None:
        raise ValueError("LLaVA-Bench needs a judge: --judge-model (and --judge-base-url / --judge-api-key)")
    got = answers(data.samples, preds, counts)
    items = [
        {
            "id": s.id,
            "category": s.meta["category"],
            "context": s.meta["context"],
            "question": s.meta["question"],
        }
        | {"reference": s.target, "answer": got[str(s.id)], "rule": s.meta["rule"]}
        for s in data.samples
        if got[str(s.id)] is not None
    ]
    return judge_scores(items, ChatClient(opts.judge))


def _questions(data: ReadResult, preds: Mapping[str, str], opts: Options, counts: dict) -> dict:
    """graft's question files: accuracy (a fraction) overall and per ``qtype``, each answer read
    by ``answers.score_answer``; a missing answer is wrong. Per-sample readings under ``samples``."""
    got = answers(data.samples, preds, counts)
    by_type: dict[str, list[bool]] = {}
    samples = []
    for s in data.samples:
        answer = got[str(s.id)]
        parsed, right = (
            score_answer(answer, s.target, s.meta.get("choices")) if answer is not None else (None, False)
        )
        by_type.setdefault(s.meta["qtype"], []).append(right)
        samples.append({"id": s.id, "qtype": s.meta["qtype"], "parsed": parsed, "correct": right})
    every = [r for rights in by_type.values() for r in rights]
    out: dict[str, Any] = {"accuracy": sum(every) / len(every) if every else 0.0, "n": len(every)}
    for qtype, rights in sorted(by_type.items()):
        out[f"qtype/{qtype}/accuracy"] = sum(rights) / len(rights)
        out[f"qtype/{qtype}/n"] = len(rights)
    return out | {"samples": samples}


@dataclass(frozen=True)
class Family:
    read: Callable[..., ReadResult]  # (path, ..., skip_bad=False, check_images=True) -> ReadResult
    score: Scorer
    needs_judge: bool = False
    # (predictions, sample ids) -> predictions keyed by the samples' ids, where a family's ids
    # may be spelt two ways
    match_ids: Callable[[Mapping[str, str], list[str]], dict[str, str]] | None = None


FAMILIES: dict[str, Family] = {
    "coco_caption": Family(read_coco_captions, _caption),
    # read without images, MME ids name an image by its stem
    "mme": Family(read_mme, _mme, match_ids=match_ids),
    "pope": Family(read_pope, _pope),
    # LLaVA's strict ScienceQA reading, so numbers compare with its tables
    "scienceqa_img": Family(read_scienceqa, _choice(circular=False, extract=sqa_letter)),
    "mmbench": Family(read_mmbench, _choice(circular=True)),
    "llava_bench": Family(read_llava_bench, _judge, needs_judge=True),
    "demon": Family(read_demon, _demon),
    # graft's own question files (the demo's held-out yes/no and multiple-choice questions)
    "questions": Family(read_questions, _questions),
}


def check_judge(options: Options | None, what: str) -> None:
    """Fail before any generation when a task will need a judge that is not configured."""
    judge = options.judge if options else None
    if judge is None or not judge.model:
        raise ValueError(
            f"{what} needs an LLM judge: pass --judge-model or set GRAFT_JUDGE_MODEL "
            "(with --judge-base-url / GRAFT_JUDGE_BASE_URL or an API key)"
        )
    if not judge.base_url and not judge.api_key:
        raise ValueError(
            f"{what} needs an LLM judge: no API key (GRAFT_JUDGE_API_KEY / OPENAI_API_KEY) and no base URL"
        )
