"""POPE scoring by LLaVA's eval_pope.py rules, on a worked example."""

import pytest

from graft.eval.answers import pope_yes_no
from graft.eval.metrics.pope import pope_scores


def test_reference_parsing():
    assert pope_yes_no("Yes, there is a dog.") == "yes"
    assert pope_yes_no("No. There is a dog.") == "no"
    assert pope_yes_no("There is no cat in the image") == "no"
    assert pope_yes_no("It is not there") == "no"
    assert pope_yes_no("I see a cat. No doubt about it") == "yes"  # only the first sentence counts
    assert pope_yes_no("No, there is not") == "no"  # the comma is dropped
    # the reference's quirks, kept so numbers compare: exact words only
    assert pope_yes_no("NO") == "yes" and pope_yes_no("Nope") == "yes" and pope_yes_no("") == "yes"


# (split, label, answer); also scored from files without images in test_score_no_images.py
WORKED = [
    ("random", "yes", "Yes, there is a dog."),
    ("random", "yes", "No."),
    ("random", "no", "There is no cat"),
    ("random", "no", "not at all"),
    ("random", "yes", "I see a cat. No doubt"),
    ("adversarial", "no", "Yes"),
    ("adversarial", "no", ""),
]


def check_worked_example(out):
    """The numbers LLaVA's eval_pope.py gives on ``WORKED``."""
    assert set(out) - {"counts"} == {"random", "adversarial"}
    r = out["random"]
    assert (r["TP"], r["FP"], r["TN"], r["FN"]) == (2, 0, 2, 1)
    assert r["accuracy"] == pytest.approx(0.8)
    assert r["precision"] == pytest.approx(1.0)
    assert r["recall"] == pytest.approx(2 / 3)
    assert r["f1"] == pytest.approx(0.8)
    assert r["yes_ratio"] == pytest.approx(0.4)  # predicted yes, not labelled yes
    a = out["adversarial"]
    # no true yes at all: the reference would divide by zero; here 0.0
    assert a["recall"] == 0.0 and a["f1"] == 0.0 and a["accuracy"] == 0.0 and a["yes_ratio"] == 1.0
    assert a["empty"] == 1 and r["empty"] == 0


def test_worked_example_per_split():
    out = pope_scores(WORKED)
    check_worked_example(out)
    assert list(out) == ["random", "adversarial"]
