"""MME scoring by the official calculation.py rules, on worked examples."""

import pytest

from graft.eval.answers import mme_yes_no
from graft.eval.metrics.mme import mme_scores
from graft.eval.readers.mme import MMEResult, read_results, write_results


def test_official_answer_parsing():
    # exactly yes/no, else the first four characters decide, else "other" (always wrong)
    assert mme_yes_no("Yes") == "yes" and mme_yes_no("NO") == "no"
    assert mme_yes_no("Yes, there is a dog.") == "yes"
    assert mme_yes_no("Nope") == "no"
    assert mme_yes_no("Not sure") == "no"  # "not " holds "no"
    assert mme_yes_no("Yesterday") == "yes"
    assert mme_yes_no("I think yes") == "other"  # "i th"
    assert mme_yes_no("There is no dog") == "other"
    assert mme_yes_no("") == "other"


def _rows(subtask, answers):
    """answers: {image: [(truth, prediction), (truth, prediction)]}"""
    return [
        MMEResult(subtask, image, f"q{k}", truth, pred)
        for image, pair in answers.items()
        for k, (truth, pred) in enumerate(pair)
    ]


# subtask -> {image: [(truth, prediction), (truth, prediction)]}; also scored from question files
# without images in test_score_no_images.py
WORKED = {
    "existence": {
        "1.jpg": [("yes", "Yes"), ("no", "No")],  # both right
        "2.jpg": [("yes", "yes, there is"), ("no", "Nope")],  # both right
        "3.jpg": [("yes", "I think yes"), ("no", "no")],  # one right ("other")
    },
    "count": {"a.png": [("yes", "no"), ("no", "yes")]},  # both wrong
    "code_reasoning": {"c.png": [("no", "No."), ("yes", "Yes.")]},
}


def check_worked_example(out):
    """The numbers the official calculation.py gives on ``WORKED``."""
    ex = out["details"]["existence"]
    assert ex["acc"] == pytest.approx(100 * 5 / 6) and ex["acc_plus"] == pytest.approx(100 * 2 / 3)
    assert ex["other"] == 1 and ex["images"] == 3
    assert out["existence"] == pytest.approx(100 * 5 / 6 + 100 * 2 / 3)
    assert out["count"] == 0.0
    assert out["code_reasoning"] == 200.0
    assert out["perception"] == pytest.approx(out["existence"] + out["count"])
    assert out["cognition"] == 200.0
    assert "position" in out["details"]["missing"] and "existence" not in out["details"]["missing"]
    # subtasks come in the official order
    assert [k for k in out if k not in ("perception", "cognition", "details", "counts")] == [
        "existence",
        "count",
        "code_reasoning",
    ]


def test_acc_acc_plus_and_totals():
    check_worked_example(mme_scores([r for sub, answers in WORKED.items() for r in _rows(sub, answers)]))


def test_a_broken_pair_is_an_error():
    rows = _rows("color", {"1.jpg": [("yes", "yes")]})
    with pytest.raises(ValueError, match="color/1.jpg: 1 question"):
        mme_scores(rows)


def test_result_files_round_trip(tmp_path):
    rows = _rows(
        "existence", {"b.jpg": [("yes", "Yes\nthere is"), ("no", "no")], "a.jpg": [("no", "x"), ("yes", "y")]}
    )
    paths = write_results(tmp_path / "res", rows)
    lines = paths[0].read_text().splitlines()
    # the official layout: image, question, truth, answer; an image's pair adjacent; one line per question
    assert lines[0].split("\t") == ["a.jpg", "q0", "No", "x"]
    assert lines[2].split("\t") == ["b.jpg", "q0", "Yes", "Yes there is"]
    back = read_results(tmp_path / "res")
    assert mme_scores(back)["existence"] == mme_scores(rows)["existence"] == pytest.approx(50.0 + 50.0)
