"""Scorers over samples read: the seven benchmark families, each a reader of the benchmark's real
files and the scorer equal to its reference tool (task files, ``graft.eval.tasks``, name a family
by its key in ``FAMILIES`` as ``reader:`` and ``metric:``), and the simple metrics of ``METRICS``.

A sample with no prediction is counted under ``counts.missing`` and, per family: scored as an
empty answer where that is simply wrong (MME, multiple choice, DEMON), left out where an empty
answer would score as something (POPE reads it as "yes"; captions, the judge).

The simple metrics a task file may list for any reader (its own data included), each a thin use
of an existing scorer so numbers agree with the family tools:

- ``exact_match``: the answer equals the target (or one of the targets) after lower-casing and
  dropping punctuation (``answers.normalize_text``); a fraction. Missing answers are wrong.
- ``yes_no``: POPE's reading of the answer (``answers.pope_yes_no``) against a yes/no
  target; accuracy, precision, recall, F1, predicted-yes ratio (fractions). Missing answers are
  left out (POPE reads an empty one as yes).
- ``choice``: the option letter the answer picks (``metrics.choice``) against a letter target;
  accuracy x100. Needs the options (``doc_to_choice`` for the jsonl reader). Missing = wrong.
- ``rouge_l``: DEMON's ROUGE-L F (its normalisation, ``metrics.demon``), mean x100, best over
  several targets. Missing answers score 0.
- ``caption``: the COCO caption metrics (``metrics.caption``) against one or more reference
  captions. Missing answers are left out.

Each metric checks a target when the data is read (``check``), so a bad record is reported
before any generation, naming its file and line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from graft.eval import metrics, readers
from graft.eval.answers import normalize_text, pope_yes_no, score_answer, sqa_letter
from graft.eval.metrics import ChatClient, ChoiceRow, JudgeConfig, LLMChoiceMatcher
from graft.eval.metrics.demon import normalize as demon_normalize
from graft.eval.metrics.pope import binary_scores
from graft.eval.readers import ReadResult, Sample
from graft.eval.readers.mme import MMEResult, match_ids
from graft.prompts import OPTION_LETTERS
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


def _strings(target: Any) -> list[str]:
    """One reference or several, as a list."""
    return [target] if isinstance(target, str) else list(target)


def _caption(samples: list[Sample], got: Mapping[str, str | None], opts: Options) -> dict:
    refs = {str(s.id): _strings(s.target) for s in samples}
    return metrics.caption_scores(refs, {k: v for k, v in got.items() if v is not None}, java=opts.java)


def _choice_rows(samples: list[Sample], got: Mapping[str, str | None]) -> list[ChoiceRow]:
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


def _multiple_choice(circular: bool, extract: Callable | None = None) -> Scorer:
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
        out = metrics.choice_scores(_choice_rows(samples, got), fallback, circular, extract_letter)
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
    # a limited run takes samples from every group of this ``meta`` key in turn, whole units of
    # the second where one is given (``readers.base.first_samples``)
    limit_by: tuple[str, str | None] | None = None


FAMILIES: dict[str, Family] = {
    "coco_caption": Family(readers.read_coco_captions, _caption),
    # read without images, MME ids name an image by its stem
    "mme": Family(readers.read_mme, _mme, match_ids=match_ids, limit_by=("subtask", "image_name")),
    "pope": Family(readers.read_pope, _pope),
    # LLaVA's strict ScienceQA reading, so numbers compare with its tables
    "scienceqa_img": Family(readers.read_scienceqa, _multiple_choice(circular=False, extract=sqa_letter)),
    "mmbench": Family(readers.read_mmbench, _multiple_choice(circular=True)),
    "llava_bench": Family(readers.read_llava_bench, _judge, needs_judge=True),
    "demon": Family(readers.read_demon, _demon, limit_by=("task", None)),
    # graft's own question files (the demo's held-out yes/no and multiple-choice questions)
    "questions": Family(readers.read_questions, _questions),
}


def check_judge(options: Options | None, what: str) -> None:
    """Fail before any generation when a task will need a judge that is not configured."""
    problem = ((options.judge if options else None) or JudgeConfig()).problem()
    if problem:
        raise ValueError(f"{what} needs an LLM judge: {problem}")


# --- simple metrics, for any reader ---------------------------------------------------------------
def _check_text(s: Sample) -> None:
    listed = isinstance(s.target, list) and s.target and all(isinstance(t, str) for t in s.target)
    if not (isinstance(s.target, str) or listed):
        raise RecordError(
            f"{s.where}: the target must be a string or a list of strings, got {s.target!r:.80}"
        )


def _check_yes_no(s: Sample) -> None:
    if not isinstance(s.target, str) or s.target.strip().lower() not in ("yes", "no"):
        raise RecordError(f"{s.where}: metric yes_no needs a yes/no target, got {s.target!r:.80}")


def _check_letter(s: Sample) -> None:
    choices = s.meta.get("choices")
    if not isinstance(choices, list) or len(choices) < 2:
        raise RecordError(f"{s.where}: metric choice needs a list of at least two options")
    if not isinstance(s.target, str) or s.target not in OPTION_LETTERS[: len(choices)]:
        raise RecordError(
            f"{s.where}: metric choice needs an option letter (A..{OPTION_LETTERS[len(choices) - 1]}) or an "
            f"option's text as target, got {s.target!r:.80}"
        )


def _exact_match(samples: list[Sample], got: Mapping[str, str | None], opts: Any) -> float:
    hits = [
        normalize_text(got[str(s.id)] or "") in {normalize_text(t) for t in _strings(s.target)}
        for s in samples
    ]
    return sum(hits) / len(hits) if hits else 0.0


def _yes_no(samples: list[Sample], got: Mapping[str, str | None], opts: Any) -> dict[str, Any]:
    kept = [s for s in samples if got[str(s.id)] is not None]
    said = [got[str(s.id)] or "" for s in kept]
    out = binary_scores([s.target.strip().lower() for s in kept], [pope_yes_no(a) for a in said])
    return out | {"empty": sum(not a.strip() for a in said)}


def _choice(samples: list[Sample], got: Mapping[str, str | None], opts: Any) -> dict[str, Any]:
    out = metrics.choice_scores(_choice_rows(samples, got))
    out.pop("samples")
    return out


def _rouge_l(samples: list[Sample], got: Mapping[str, str | None], opts: Any) -> float:
    scores = [
        max(
            metrics.rouge_l(demon_normalize(got[str(s.id)] or ""), demon_normalize(t))
            for t in _strings(s.target)
        )
        for s in samples
    ]
    return 100.0 * sum(scores) / len(scores) if scores else 0.0


class Metric(NamedTuple):
    score: Scorer
    check: Callable[[Sample], None]  # raises RecordError when the sample's target cannot be scored


METRICS: dict[str, Metric] = {
    "exact_match": Metric(_exact_match, _check_text),
    "yes_no": Metric(_yes_no, _check_yes_no),
    "choice": Metric(_choice, _check_letter),
    "rouge_l": Metric(_rouge_l, _check_text),
    "caption": Metric(_caption, _check_text),
}


def check_sample(metrics: list[str], sample: Sample) -> None:
    """Raise ``RecordError`` (naming the sample's place) when a metric cannot score it."""
    for name in metrics:
        METRICS[name].check(sample)
