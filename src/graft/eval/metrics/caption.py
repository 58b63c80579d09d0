"""Captioning metrics exactly as the COCO caption toolkit (``pycocoevalcap``) computes them.

PTB tokenization (Stanford CoreNLP, lower-cased, punctuation tokens dropped), then BLEU-1..4
(corpus level, closest reference length), METEOR 1.5, ROUGE-L (beta 1.2) and CIDEr-D over the
scored set. SPICE is left out (it needs Stanford models fetched at run time).

PTB tokenization and METEOR run Java. Without Java the scores are still computed, with a Python
tokenizer that approximates PTB and without METEOR, and the result says so under ``fallback``:
such numbers are close to, not equal to, the reference, and never pass silently as such.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

logger = logging.getLogger(__name__)
METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")
NO_JAVA = (
    "Java not found: PTB tokenization approximated in Python and METEOR skipped "
    "(scores are not the reference's)"
)
# clitics, abbreviations (e.g.), numbers (3.5), hyphenated words, then single punctuation marks
_TOKEN = re.compile(
    r"n't|'[a-z]+|[a-z0-9]+(?=n't)|(?:[a-z]\.){2,}|[0-9]+(?:[.,][0-9]+)+|[a-z0-9]+(?:-[a-z0-9]+)*|[^\sa-z0-9]"
)
_PTB_PROGRESS = re.compile(r"PTBTokenizer tokenized \d+ tokens at [\d.]+ tokens per second\.?")
# PTB writes brackets as -LRB- etc. and, lower-casing, keeps them (pycocoevalcap drops only upper-case ones)
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "{": "-lcb-", "}": "-rcb-", "[": "-lsb-", "]": "-rsb-", '"': "''"}


def toolkit(module: str, name: str) -> Any:
    """``name`` from ``pycocoevalcap.<module>``, or a ModuleNotFoundError that says how to install
    the toolkit (graft declares it; only a broken installation lacks it)."""
    try:
        return getattr(importlib.import_module(f"pycocoevalcap.{module}"), name)
    except ModuleNotFoundError as err:
        if not (err.name or "").startswith("pycocoevalcap"):
            raise
        raise ModuleNotFoundError(
            "captioning scores need the COCO caption toolkit, which this environment lacks: "
            "pip install pycocoevalcap",
            name=err.name,
        ) from err


def java_available() -> bool:
    return shutil.which("java") is not None


def python_tokenize(text: str) -> str:
    """A stand-in for PTB tokenization: lower-case, split off punctuation and clitics, drop the
    punctuation tokens pycocoevalcap drops."""
    punctuations = toolkit("tokenizer.ptbtokenizer", "PUNCTUATIONS")
    tokens = [_BRACKETS.get(t, t) for t in _TOKEN.findall(text.lower().replace("\n", " "))]
    return " ".join(t for t in tokens if t not in punctuations)


@contextlib.contextmanager
def _java_stderr_logged() -> Iterator[None]:
    """The PTB tokenizer's Java writes a progress line to the process's stderr (file descriptor 2,
    past Python's ``sys.stderr``): catch what it writes and log it, that line at debug level and
    anything else (a Java failure) as a warning."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            for line in caught.read().decode("utf-8", errors="replace").splitlines():
                if _PTB_PROGRESS.fullmatch(line.strip()):
                    logger.debug("%s", line.strip())
                elif line.strip():
                    logger.warning("PTB tokenizer (Java): %s", line)


def _tokenize(
    refs: Mapping[Any, Sequence[str]], preds: Mapping[Any, str], use_java: bool
) -> tuple[dict, dict]:
    if use_java:
        # one Java run for references and predictions together (the tokenizer works line by line)
        both = {("ref", k): [{"caption": c} for c in refs[k]] for k in preds}
        both |= {("pred", k): [{"caption": preds[k]}] for k in preds}
        with _java_stderr_logged():
            tokens = toolkit("tokenizer.ptbtokenizer", "PTBTokenizer")().tokenize(both)
        return {k: tokens[("ref", k)] for k in preds}, {k: tokens[("pred", k)] for k in preds}
    return (
        {k: [python_tokenize(c) for c in refs[k]] for k in preds},
        {k: [python_tokenize(preds[k])] for k in preds},
    )


def _meteor(gts: dict, res: dict, scorer: Any = None) -> float:
    if scorer is not None:
        return float(scorer.compute_score(gts, res)[0])
    scorer = toolkit("meteor.meteor", "Meteor")()
    try:
        score, _ = scorer.compute_score(gts, res)
    finally:
        # end the Java process now rather than whenever the object is collected
        scorer.meteor_p.stdin.close()
        scorer.meteor_p.kill()
        scorer.meteor_p.wait()
    return float(score)


def caption_scores(
    refs: Mapping[Any, Sequence[str]],
    preds: Mapping[Any, str],
    java: bool | None = None,
    meteor: Any = None,
) -> dict[str, Any]:
    """COCO metrics of ``preds`` (id -> caption) against ``refs`` (id -> reference captions).

    Every id of ``preds`` must be in ``refs``; CIDEr's document frequencies come from the
    references of exactly the ids scored. ``java=None`` uses Java when it is on the PATH.
    ``meteor``: a running pycocoevalcap ``Meteor`` to reuse (its Java start takes seconds);
    by default one is started and stopped for this call.
    Returns ``{"Bleu_1".."Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "n", "tokenizer"}`` plus
    ``"fallback"`` (why) when Java was not used; METEOR is then ``None``.
    """
    bleu_scorer, cider, rouge = (toolkit(f"{m}.{m}", m.capitalize()) for m in ("bleu", "cider", "rouge"))
    unknown = [k for k in preds if k not in refs]
    if unknown:
        raise KeyError(f"{len(unknown)} prediction id(s) have no reference captions, e.g. {unknown[:3]}")
    empty = [k for k in preds if not refs[k]]
    if empty:
        raise ValueError(f"{len(empty)} id(s) have no reference caption, e.g. {empty[:3]}")
    if not preds:
        raise ValueError("no captions to score")
    use_java = java_available() if java is None else java
    if not use_java:
        logger.warning(NO_JAVA)
    # the toolkit prints progress on stdout; keep stdout for our results
    with contextlib.redirect_stdout(sys.stderr):
        gts, res = _tokenize(refs, preds, use_java)
        bleu, _ = bleu_scorer(4).compute_score(gts, res, verbose=0)
        out: dict[str, Any] = {f"Bleu_{i + 1}": float(b) for i, b in enumerate(bleu)}
        out["METEOR"] = _meteor(gts, res, meteor) if use_java else None
        out["ROUGE_L"] = float(rouge().compute_score(gts, res)[0])
        out["CIDEr"] = float(cider().compute_score(gts, res)[0])
    out["n"] = len(preds)
    out["tokenizer"] = "ptb" if use_java else "python"
    if not use_java:
        out["fallback"] = NO_JAVA
    return out
