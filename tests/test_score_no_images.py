"""``graft score`` reads annotations only: POPE, MME and COCO captions score to the official
numbers with no image on disk, while reading a benchmark to answer it still checks its images."""

import json

import pytest
from typer.testing import CliRunner

from graft.cli import app
from graft.eval.metrics.caption import python_tokenize
from graft.eval.readers import read_coco_captions, read_mme, read_pope
from graft.eval.score import Options, score
from graft.eval.tasks import get_task
from graft.record_files import RecordError
from test_metrics_caption import PREDS as CAPTION_PREDS
from test_metrics_caption import REFS as CAPTION_REFS
from test_metrics_caption import _reference as caption_reference
from test_metrics_mme import WORKED as MME_WORKED
from test_metrics_mme import check_worked_example as check_mme
from test_metrics_pope import WORKED as POPE_WORKED
from test_metrics_pope import check_worked_example as check_pope

from tiny import write_jsonl


def _pope_without_images(folder):
    """POPE's per-split question files for the worked example, naming images that are absent."""
    by_split: dict[str, list] = {}
    for split, label, _ in POPE_WORKED:
        rows = by_split.setdefault(split, [])
        qid = len(rows) + 1
        image = f"COCO_val2014_{qid:012d}.jpg"
        rows.append({"question_id": qid, "image": image, "text": "Is there a dog?", "label": label})
    for split, rows in by_split.items():
        write_jsonl(folder / f"coco_pope_{split}.json", rows)
    answers, seen = [], {}
    for split, _, answer in POPE_WORKED:
        seen[split] = seen.get(split, 0) + 1
        answers.append({"question_id": f"{split}/{seen[split]}", "text": answer})  # LLaVA's answer file
    return answers


def test_pope_from_question_files_and_answers_alone(tmp_path):
    preds = write_jsonl(tmp_path / "answers.jsonl", _pope_without_images(tmp_path / "pope"))
    result = CliRunner().invoke(
        app, ["score", "--task", "pope", "--data", str(tmp_path / "pope"), "--predictions", str(preds)]
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    check_pope(out)
    assert out["counts"] == {"samples": 7, "missing": 0, "empty": 1, "unknown_ids": 0, "bad_records": 0}
    # answering still needs the pictures
    with pytest.raises(RecordError, match="image not found: .*COCO_val2014_000000000001.jpg"):
        read_pope(tmp_path / "pope")
    with pytest.raises(RecordError, match="image not found"):
        get_task("pope").read(tmp_path / "pope")


def test_mme_from_question_files_and_answers_alone(tmp_path):
    data, answers = tmp_path / "MME", []
    for subtask, images in MME_WORKED.items():
        for image, pair in images.items():
            stem = image.rsplit(".", 1)[0]
            lines = [f"q{k}\t{truth.capitalize()}" for k, (truth, _) in enumerate(pair)]
            (data / subtask).mkdir(parents=True, exist_ok=True)
            (data / subtask / f"{stem}.txt").write_text("\n".join(lines) + "\n")
            for k, (_, prediction) in enumerate(pair):
                # ids as graft predict writes them (image file) and by stem: both match
                name = image if subtask == "existence" else stem
                answers.append({"id": f"{subtask}/{name}/{k}", "prediction": prediction})
    preds = write_jsonl(tmp_path / "preds.jsonl", answers)
    out = score("mme", data, preds)
    check_mme(out)
    assert out["counts"]["unknown_ids"] == 0 and out["counts"]["missing"] == 0
    with pytest.raises(RecordError, match="no image 1.jpg/.png"):
        read_mme(data)
    # one question answered under both spellings of its id
    twice = {"existence/1.jpg/0": "Yes", "existence/1/0": "No"}
    with pytest.raises(RecordError, match="answer one question"):
        score("mme", data, twice)


def test_coco_captions_from_the_annotation_file_alone(tmp_path):
    ann = {
        "images": [{"id": k, "file_name": f"COCO_val2014_{k:012d}.jpg"} for k in CAPTION_REFS],
        "annotations": [
            {"id": 10 * k + j, "image_id": k, "caption": c}
            for k, refs in CAPTION_REFS.items()
            for j, c in enumerate(refs)
        ],
    }
    (tmp_path / "captions_val2014.json").write_text(json.dumps(ann))
    preds = write_jsonl(
        tmp_path / "preds.jsonl", [{"id": k, "prediction": p} for k, p in CAPTION_PREDS.items()]
    )
    # without Java: pycocoevalcap's scorers on the Python tokenizer's tokens (the Java path is
    # checked against pycocoevalcap in test_metrics_caption.py)
    out = score("coco_caption", tmp_path / "captions_val2014.json", preds, Options(java=False))
    tokens = (
        {k: [python_tokenize(c) for c in CAPTION_REFS[k]] for k in CAPTION_PREDS},
        {k: [python_tokenize(CAPTION_PREDS[k])] for k in CAPTION_PREDS},
    )
    for name, value in caption_reference(CAPTION_REFS, CAPTION_PREDS, tokens).items():
        assert out[name] == pytest.approx(value, abs=1e-12), name
    assert out["counts"]["samples"] == len(CAPTION_REFS)
    with pytest.raises(RecordError, match="image not found"):
        read_coco_captions(tmp_path / "captions_val2014.json")


def test_own_question_file_and_mmbench_need_no_images(tmp_path):
    write_jsonl(
        tmp_path / "q.jsonl",
        [{"id": "a", "img": "gone.png", "question": "Red?", "answer": "yes"}],
    )
    task = tmp_path / "t.yaml"
    task.write_text(
        "task: mine\nreader: jsonl\ndoc_to_visual: img\ndoc_to_text: '{{question}}'\n"
        "doc_to_target: answer\nmetric_list: [{metric: exact_match}]\n"
    )
    assert score(task, tmp_path / "q.jsonl", {"a": "Yes."})["exact_match"] == 1.0
    with pytest.raises(RecordError, match="field 'img': image not found"):
        get_task(task).read(tmp_path / "q.jsonl")

    # an MMBench TSV: the image column is neither decoded nor written when scoring
    lines = ["index\tquestion\tA\tB\tanswer\timage", "1\tq\tx\ty\tA\t", "2\tq\tx\ty\tB\t"]
    (tmp_path / "mmb.tsv").write_text("\n".join(lines) + "\n")
    out = score("mmbench", tmp_path / "mmb.tsv", {"1": "A", "2": "A"})
    assert out["accuracy"] == 50.0 and "img_accuracy" not in out
    assert not (tmp_path / "mmb_images").exists()


def test_graft_question_files_score_per_type_without_images(tmp_path):
    rows = [
        {"id": "b0", "image": "gone/0.png", "question": "Is it red?", "answer": "Yes", "qtype": "color"},
        {"id": "b1", "image": "gone/1.png", "question": "Two?", "answer": "No", "qtype": "count"},
        {"id": "m0", "image": "gone/2.png", "question": "Which?", "answer": "b", "qtype": "color"}
        | {"choices": ["red", "blue"]},
    ]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = score("questions", tmp_path / "q.jsonl", {"b0": "Yes, it is.", "b1": "Yes", "m0": "B. blue"})
    assert out["accuracy"] == pytest.approx(2 / 3) and out["n"] == 3
    assert out["qtype/color/accuracy"] == 1.0 and out["qtype/count/accuracy"] == 0.0
    with pytest.raises(RecordError, match="image not found"):  # reading to answer still checks
        get_task("questions").read(tmp_path / "q.jsonl")
