"""Issue 4's bad input, through ``run_task``: a task file naming a missing image, a DEMON context
whose ``{image#k}`` has no file, an empty prediction, a judge that is down or answers garbage.
Each gives a clear message and a count, and the run goes on for the other samples."""

import json
import socket

import pytest
import torch

import graft.eval.predict as predict_mod
from graft.eval.metrics import JudgeConfig
from graft.eval.runner import run_task
from graft.eval.score import Options
from graft.generate import Reply
from graft.record_files import RecordError

from judge_server import JudgeServer
from tiny import tiny_model_and_processor, write_image, write_jsonl

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny():
    return tiny_model_and_processor()


@pytest.fixture
def answers(monkeypatch):
    """Generation replaced by a script: the answer is looked up by a word of the prompt."""
    script: dict[str, str] = {}

    def fake(model, processor, convs, images, **kw):
        text = [c[-1].content for c in convs]
        return [Reply(next((a for k, a in script.items() if k in t), "Yes")) for t in text]

    monkeypatch.setattr(predict_mod, "generate_replies", fake)
    return script


def test_missing_image_in_a_task_file(tiny, tmp_path, answers):
    model, processor = tiny
    write_image(tmp_path / "images" / "a.png")
    rows = [{"question_id": i, "image": "a.png", "text": f"Q{i}?", "label": "yes"} for i in range(3)]
    rows[1]["image"] = "gone.png"
    data = write_jsonl(tmp_path / "coco_pope_random.json", rows)
    with pytest.raises(RecordError, match=rf"{data}:2: image not found: .*gone.png"):
        run_task(model, processor, "pope", data, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "pope" / "predictions.jsonl").exists()  # found before generating
    res = run_task(model, processor, "pope", data, tmp_path / "out", skip_bad=True, progress=False)
    counts = res["metrics"]["counts"]
    assert counts["bad_records"] == 1 and counts["samples"] == 2 and res["metrics"]["random"]["n"] == 2


def test_an_image_gone_after_reading_is_counted(tiny, tmp_path, answers, monkeypatch):
    """An image deleted between reading and answering: skipped, counted, the rest answered."""
    model, processor = tiny
    for i in range(3):
        write_image(tmp_path / "images" / f"{i}.png")
    rows = [{"question_id": i, "image": f"{i}.png", "text": "Q?", "label": "no"} for i in range(3)]
    data = write_jsonl(tmp_path / "coco_pope_random.json", rows)
    real = predict_mod.load_image
    monkeypatch.setattr(
        predict_mod, "load_image", lambda p: real(tmp_path / "gone.png" if str(p).endswith("1.png") else p)
    )
    res = run_task(model, processor, "pope", data, tmp_path / "out", skip_bad=True, progress=False)
    assert res["prediction_counts"]["bad"] == 1 and res["prediction_counts"]["written"] == 2
    assert res["metrics"]["counts"]["missing"] == 1 and res["metrics"]["random"]["n"] == 2


def test_demon_placeholder_without_a_file(tiny, tmp_path, answers):
    model, processor = tiny
    core = tmp_path / "demon" / "Spot-the-Diff" / "core"
    write_image(core / "images" / "0.jpg")
    write_image(core / "images" / "1.jpg")

    def sample(i, context):
        instance = {"context": context, "images_path": ["0.jpg", "1.jpg"]}
        return {"sample_id": i, "task_instruction_id": 0, "task_instance": instance, "response": "moved"}

    data = [sample(0, "{image#1}{image#2} What changed?"), sample(1, "{image#1}{image#3} What changed?")]
    meta = {"task_instruction": ["Compare. "], "question_type": "open-ended"}
    (core / "core.json").write_text(json.dumps({"metadata": meta, "data": data}))
    with pytest.raises(RecordError, match=r"data\[1\] \(sample_id 1\): \{image#3\} in the context"):
        run_task(model, processor, "demon", tmp_path / "demon", tmp_path / "out", progress=False)
    answers["changed"] = "Moved."
    res = run_task(
        model, processor, "demon", tmp_path / "demon", tmp_path / "out", skip_bad=True, progress=False
    )
    assert res["metrics"]["counts"]["bad_records"] == 1 and res["metrics"]["counts"]["samples"] == 1
    assert res["metrics"]["tasks"]["Spot-the-Diff"] == pytest.approx(100.0, abs=1e-4)


def test_empty_predictions_are_counted_and_scored_by_the_family_rule(tiny, tmp_path, answers):
    model, processor = tiny
    write_image(tmp_path / "images" / "a.png")
    rows = [{"question_id": i, "image": "a.png", "text": f"Question {i}?", "label": "no"} for i in range(4)]
    data = write_jsonl(tmp_path / "coco_pope_random.json", rows)
    answers["Question 2"] = ""
    answers["Question"] = "No."
    res = run_task(model, processor, "pope", data, tmp_path / "out", progress=False)
    m = res["metrics"]
    assert m["counts"]["empty"] == 1 and m["random"]["empty"] == 1
    # POPE reads an empty answer as yes (the reference's rule): 3 of 4 right
    assert m["random"]["accuracy"] == 0.75 and m["random"]["n"] == 4


def _llava_bench(root):
    write_image(root / "images" / "001.jpg")
    cats = ["conv", "detail", "complex"]
    write_jsonl(
        root / "questions.jsonl",
        [{"question_id": i, "image": "001.jpg", "text": f"Q{i}?", "category": c} for i, c in enumerate(cats)],
    )
    write_jsonl(root / "context.jsonl", [{"image": "001.jpg", "caption": "A green square."}])
    write_jsonl(
        root / "answers_gpt4.jsonl", [{"question_id": i, "text": "A green square."} for i in range(3)]
    )
    return root


def test_judge_garbage_or_down_is_counted_and_the_run_finishes(tiny, tmp_path, answers):
    model, processor = tiny
    data = _llava_bench(tmp_path / "bench")
    answers.update({"Q0": "score=6", "Q1": "GARBAGE", "Q2": "DOWN"})
    with JudgeServer() as server:
        judge = JudgeConfig(model="m", base_url=server.base_url, retries=0, backoff=0.01)
        res = run_task(
            model, processor, "llava_bench", data, tmp_path / "o", options=Options(judge), progress=False
        )
    m = res["metrics"]
    assert m["counts"]["judged"] == 1 and m["counts"]["unparseable"] == 1 and m["counts"]["failed"] == 1
    assert m["conv"] == pytest.approx(75.0) and m["detail"] is None and m["complex"] is None
    assert json.loads((tmp_path / "o" / "llava_bench" / "results.json").read_text())["metrics"] == m

    # nothing listening at all: nothing was judged, so the run fails without a results file of
    # nulls; the answers stay for a rerun with the judge fixed
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    judge = JudgeConfig(model="m", base_url=f"http://127.0.0.1:{port}/v1", retries=0, timeout=2)
    with pytest.raises(ValueError, match=r"all 3 judge requests failed .*; no score written"):
        run_task(
            model, processor, "llava_bench", data, tmp_path / "o2", options=Options(judge), progress=False
        )
    assert not (tmp_path / "o2" / "llava_bench" / "results.json").exists()
    assert len((tmp_path / "o2" / "llava_bench" / "predictions.jsonl").read_text().splitlines()) == 3


def test_a_missing_judge_fails_before_generating(tiny, tmp_path, answers):
    model, processor = tiny
    data = _llava_bench(tmp_path / "bench")
    with pytest.raises(ValueError, match="task llava_bench needs an LLM judge"):
        run_task(model, processor, "llava_bench", data, tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()
