"""Captioning metrics equal pycocoevalcap's own scorers (to 1e-6), and a missing Java is never silent."""

import logging
import shutil

import pytest

import graft.eval.metrics.caption as caption_mod
from graft.eval.metrics.caption import caption_scores, python_tokenize

REFS = {
    1: [
        "A man is riding a brown horse.",
        "A person rides a horse on the beach!",
        "Man on horseback, near the sea.",
    ],
    2: ["Two dogs playing in the snow.", "A pair of dogs run through snow."],
    3: ["A red car parked by the curb.", "The red car isn't moving (it's parked)."],
    4: ["A plate of food with broccoli and rice.", "Broccoli, rice, and chicken on a plate."],
}
PREDS = {
    1: "A man riding a horse on the beach.",
    2: "Dogs play in the snow",
    3: "A red car on the street.",
    4: "",  # an empty caption is scored (as nothing), not dropped
}


def _reference(refs, preds, tokenized=None, meteor=None):
    """pycocoevalcap called the way its COCOEvalCap.evaluate calls it (SPICE aside)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    if tokenized is None:
        tok = PTBTokenizer()
        gts = tok.tokenize({k: [{"caption": c} for c in refs[k]] for k in preds})
        res = tok.tokenize({k: [{"caption": preds[k]}] for k in preds})
        scorers = [(Bleu(4), ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"]), (meteor or Meteor(), "METEOR")]
    else:
        gts, res = tokenized
        scorers = [(Bleu(4), ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"])]
    scorers += [(Rouge(), "ROUGE_L"), (Cider(), "CIDEr")]
    out = {}
    for scorer, names in scorers:
        score, _ = scorer.compute_score(gts, res)
        if isinstance(names, list):
            out.update(zip(names, score, strict=True))
        else:
            out[names] = score
    return out


@pytest.mark.skipif(shutil.which("java") is None, reason="Java is needed for the PTB tokenizer and METEOR")
def test_equal_to_pycocoevalcap_with_java():
    from pycocoevalcap.meteor.meteor import Meteor

    # one METEOR process for both sides: its start (paraphrase tables) is the slow part
    meteor = Meteor()
    try:
        got = caption_scores(REFS, PREDS, meteor=meteor)
        want = _reference(REFS, PREDS, meteor=meteor)
    finally:
        meteor.meteor_p.stdin.close()
        meteor.meteor_p.kill()
        meteor.meteor_p.wait()
    assert got["tokenizer"] == "ptb" and "fallback" not in got and got["n"] == 4
    for name, value in want.items():
        assert got[name] == pytest.approx(value, abs=1e-6), name
    assert 0 < got["CIDEr"] and 0 < got["METEOR"] < 1


def test_without_java_is_marked_and_uses_the_same_scorers(monkeypatch):
    monkeypatch.setattr(caption_mod, "java_available", lambda: False)
    got = caption_scores(REFS, PREDS)
    assert got["tokenizer"] == "python" and "Java not found" in got["fallback"] and got["METEOR"] is None
    tokenized = (
        {k: [python_tokenize(c) for c in REFS[k]] for k in PREDS},
        {k: [python_tokenize(PREDS[k])] for k in PREDS},
    )
    want = _reference(REFS, PREDS, tokenized)
    for name, value in want.items():
        assert got[name] == pytest.approx(value, abs=1e-12), name


def test_python_tokenizer_follows_ptb_on_common_text():
    # outputs of Stanford's PTBTokenizer (-lowerCase) after pycocoevalcap drops punctuation
    assert python_tokenize("The man's dog isn't here, e.g. 3.5 U.S. x-ray (ok) \"quoted\" don't") == (
        "the man 's dog is n't here e.g. 3.5 u.s. x-ray -lrb- ok -rrb- quoted do n't"
    )
    assert python_tokenize("Two dogs playing in the snow.") == "two dogs playing in the snow"


def test_cider_depends_on_the_scored_set(monkeypatch):
    monkeypatch.setattr(caption_mod, "java_available", lambda: False)
    # CIDEr's document frequencies come from the scored set: one image alone scores 0
    alone = caption_scores({1: REFS[1]}, {1: REFS[1][0]})
    assert alone["CIDEr"] == 0.0 and alone["Bleu_4"] > 0.9


def test_bad_inputs():
    with pytest.raises(KeyError, match="no reference captions"):
        caption_scores(REFS, {99: "a cat"}, java=False)
    with pytest.raises(ValueError, match="no captions"):
        caption_scores(REFS, {}, java=False)


def test_missing_toolkit_says_how_to_install(monkeypatch):
    """Without pycocoevalcap (a broken installation), scoring names the package to install
    instead of failing on an import deep inside graft."""
    import sys

    for name in [m for m in sys.modules if m == "pycocoevalcap" or m.startswith("pycocoevalcap.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "pycocoevalcap", None)
    with pytest.raises(ModuleNotFoundError, match="pip install pycocoevalcap"):
        caption_scores(REFS, PREDS, java=False)
    with pytest.raises(ModuleNotFoundError, match="pip install pycocoevalcap"):
        python_tokenize("A red car.")


@pytest.mark.skipif(shutil.which("java") is None, reason="Java is needed for the PTB tokenizer")
def test_the_tokenizers_java_progress_line_goes_to_the_debug_log(capfd, caplog):
    caplog.set_level(logging.DEBUG, logger=caption_mod.__name__)
    gts, res = caption_mod._tokenize(REFS, PREDS, use_java=True)
    assert res[1] == ["a man riding a horse on the beach"]
    assert "PTBTokenizer" not in capfd.readouterr().err  # it printed straight onto the terminal
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any("PTBTokenizer tokenized" in message for message in debug)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
