"""``graft score``: real benchmark files + a predictions JSONL -> one JSON object on stdout."""

import json

import pytest
from PIL import Image
from typer.testing import CliRunner

import graft.eval.metrics.caption as caption_mod
from graft.cli import app
from graft.eval.score import score

from judge_server import JudgeServer
from tiny import write_image, write_jsonl


def _run(*args):
    result = CliRunner().invoke(app, ["score", *map(str, args)])
    return result, (json.loads(result.stdout) if result.exit_code == 0 else None)


def test_pope(tmp_path):
    write_image(tmp_path / "pope" / "images" / "a.jpg")
    q = {"image": "a.jpg", "text": "Is there a dog in the image?"}
    write_jsonl(
        tmp_path / "pope" / "coco_pope_random.json",
        [q | {"question_id": i, "label": lab} for i, lab in [(1, "yes"), (2, "no")]],
    )
    write_jsonl(tmp_path / "pope" / "coco_pope_popular.json", [q | {"question_id": 1, "label": "no"}])
    preds = write_jsonl(
        tmp_path / "preds.jsonl",
        [{"id": "random/1", "prediction": "Yes."}, {"id": "random/2", "prediction": "No, there is not."}],
    )
    result, out = _run("--task", "pope", "--data", tmp_path / "pope", "--predictions", preds)
    assert result.exit_code == 0, result.output
    assert (
        out["random"]["accuracy"] == 1.0 and out["random"]["f1"] == 1.0 and out["random"]["yes_ratio"] == 0.5
    )
    assert "popular" not in out  # its one question has no answer: left out, counted
    assert out["counts"] == {"samples": 3, "missing": 1, "empty": 0, "unknown_ids": 0, "bad_records": 0}


def test_mme_from_answers_and_from_result_files(tmp_path):
    data = tmp_path / "MME"
    for sub, stem in [("existence", "1"), ("code_reasoning", "2")]:
        write_image(data / sub / f"{stem}.png")
        (data / sub / f"{stem}.txt").write_text(
            "Q one? Please answer yes or no.\tYes\nQ two? Please answer yes or no.\tNo\n"
        )
    preds = write_jsonl(
        tmp_path / "preds.jsonl",
        [
            {"id": "existence/1.png/0", "prediction": "Yes"},
            {"id": "existence/1.png/1", "prediction": "No"},
            {"id": "code_reasoning/2.png/0", "prediction": "yes"},
            {"id": "code_reasoning/2.png/1", "prediction": "Yes"},
        ],
    )
    result, out = _run("--task", "mme", "--data", data, "--predictions", preds)
    assert result.exit_code == 0, result.output
    assert out["perception"] == 200.0 and out["existence"] == 200.0
    assert out["cognition"] == 50.0 and out["code_reasoning"] == 50.0  # acc 50 + acc+ 0

    # the official tool's result layout scores the same, without the data folder
    res = tmp_path / "results"
    res.mkdir()
    (res / "existence.txt").write_text("1.png\tQ one?\tYes\tYes\n1.png\tQ two?\tNo\tNo\n")
    (res / "code_reasoning.txt").write_text("2.png\tQ one?\tYes\tyes\n2.png\tQ two?\tNo\tYes\n")
    result, again = _run("--task", "mme", "--predictions", res)
    assert result.exit_code == 0, result.output
    assert (again["perception"], again["cognition"]) == (200.0, 50.0)


def test_demon_per_task_and_category(tmp_path):
    root = tmp_path / "DEMON"
    for task, qtype, response, extra in [
        ("Spot-the-Diff", "open-ended", "the red car moved", {}),
        ("NLVR2", "multi-choice", "true", {"choice_list": ["true", "false"]}),
    ]:
        core = root / task / "core"
        write_image(core / "images" / "0.jpg")
        sample = {
            "sample_id": 0,
            "task_instruction_id": 0,
            "task_instance": {"context": "{image#1} Question?", "images_path": ["0.jpg"]} | extra,
            "response": response,
        }
        meta = {"task_instruction": ["Answer. "], "question_type": qtype}
        (core / "core.json").write_text(json.dumps({"metadata": meta, "data": [sample]}))
    preds = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"id": "Spot-the-Diff/0", "prediction": "The car moved."},
            {"id": "NLVR2/0", "prediction": "It is true."},
        ],
    )
    result, out = _run("--task", "demon", "--data", root, "--predictions", preds)
    assert result.exit_code == 0, result.output
    # ROUGE-L: 3 of 3 hypothesis types, 3 of 4 reference types: F = 2 * 1 * 0.75 / 1.75
    assert out["tasks"]["Spot-the-Diff"] == pytest.approx(100 * 1.5 / 1.75, abs=1e-4)
    assert out["tasks"]["NLVR2"] == 100.0
    assert out["categories"] == {
        "Visual Relation Inference": out["tasks"]["Spot-the-Diff"],
        "Multi-Image Reasoning": 100.0,
    }


