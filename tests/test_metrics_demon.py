"""DEMON scoring: the benchmark's normalisation, its ROUGE-L, TF-IDF option matching, Image X."""

import pytest

from graft.eval.metrics.demon import (
    category_scores,
    named_image,
    normalize,
    rouge_l,
    score_sample,
    score_tasks,
    tfidf_choice,
)


def test_normalize_like_the_benchmark():
    assert normalize("The cat, on the mat.") == "the cat on the mat"
    assert normalize("x-ray (left)") == "x ray left"  # a mark beside a space goes, others split words
    assert normalize("1,000 dogs - and cats!") == "1000 dogs  and cats"  # a 1,000 number: marks dropped
    assert normalize("It costs 3.5 dollars.") == "it costs 3.5 dollars"
    assert normalize("'Image B'\n") == "image b"
    # every period goes (the script's re.sub got re.UNICODE as its count: only 32 did)
    assert normalize("a. " * 40).count(".") == 0


# expected values: the `rouge` package (1.0.1), which the benchmark scores with
@pytest.mark.parametrize(
    ("hyp", "ref", "want"),
    [
        ("the man walks the dog then he sits", "a man walks his dog and then sits down", 0.6249999950781252),
        ("there is a red cube on the left", "the red cube is on the left side", 0.6666666616888889),
        # by hand: 3 word types, LCS "the car moved": P = 1, R = 3/7, F = 0.6 (less 1e-8 smoothing)
        ("the car moved", "the blue car has moved to the right", 0.5999999958),
        # a decimal keeps its period, which splits sentences
        ("3.5 dogs ran cats sat", "dogs ran and 3.5 cats sat", 0.9230769181065088),
    ],
)
def test_rouge_l_equals_the_rouge_package(hyp, ref, want):
    assert rouge_l(hyp, ref) == pytest.approx(want, abs=1e-12)


def test_tfidf_option_matching():
    options = ["soccer", "baseball", "basketball", "football"]
    assert tfidf_choice("i think the answer is baseball", options) == 1
    assert tfidf_choice("sports", options) is None  # shares no word: no option (the script took the first)
    assert tfidf_choice("baseball or football", options) is None  # a tie picks none
    # one-letter options leave TF-IDF no vocabulary: exact match decides
    assert tfidf_choice("b", ["a", "b"]) == 1
    assert tfidf_choice("c", ["a", "b"]) is None


def test_named_image():
    assert named_image("the answer is image b") == "b"
    assert named_image("image b or image c") is None
    assert named_image("an image about cooking") is None
    assert named_image("image b and again image b") == "b"


def test_score_sample_by_kind():
    assert score_sample("open-ended", "", "a red cube", None)["score"] == 0.0
    assert score_sample("open-ended", "A red cube.", "a red cube", None)["score"] == pytest.approx(
        1.0, abs=1e-7
    )
    mc = score_sample("multi-choice", "Baseball!", "baseball", ["soccer", "Baseball"])
    assert mc == {"score": 1.0, "picked": 1}
    assert score_sample("image-choice", "Image B.", "Image B", None)["score"] == 1.0
    assert score_sample("image-choice", "B", "Image B", None)["score"] == 0.0
    with pytest.raises(ValueError, match="not one of the options"):
        score_sample("multi-choice", "x", "cricket", ["soccer", "baseball"])
    with pytest.raises(ValueError, match="names no 'Image X'"):
        score_sample("image-choice", "x", "the second one", None)


def test_tasks_and_categories_each_their_own():
    rows = [
        {
            "task": "Spot-the-Diff",
            "kind": "open-ended",
            "prediction": "the car moved",
            "response": "the car moved",
        },
        {"task": "IEdit", "kind": "open-ended", "prediction": "", "response": "make it blue"},
        {
            "task": "NLVR2",
            "kind": "multi-choice",
            "prediction": "yes",
            "response": "yes",
            "choices": ["yes", "no"],
        },
        {
            "task": "NLVR2",
            "kind": "multi-choice",
            "prediction": "maybe",
            "response": "no",
            "choices": ["yes", "no"],
        },
        {
            "task": "RecipeQA_VisualCloze",
            "kind": "image-choice",
            "prediction": "Image A",
            "response": "Image A",
        },
    ]
    tasks = score_tasks(rows)
    assert tasks["Spot-the-Diff"]["score"] == pytest.approx(100.0, abs=1e-5)
    assert tasks["IEdit"]["score"] == 0.0 and tasks["IEdit"]["metric"] == "ROUGE_L"
    assert tasks["NLVR2"] == {"metric": "accuracy", "score": 50.0, "n": 2, "unmatched": 1}
    cats = category_scores(tasks)
    # a category's score is the mean of its own tasks' scores (the script gave all of them the last one's)
    assert cats["Visual Relation Inference"]["score"] == pytest.approx(50.0, abs=1e-5)
    assert set(cats["Visual Relation Inference"]["missing"]) == {"Birds-to-Words", "CLEVR-Change"}
    assert cats["Multi-Image Reasoning"]["score"] == 50.0
    assert cats["Multimodal Cloze"]["score"] == 100.0
    assert list(cats) == ["Visual Relation Inference", "Multimodal Cloze", "Multi-Image Reasoning"]
