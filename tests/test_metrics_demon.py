"""DEMON scoring: the benchmark's normalisation, its ROUGE-L, TF-IDF option matching, Image X."""

import json

import pytest
from typer.testing import CliRunner

from graft.cli import app
from graft.eval.answers import image_choice, named_image
from graft.eval.metrics.demon import (
    category_scores,
    normalize,
    rouge_l,
    score_sample,
    score_tasks,
    tfidf_choice,
)
from graft.eval.score import Options, score

from tiny import write_jsonl


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


def test_image_choice_by_the_benchmark_rule():
    # evaluate.py: the answer's first seven characters are the option, no second image a-d mentioned
    assert image_choice("image b") == "b" and image_choice("image b: the third step") == "b"
    assert image_choice("the answer is image b") is None
    assert image_choice("image b or image c") is None
    assert image_choice("image about cooking") == "a"  # its substring test, kept so numbers compare
    assert image_choice("image b shows an image about x") is None  # "image about" mentions image a
    assert image_choice("") is None and image_choice("b") is None


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
    assert score_sample("image-choice", "The answer is Image B.", "Image B", None)["score"] == 0.0
    assert score_sample("image-choice", "The answer is Image B.", "Image B", None, True)["score"] == 1.0
    # an empty answer is wrong (the script's argmax over an all-zero vector took the first option)
    assert score_sample("multi-choice", "", "soccer", ["soccer", "baseball"]) == {
        "score": 0.0,
        "picked": None,
    }
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
    assert tasks["NLVR2"] == {"metric": "accuracy", "score": 50.0, "n": 2, "empty": 0, "unmatched": 1}
    assert tasks["IEdit"]["empty"] == 1
    cats = category_scores(tasks)
    # a category's score is the mean of its own tasks' scores (the script gave all of them the last one's)
    assert cats["Visual Relation Inference"]["score"] == pytest.approx(50.0, abs=1e-5)
    assert set(cats["Visual Relation Inference"]["missing"]) == {"Birds-to-Words", "CLEVR-Change"}
    assert cats["Multi-Image Reasoning"]["score"] == 50.0
    assert cats["Multimodal Cloze"]["score"] == 100.0
    assert list(cats) == ["Visual Relation Inference", "Multimodal Cloze", "Multi-Image Reasoning"]


# The benchmark's worked examples (its README's RecipeQA_VisualCloze and COMICS_Panel samples,
# recipe text shortened; the options live only in the context), answered in many ways:
# (answer, right by evaluate.py, right when read leniently)
ANSWERS = [
    ("Image B", True, True),
    ("Image B.", True, True),
    ("image b: the step where the lid is cut", True, True),
    ("Image B is the one; image b again", True, True),
    ("The answer is Image B.", False, True),
    ("I choose Image B", False, True),
    ("Image B, not the image about cooking", False, True),  # "image about" holds "image a"
    ("Image B or Image C", False, False),
    ("Image A", False, False),
    ("B", False, False),
    ("", False, False),  # empty: wrong, and counted
]
WORKED = {
    "Multi-Modal Cloze/RecipeQA_VisualCloze": (
        "Recipe: drum-bbq-smoker-no-welding\nDetails: Step#1: Prep: First I sanded off the paint. \n"
        "Step#2: Cut Out the Lid: Using an angle grinder I cut out the lid. \n\n"
        "Recipe Image Series: {image#1} {image#2} {image#3} UNKNOWN\nChoice List:['Image A: {image#4}', "
        "'Image B: {image#5}', 'Image C: {image#6}', 'Image D: {image#7}']Your answer to replace "
        "'UNKNOWN' is:"
    ),
    "Multi-Modal Cloze/COMICS_Panel": (
        "{image#1}{image#2}{image#3}Choice List:['Image A: {image#4} ', ' Image B: {image#5} ', "
        "' Image C: {image#6} ', ' Image D: {image#7} ']Your answer is: "
    ),
}


def _worked_examples(root):
    """Both tasks, one sample per answer in ``ANSWERS``; no image on disk (scoring needs none)."""
    preds = {}
    for folder, context in WORKED.items():
        task = folder.split("/")[-1]
        data = [
            {
                "sample_id": i,
                "task_instruction_id": 0,
                "task_instance": {"context": context, "images_path": [f"{k}.jpg" for k in range(7)]},
                "response": "Image B",
            }
            for i in range(len(ANSWERS))
        ]
        meta = {"dataset": task, "task_instruction": ["Choose. "], "question_type": "multi-choice"}
        (root / folder / "core").mkdir(parents=True)
        (root / folder / "core" / "core.json").write_text(json.dumps({"metadata": meta, "data": data}))
        preds |= {f"{task}/{i}": answer for i, (answer, _, _) in enumerate(ANSWERS)}
    return preds


def test_worked_examples_by_the_official_rule_and_leniently(tmp_path):
    preds = _worked_examples(tmp_path / "DEMON")
    official = score("demon", tmp_path / "DEMON", preds)
    lenient = score("demon", tmp_path / "DEMON", preds, Options(lenient_image_choice=True))
    n = len(ANSWERS)
    for task in ("RecipeQA_VisualCloze", "COMICS_Panel"):
        want = 100.0 * sum(right for _, right, _ in ANSWERS) / n
        assert official["tasks"][task] == pytest.approx(want)
        assert official["details"]["tasks"][task] == {
            "metric": "accuracy",
            "score": pytest.approx(want),
            "n": n,
            "empty": 1,
            "unmatched": 6,  # all but the right ones and "Image A" pick no image
        }
        want = 100.0 * sum(right for _, _, right in ANSWERS) / n
        assert lenient["tasks"][task] == pytest.approx(want)
        assert lenient["details"]["tasks"][task]["metric"] == "accuracy_lenient"
    assert official["image_choice_rule"] == "official" and lenient["image_choice_rule"] == "lenient"
    assert official["categories"]["Multimodal Cloze"] == pytest.approx(100.0 * 4 / n)
    assert official["counts"]["empty"] == 2

    # the command line: the lenient reading only on request, and marked
    rows = [{"id": k, "prediction": v} for k, v in preds.items()]
    args = ["score", "--task", "demon", "--data", str(tmp_path / "DEMON")]
    args += ["--predictions", str(write_jsonl(tmp_path / "p.jsonl", rows)), "--lenient-image-choice"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["image_choice_rule"] == "lenient" and out["tasks"] == lenient["tasks"]