def test_captions_without_java_are_marked(tmp_path, monkeypatch):
    monkeypatch.setattr(caption_mod, "java_available", lambda: False)
    for i in (1, 2):
        write_image(tmp_path / "images" / f"{i}.jpg")
    ann = {
        "images": [{"id": 1, "file_name": "1.jpg"}, {"id": 2, "file_name": "2.jpg"}],
        "annotations": [
            {"id": 1, "image_id": 1, "caption": "A green square."},
            {"id": 2, "image_id": 2, "caption": "A small green box."},
        ],
    }
    (tmp_path / "captions.json").write_text(json.dumps(ann))
    preds = write_jsonl(
        tmp_path / "p.jsonl", [{"id": 1, "prediction": "a green square"}, {"id": 2, "prediction": "a box"}]
    )
    result, out = _run("--task", "coco_caption", "--data", tmp_path / "captions.json", "--predictions", preds)
    assert result.exit_code == 0, result.output
    assert {"Bleu_1", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"} <= set(out)
    assert out["METEOR"] is None and "Java not found" in out["fallback"]
    assert out["Bleu_1"] > 0


def test_llava_bench_with_a_local_judge(tmp_path):
    bench = tmp_path / "bench"
    write_image(bench / "images" / "001.jpg")
    write_jsonl(
        bench / "questions.jsonl",
        [
            {"question_id": i, "image": "001.jpg", "text": f"Q{i}?", "category": c}
            for i, c in enumerate(["conv", "complex"])
        ],
    )
    write_jsonl(bench / "context.jsonl", [{"image": "001.jpg", "caption": "A green square."}])
    write_jsonl(
        bench / "answers_gpt4.jsonl", [{"question_id": i, "text": "A green square."} for i in range(2)]
    )
    preds = write_jsonl(
        tmp_path / "p.jsonl",
        [{"question_id": 0, "text": "score=6 green"}, {"question_id": 1, "text": "GARBAGE"}],
    )
    with JudgeServer() as server:
        args = ["--task", "llava_bench", "--data", bench, "--predictions", preds, "--judge-model", "m"]
        result, out = _run(*args, "--judge-base-url", server.base_url, "--judge-cache", tmp_path / "cache")
    assert result.exit_code == 0, result.output
    assert out["conv"] == pytest.approx(75.0) and out["complex"] is None and out["all"] == pytest.approx(75.0)
    assert out["counts"]["unparseable"] == 1 and out["counts"]["judged"] == 1


def test_mmbench_circular_in_process(tmp_path):
    import base64
    import io

    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG")
    b64 = base64.b64encode(buf.getvalue()).decode()
    lines = [
        "index\tquestion\tA\tB\tanswer\tcategory\timage",
        f"1\tq\tx\ty\tA\tc\t{b64}",
        "1000001\tq\ty\tx\tB\tc\t1",
    ]
    (tmp_path / "mmb.tsv").write_text("\n".join(lines) + "\n")
    out = score("mmbench", tmp_path / "mmb.tsv", {"1": "A", "1000001": "A"})
    assert out["accuracy"] == 50.0 and out["circular_accuracy"] == 0.0 and "samples" not in out


def test_bad_predictions_fail_cleanly(tmp_path):
    write_image(tmp_path / "pope" / "a.jpg")
    write_jsonl(
        tmp_path / "pope" / "coco_pope_random.json",
        [{"question_id": 1, "image": "a.jpg", "text": "Q?", "label": "yes"}],
    )
    preds = write_jsonl(
        tmp_path / "p.jsonl",
        [{"id": "random/1", "prediction": "yes"}, {"id": "random/1", "prediction": "no"}],
    )
    result, _ = _run("--task", "pope", "--data", tmp_path / "pope", "--predictions", preds)
    assert result.exit_code == 2 and "p.jsonl:2: id 'random/1' already predicted at" in result.output
    result, _ = _run("--task", "nope", "--data", tmp_path, "--predictions", preds)
    assert result.exit_code == 2 and "unknown task 'nope'" in result.output
