"""Simple metrics a task file may list for any reader (its own data included), each a thin use
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

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from graft.eval.answers import normalize_text, pope_yes_no
from graft.eval.metrics import ChoiceRow, caption_scores, choice_scores, rouge_l
from graft.eval.metrics.demon import normalize as demon_normalize
from graft.eval.metrics.pope import binary_scores
from graft.eval.readers import Sample
from graft.prompts import OPTION_LETTERS
from graft.record_files import RecordError


def _strings(target: Any) -> list[str]:
    return [target] if isinstance(target, str) else list(target)


def _check_text(target: Any, where: str) -> None:
    ok = isinstance(target, str) or (
        isinstance(target, list) and target and all(isinstance(t, str) for t in target)
    )
    if not ok:
        raise RecordError(f"{where}: the target must be a string or a list of strings, got {target!r:.80}")


def _check_yes_no(target: Any, where: str) -> None:
    if not isinstance(target, str) or target.strip().lower() not in ("yes", "no"):
        raise RecordError(f"{where}: metric yes_no needs a yes/no target, got {target!r:.80}")


def _check_letter(target: Any, where: str, choices: Any) -> None:
    if not isinstance(choices, list) or len(choices) < 2:
        raise RecordError(f"{where}: metric choice needs a list of at least two options")
    if not isinstance(target, str) or target not in OPTION_LETTERS[: len(choices)]:
        raise RecordError(
            f"{where}: metric choice needs an option letter (A..{OPTION_LETTERS[len(choices) - 1]}) or an "
            f"option's text as target, got {target!r:.80}"
        )


def _exact_match(samples: list[Sample], got: Mapping[str, str | None], opts: Any) -> float:
    hits = [
        normalize_text(got[str(s.id)] or "") in {normalize_text(t) for t in _strings(s.target)}
        for s in samples
    ]
    return sum(hits) / len(hits) if hits else 0.0


def _yes_no(samples: list[Sample], got: Mapping[str, str | None], opts: Any) -> dict[str, Any]:
    kept = [s for s in samples if got[str(s.id)] is not None]
    answers = [got[str(s.id)] or "" for s in kept]
    out = binary_scores([s.target.strip().lower() for s in kept], [pope_yes_no(a) for a in answers])
    return out | {"empty": sum(not a.strip() for a in answers)}


def _choice(samples: list[Sample], got: Mapping[str, str | None], opts: Any) -> dict[str, Any]:
    rows = [
        ChoiceRow(s.id, got[str(s.id)] or "", s.target, s.meta["choices"], None, s.meta.get("category"))
        for s in samples
    ]
    out = choice_scores(rows)
    out.pop("samples")
    return out


def _rouge_l(samples: list[Sample], got: Mapping[str, str | None], opts: Any) -> float:
    scores = [
        max(rouge_l(demon_normalize(got[str(s.id)] or ""), demon_normalize(t)) for t in _strings(s.target))
        for s in samples
    ]
    return 100.0 * sum(scores) / len(scores) if scores else 0.0


def _caption(samples: list[Sample], got: Mapping[str, str | None], opts: Any) -> dict[str, Any]:
    refs = {str(s.id): _strings(s.target) for s in samples}
    preds = {str(s.id): got[str(s.id)] for s in samples if got[str(s.id)] is not None}
    return caption_scores(refs, preds, java=getattr(opts, "java", None))


@dataclass(frozen=True)
class Metric:
    score: Callable[[list[Sample], Mapping[str, str | None], Any], Any]
    check: Callable[[Any, str], None] | None = None  # (target, where); choice is checked apart
    needs_choices: bool = False


METRICS: dict[str, Metric] = {
    "exact_match": Metric(_exact_match, _check_text),
    "yes_no": Metric(_yes_no, _check_yes_no),
    "choice": Metric(_choice, needs_choices=True),
    "rouge_l": Metric(_rouge_l, _check_text),
    "caption": Metric(_caption, _check_text),
}


def check_sample(metrics: list[str], sample: Sample) -> None:
    """Raise ``RecordError`` (naming the sample's place) when a metric cannot score it."""
    for name in metrics:
        metric = METRICS[name]
        if metric.needs_choices:
            _check_letter(sample.target, sample.where, sample.meta.get("choices"))
        elif metric.check is not None:
            metric.check(sample.target, sample.where)
