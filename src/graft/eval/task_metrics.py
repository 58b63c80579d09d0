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
from typing import Any, NamedTuple

from graft.eval.answers import normalize_text, pope_yes_no
from graft.eval.families import Scorer, caption, choice_rows, strings
from graft.eval.metrics import choice_scores, rouge_l
from graft.eval.metrics.demon import normalize as demon_normalize
from graft.eval.metrics.pope import binary_scores
from graft.eval.readers import Sample
from graft.prompts import OPTION_LETTERS
from graft.record_files import RecordError


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
        normalize_text(got[str(s.id)] or "") in {normalize_text(t) for t in strings(s.target)}
        for s in samples
    ]
    return sum(hits) / len(hits) if hits else 0.0


def _yes_no(samples: list[Sample], got: Mapping[str, str | None], opts: Any) -> dict[str, Any]:
    kept = [s for s in samples if got[str(s.id)] is not None]
    answers = [got[str(s.id)] or "" for s in kept]
    out = binary_scores([s.target.strip().lower() for s in kept], [pope_yes_no(a) for a in answers])
    return out | {"empty": sum(not a.strip() for a in answers)}


def _choice(samples: list[Sample], got: Mapping[str, str | None], opts: Any) -> dict[str, Any]:
    out = choice_scores(choice_rows(samples, got))
    out.pop("samples")
    return out


def _rouge_l(samples: list[Sample], got: Mapping[str, str | None], opts: Any) -> float:
    scores = [
        max(rouge_l(demon_normalize(got[str(s.id)] or ""), demon_normalize(t)) for t in strings(s.target))
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
    "caption": Metric(caption, _check_text),
}


def check_sample(metrics: list[str], sample: Sample) -> None:
    """Raise ``RecordError`` (naming the sample's place) when a metric cannot score it."""
    for name in metrics:
        METRICS[name].check(sample)
