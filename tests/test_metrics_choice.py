"""Multiple choice: letter extraction and circular evaluation."""

import pytest

from graft.eval.answers import sqa_letter
from graft.eval.metrics.choice import ChoiceRow, choice_scores, extract_choice

OPTS = ["red", "blue", "green", "yellow"]


@pytest.mark.parametrize(
    ("answer", "want"),
    [
        ("B", "B"),
        ("B.", "B"),
        ("C. green", "C"),
        ("The answer is D", "D"),
        ("The answer is A.", "A"),
        ("(B) blue", "B"),
        ("It is green.", "C"),  # option text, uniquely contained
        ("A red circle", "A"),  # no letter ("A" is the article), "red" is option A's text
        ("red or blue", None),  # two options named: no pick
        ("purple", None),
        ("", None),
        ("E", None),  # not an option
    ],
)
def test_extract_choice(answer, want):
    assert extract_choice(answer, OPTS) == want


def test_fallback_only_when_nothing_found():
    calls = []

    def fallback(answer, choices):
        calls.append(answer)
        return "D" if "sun" in answer else "Z"

    assert extract_choice("B", OPTS, fallback) == "B"
    assert extract_choice("the colour of the sun", OPTS, fallback) == "D"
    assert extract_choice("no idea", OPTS, fallback) is None  # Z is not an option
    assert extract_choice("   ", OPTS, fallback) is None  # an empty answer is not sent
    assert calls == ["the colour of the sun", "no idea"]


def test_circular_evaluation():
    rot = OPTS[1:] + OPTS[:1]  # the copy with options rotated: "red" is now D
    rows = [
        # question 7 and its circular copy 1000007: right both times
        ChoiceRow(7, "A", "A", OPTS, group=7 % 1_000_000, category="color"),
        ChoiceRow(1_000_007, "D", "D", rot, group=1_000_007 % 1_000_000, category="color"),
        # question 8: right once, wrong on the copy -> wrong under circular evaluation
        ChoiceRow(8, "B", "B", OPTS, group=8, category="shape"),
        ChoiceRow(1_000_008, "B", "A", rot, group=1_000_008 % 1_000_000, category="shape"),
    ]
    out = choice_scores(rows, circular=True)
    assert out["accuracy"] == pytest.approx(75.0)
    assert out["circular_accuracy"] == pytest.approx(50.0) and out["groups"] == 2
    assert out["per_category"] == {"color": 100.0, "shape": 0.0}
    plain = choice_scores(rows)
    assert "circular_accuracy" not in plain and plain["per_category"]["shape"] == 50.0


def test_scienceqa_reading_is_llavas_strict_one():
    three = ["x", "y", "z"]
    assert sqa_letter("B", three) == "B"
    assert sqa_letter("C. z", three) == "C"
    assert sqa_letter("Because of y. The answer is B.", three) == "B"
    assert sqa_letter("The answer is B", three) is None  # the reference's pattern wants a character after it
    assert sqa_letter("D", three) is None  # not one of three options
    assert sqa_letter("y", three) is None  # option text alone does not count here
    assert sqa_letter("The answer is A. The answer is B.", three) is None
    rows = [ChoiceRow(1, "y", "B", three), ChoiceRow(2, "B", "B", three)]
    assert choice_scores(rows, extract=sqa_letter)["accuracy"] == 50.0
    assert choice_scores(rows)["accuracy"] == 100.0
