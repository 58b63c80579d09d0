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

from graft.eval import metrics, readers
from graft.eval.answers import score_answer, sqa_letter
from graft.eval.metrics import ChatClient, ChoiceRow, JudgeConfig, LLMChoiceMatcher
from graft.eval.readers import ReadResult, Sample
from graft.eval.readers.mme import MMEResult, match_ids
from graft.record_files import RecordError

logger = logging.getLogger(__name__)

#: (samples read, sample id -> its answer or None, options) -> metrics
Scorer = Callable[[list[Sample], Mapping[str, "str | None"], "Options"], Any]


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


def strings(target: Any) -> list[str]:
    """One reference or several, as a list."""
    return [target] if isinstance(target, str) else list(target)


def caption(samples: list[Sample], got: Mapping[str, str | None], opts: Options) -> dict:
    refs = {str(s.id): strings(s.target) for s in samples}
    return metrics.caption_scores(refs, {k: v for k, v in got.items() if v is not None}, java=opts.java)


def choice_rows(samples: list[Sample], got: Mapping[str, str | None]) -> list[ChoiceRow]:
    return [
        ChoiceRow(
            s.id,
            got[str(s.id)] or "",
            s.target,
            s.meta["choices"],
            s.meta.get("group"),
            s.meta.get("category"),
        )
        for s in samples
    ]


def _mme(samples: list[Sample], got: Mapping[str, str | None], opts: Options) -> dict:
    meta = ("subtask", "image_name", "question")
    return metrics.mme_scores(
        MMEResult(*(s.meta[k] for k in meta), s.target, got[str(s.id)] or "", s.where) for s in samples
    )


def _pope(samples: list[Sample], got: Mapping[str, str | None], opts: Options) -> dict:
    return metrics.pope_scores(
        (s.meta["split"], s.target, got[str(s.id)]) for s in samples if got[str(s.id)] is not None
    )


def _choice(circular: bool, extract: Callable | None = None) -> Scorer:
    def run(samples: list[Sample], got: Mapping[str, str | None], opts: Options) -> dict:
        unlabelled = [s.where for s in samples if s.target is None]
        if unlabelled:
            raise RecordError(
                f"{len(unlabelled)} question(s) have no answer to score against, e.g. {unlabelled[0]}"
            )
        fallback = None
        if opts.llm_choice_fallback:
            check_judge(opts, "the LLM choice fallback")
            fallback = LLMChoiceMatcher(ChatClient(opts.judge))
        # the LLM fallback means the lenient reading; otherwise the family's own one
        extract_letter = None if fallback else extract
        out = metrics.choice_scores(choice_rows(samples, got), fallback, circular, extract_letter)
        with_image = [r for r, s in zip(out["samples"], samples, strict=True) if s.images]
        if len(with_image) < len(samples):
            # ScienceQA reports IMG accuracy beside the full one
            out["img_accuracy"] = 100.0 * sum(r["correct"] for r in with_image) / max(len(with_image), 1)
        return out

    return run


def _demon(samples: list[Sample], got: Mapping[str, str | None], opts: Options) -> dict:
    rows = [
        {
            "task": s.meta["task"],
            "kind": s.meta["kind"],
            "prediction": got[str(s.id)] or "",
            "response": s.target,
        }
        | ({"choices": s.meta["choices"]} if "choices" in s.meta else {})
        for s in samples
    ]
    try:
        tasks = metrics.score_tasks(rows, lenient_images=opts.lenient_image_choice)
    except ValueError as err:
        raise RecordError(f"DEMON: {err}") from None
    cats = metrics.category_scores(tasks)
    return {
        "categories": {c: v["score"] for c, v in cats.items()},
        "tasks": {t: v["score"] for t, v in tasks.items()},
        # image-choice answers read by the benchmark's evaluate.py rule, or leniently on request
        "image_choice_rule": "lenient" if opts.lenient_image_choice else "official",
        "details": {"categories": cats, "tasks": tasks},
    }


def _judge(samples: list[Sample], got: Mapping[str, str | None], opts: Options) -> dict:
    check_judge(opts, "LLaVA-Bench")
    keys = ("category", "context", "question", "rule")
    items = [
        {"id": s.id, "reference": s.target, "answer": got[str(s.id)]} | {k: s.meta[k] for k in keys}
        for s in samples
        if got[str(s.id)] is not None
    ]
    return metrics.judge_scores(items, ChatClient(opts.judge))


def _questions(samples: list[Sample], got: Mapping[str, str | None], opts: Options) -> dict:
    """graft's question files: accuracy (a fraction) overall and per ``qtype``, each answer read
    by ``answers.score_answer``; a missing answer is wrong. Per-sample readings under ``samples``."""
    by_type: dict[str, list[bool]] = {}
    samples_out = []
    for s in samples:
        answer = got[str(s.id)]
        parsed, right = (
            score_answer(answer, s.target, s.meta.get("choices")) if answer is not None else (None, False)
        )
        by_type.setdefault(s.meta["qtype"], []).append(right)
        samples_out.append({"id": s.id, "qtype": s.meta["qtype"], "parsed": parsed, "correct": right})
    every = [r for rights in by_type.values() for r in rights]
    out: dict[str, Any] = {"accuracy": sum(every) / len(every) if every else 0.0, "n": len(every)}
    for qtype, rights in sorted(by_type.items()):
        out[f"qtype/{qtype}/accuracy"] = sum(rights) / len(rights)
        out[f"qtype/{qtype}/n"] = len(rights)
    return out | {"samples": samples_out}


@dataclass(frozen=True)
class Family:
    read: Callable[..., ReadResult]  # (path, ..., skip_bad=False, check_images=True) -> ReadResult
    score: Scorer
    needs_judge: bool = False
    # (predictions, sample ids) -> predictions keyed by the samples' ids, where a family's ids
    # may be spelt two ways
    match_ids: Callable[[Mapping[str, str], list[str]], dict[str, str]] | None = None


FAMILIES: dict[str, Family] = {
    "coco_caption": Family(readers.read_coco_captions, caption),
    # read without images, MME ids name an image by its stem
    "mme": Family(readers.read_mme, _mme, match_ids=match_ids),
    "pope": Family(readers.read_pope, _pope),
    # LLaVA's strict ScienceQA reading, so numbers compare with its tables
    "scienceqa_img": Family(readers.read_scienceqa, _choice(circular=False, extract=sqa_letter)),
    "mmbench": Family(readers.read_mmbench, _choice(circular=True)),
    "llava_bench": Family(readers.read_llava_bench, _judge, needs_judge=True),
    "demon": Family(readers.read_demon, _demon),
    # graft's own question files (the demo's held-out yes/no and multiple-choice questions)
    "questions": Family(readers.read_questions, _questions),
}


def check_judge(options: Options | None, what: str) -> None:
    """Fail before any generation when a task will need a judge that is not configured."""
    problem = ((options.judge if options else None) or JudgeConfig()).problem()
    if problem:
        raise ValueError(f"{what} needs an LLM judge: {problem}")
