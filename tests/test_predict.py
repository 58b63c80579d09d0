import json

import pytest
import torch
from PIL import Image

import graft.eval.predict as predict_mod
from graft.eval import evaluate_question_files, predict_jsonl
from graft.eval.answers import normalize_text, parse_choice, parse_yesno, score_answer
from graft.eval.settings import EvalSettings
from graft.files import BusyError, FileLock
from graft.generate import Reply
from graft.record_files import RecordError

from tiny import random_image, tiny_model_and_processor

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny():
    return tiny_model_and_processor()


def _write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _tiny_images(root, n):
    (root / "img").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        random_image(i).save(root / "img" / f"{i}.png")


# --- predict_jsonl -------------------------------------------------------------------------------
def _prediction_questions(root):
    _tiny_images(root, 4)
    rows = [
        {"id": "q0", "image": "img/0.png", "question": "Is there a red circle?"},
        {"id": "q1", "images": ["img/1.png", "img/2.png"], "text": "Compare <image> with <image>."},
        {"id": 2, "question": "No image at all?"},
        {"id": "q3", "images": ["img/3.png", "img/0.png"], "question": "Two images first."},
        {"id": "q4", "image": "img/2.png", "question": "What is <image>?"},
    ]
    path = root / "questions.jsonl"
    _write_jsonl(path, rows)
    return path, [r["id"] for r in rows]


def test_predict_jsonl_writes_every_id_once(tiny, tmp_path):
    model, processor = tiny
    path, ids = _prediction_questions(tmp_path)
    out = tmp_path / "out" / "pred.jsonl"
    stats = predict_jsonl(model, processor, path, out, image_root=tmp_path, batch_size=2, max_new_tokens=4)
    assert stats == {"total": 5, "already_done": 0, "written": 5, "bad": 0}
    rows = _read_jsonl(out)
    assert sorted(map(str, (r["id"] for r in rows))) == sorted(map(str, ids))
    assert all(isinstance(r["prediction"], str) and r.get("cut", True) is True for r in rows)
    assert all(set(r) in ({"id", "prediction"}, {"id", "prediction", "cut"}) for r in rows)
    # a second run has nothing left to do
    again = predict_jsonl(model, processor, path, out, image_root=tmp_path, batch_size=2, max_new_tokens=4)
    assert again["written"] == 0 and again["already_done"] == 5
    assert _read_jsonl(out) == rows


def test_predict_jsonl_resumes_after_a_partial_file(tiny, tmp_path):
    model, processor = tiny
    path, ids = _prediction_questions(tmp_path)
    full = tmp_path / "full.jsonl"
    predict_jsonl(model, processor, path, full, batch_size=2, max_new_tokens=4, progress=False)
    reference = {r["id"]: r["prediction"] for r in _read_jsonl(full)}

    # a run killed after two rows, in the middle of writing the third
    out = tmp_path / "partial.jsonl"
    lines = full.read_text().splitlines(keepends=True)
    out.write_text(lines[0] + lines[3] + lines[2][:7])
    stats = predict_jsonl(model, processor, path, out, batch_size=2, max_new_tokens=4, progress=False)
    assert stats["already_done"] == 2 and stats["written"] == 3
    rows = _read_jsonl(out)
    assert sorted(map(str, (r["id"] for r in rows))) == sorted(map(str, ids))  # every id exactly once
    assert {r["id"]: r["prediction"] for r in rows} == reference


def test_predict_jsonl_refuses_a_file_another_run_is_writing(tiny, tmp_path):
    """Two runs on one folder: the second stops at once, naming the folder and the first's pid,
    instead of reading the finished ids mid-run and appending the same answers again."""
    model, processor = tiny
    path, ids = _prediction_questions(tmp_path)
    out = tmp_path / "run" / "pred.jsonl"
    with FileLock(out.with_name(".pred.jsonl.lock"), "evaluation run"):  # held as a running one holds it
        with pytest.raises(
            BusyError, match=rf"{tmp_path / 'run'} is in use by another evaluation run \(pid \d+\)"
        ):
            predict_jsonl(model, processor, path, out, batch_size=2, max_new_tokens=4, progress=False)
        assert not out.exists()
    stats = predict_jsonl(model, processor, path, out, batch_size=2, max_new_tokens=4, progress=False)
    assert stats["written"] == 5 and sorted(map(str, (r["id"] for r in _read_jsonl(out)))) == sorted(
        map(str, ids)
    )


def test_predict_jsonl_answers_longest_first(tiny, tmp_path, monkeypatch):
    """Batches of like prompt length, the longest first (``EvalSettings.by_length``); in file order
    with ``by_length=False``. The predictions file is written in answering order."""
    model, processor = tiny
    path, ids = _prediction_questions(tmp_path)
    real, lengths = predict_mod.generate_replies, []

    def spy(model, processor, convs, images, **kw):
        lengths.extend(
            len(processor.encode_text(c, len(i), True)[0]) for c, i in zip(convs, images, strict=True)
        )
        return real(model, processor, convs, images, **kw)

    monkeypatch.setattr(predict_mod, "generate_replies", spy)
    out = tmp_path / "long.jsonl"
    predict_jsonl(model, processor, path, out, batch_size=2, max_new_tokens=2, progress=False)
    assert lengths == sorted(lengths, reverse=True) and len(set(lengths)) >= 3
    by_length = [r["id"] for r in _read_jsonl(out)]
    assert by_length != ids

    lengths.clear()
    out = tmp_path / "given.jsonl"
    predict_jsonl(
        model, processor, path, out, batch_size=2, max_new_tokens=2, progress=False, by_length=False
    )
    assert lengths != sorted(lengths, reverse=True)
    assert [r["id"] for r in _read_jsonl(out)] == ids


def test_predict_jsonl_survives_a_crash_mid_run(tiny, tmp_path, monkeypatch):
    model, processor = tiny
    path, ids = _prediction_questions(tmp_path)
    out = tmp_path / "pred.jsonl"
    real = predict_mod.generate_replies
    calls = []

    def crash_on_second_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(predict_mod, "generate_replies", crash_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        predict_jsonl(model, processor, path, out, batch_size=2, max_new_tokens=4, progress=False)
    first = [r["id"] for r in _read_jsonl(out)]
    assert len(first) == 2  # the first batch was flushed
    monkeypatch.setattr(predict_mod, "generate_replies", real)
    stats = predict_jsonl(model, processor, path, out, batch_size=2, max_new_tokens=4, progress=False)
    assert stats["written"] == 3
    rows = [r["id"] for r in _read_jsonl(out)]
    assert rows[:2] == first and sorted(map(str, rows)) == sorted(map(str, ids))


def test_predict_jsonl_passes_markers_and_prepends_images(tiny, tmp_path, monkeypatch):
    model, processor = tiny
    path, _ = _prediction_questions(tmp_path)
    seen = []

    def fake(model, processor, convs, images, **kw):
        seen.extend((c[0].content, len(i)) for c, i in zip(convs, images, strict=True))
        return [Reply("x")] * len(convs)

    monkeypatch.setattr(predict_mod, "generate_replies", fake)
    predict_jsonl(model, processor, path, tmp_path / "o.jsonl", batch_size=8, progress=False, by_length=False)
    assert seen == [
        ("<image>\nIs there a red circle?", 1),
        ("Compare <image> with <image>.", 2),
        ("No image at all?", 0),
        ("<image>\n<image>\nTwo images first.", 2),
        ("What is <image>?", 1),
    ]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ('{"id": "b", "image": "img/0.png", "question": ', "not valid JSON"),
        ({"id": "b", "image": "img/nope.png", "question": "?"}, "image not found"),
        ({"image": "img/0.png", "question": "?"}, "'id'"),
        ({"id": "b", "image": "img/0.png"}, "'text'"),
        ({"id": "b", "image": "img/0.png", "question": "<image> <image>"}, "2 <image> marker"),
        ({"id": "q0", "question": "again"}, "already used"),
    ],
)
def test_predict_jsonl_bad_rows(tiny, tmp_path, row, message):
    model, processor = tiny
    path, _ = _prediction_questions(tmp_path)
    with path.open("a") as f:
        f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    with pytest.raises(RecordError, match=message) as err:
        predict_jsonl(model, processor, path, tmp_path / "o.jsonl", max_new_tokens=2, progress=False)
    assert str(err.value).startswith(f"{path}:6: ")
    assert not (tmp_path / "o.jsonl").exists()  # nothing is generated before the file is checked
    stats = predict_jsonl(
        model, processor, path, tmp_path / "o.jsonl", max_new_tokens=2, skip_bad=True, progress=False
    )
    assert stats == {"total": 5, "already_done": 0, "written": 5, "bad": 1}
    assert len(_read_jsonl(tmp_path / "o.jsonl")) == 5


def test_predict_jsonl_undecodable_image(tiny, tmp_path):
    model, processor = tiny
    path, _ = _prediction_questions(tmp_path)
    (tmp_path / "img" / "bad.png").write_bytes(b"not a png")
    with path.open("a") as f:
        f.write(json.dumps({"id": "bad", "image": "img/bad.png", "question": "?"}) + "\n")
    with pytest.raises(RecordError, match=rf"{path}:6: cannot read image"):
        predict_jsonl(model, processor, path, tmp_path / "o.jsonl", max_new_tokens=2, progress=False)
    stats = predict_jsonl(
        model, processor, path, tmp_path / "p.jsonl", max_new_tokens=2, skip_bad=True, progress=False
    )
    assert stats["bad"] == 1 and stats["written"] == 5


# --- answer normalisation ----------------------------------------------------------------------------
CHOICES = ["red circle", "blue square", "green triangle", "circle"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Yes", "yes"),
        ("yes.", "yes"),
        ("No, there is not.", "no"),
        ("  NO!", "no"),
        ("Maybe", "maybe"),
        ("circle, so no.", "no"),  # a reply that names what it sees first
        ("Yes, no doubt", "yes"),
        ("", ""),
    ],
)
def test_parse_yesno(text, expected):
    assert parse_yesno(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("B", "B"),
        ("(C)", "C"),
        ("D. circle", "D"),
        ("The answer is B.", "B"),
        ("A", "A"),
        ("A.", "A"),
        ("blue square", "B"),
        ("It is a Green Triangle.", "C"),
        ("A red circle", "A"),  # the article is skipped; the option text decides
        ("A blue square", "B"),
        ("circle", "D"),
        ("red circle or blue square", None),
        ("E", None),
        ("Bob", None),
        ("nothing here", None),
    ],
)
def test_parse_choice(text, expected):
    assert parse_choice(text, CHOICES) == expected


def test_score_answer_formats():
    assert score_answer("Yes, it is.", "Yes") == ("yes", True)
    assert score_answer("yesterday", "Yes") == ("yesterday", False)
    assert score_answer("B.", "B", CHOICES) == ("B", True)
    assert score_answer("red circle", "B", CHOICES) == ("A", False)
    assert score_answer("", "B", CHOICES) == (None, False)
    assert score_answer("Three.", "three") == ("three", True)
    assert score_answer("Circle and Square", "circle and square") == ("circle and square", True)
    assert score_answer("a circle", "circle") == ("a circle", False)
    assert normalize_text("  To the LEFT, of!  ") == "to the left of"


# --- evaluate_question_files (the questions task through run_task) ---------------------------------
def _question_file(root):
    _tiny_images(root, 3)
    rows = [
        {
            "id": "b0",
            "image": "img/0.png",
            "question": "Is there a red circle?",
            "answer": "Yes",
            "qtype": "existence",
        },
        {
            "id": "b1",
            "image": "img/1.png",
            "question": "Is the square blue?",
            "answer": "No",
            "qtype": "color",
        },
        {"id": "m0", "image": "img/2.png", "question": "Which?\nA. red circle\nB. blue square", "answer": "B"}
        | {"qtype": "existence", "choices": CHOICES},
        {
            "id": "m1",
            "image": "img/0.png",
            "question": "Color?",
            "answer": "A",
            "qtype": "color",
            "choices": CHOICES,
        },
        {"id": "s0", "image": "img/1.png", "question": "How many?", "answer": "3", "qtype": "count"},
    ]
    path = root / "eval" / "q.jsonl"
    path.parent.mkdir()
    _write_jsonl(path, rows)
    return path


def test_evaluate_question_files_bookkeeping(tiny, tmp_path, monkeypatch):
    model, processor = tiny
    path = _question_file(tmp_path)
    # right, wrong, right, wrong, right
    replies = {"red circle?": "yes.", "blue?": "Yes", "square": "B", "Color?": "C. green", "many?": "3"}
    seen = []

    def fake(model, processor, convs, images, *args, **kw):
        seen.extend(zip(convs, images, strict=True))
        return [Reply(next(r for end, r in replies.items() if c[-1].content.endswith(end))) for c in convs]

    monkeypatch.setattr(predict_mod, "generate_replies", fake)
    out = tmp_path / "runs"
    settings = EvalSettings(batch_size=2, progress=False)
    result = evaluate_question_files(model, processor, [path], out, tmp_path, settings, blind=False)
    assert result["q/n"] == 5
    assert result["q/accuracy"] == pytest.approx(3 / 5)
    assert result["qtype/q_existence/accuracy"] == 1.0 and result["qtype/q_color/accuracy"] == 0.0
    assert result["qtype/q_count/accuracy"] == 1.0
    assert result["qtype/q_existence/n"] == 2 and result["qtype/q_count/n"] == 1
    answered = {r["id"]: r["prediction"] for r in map(json.loads, (out / "q" / "predictions.jsonl").open())}
    assert answered == {"b0": "yes.", "b1": "Yes", "m0": "B", "m1": "C. green", "s0": "3"}
    first = next(c for c in seen if c[0][-1].content.endswith("red circle?"))
    assert first[0][-1].content == f"{processor.image_token}\nIs there a red circle?"
    assert first[1][0].tobytes() == random_image(0).tobytes()

    seen.clear()
    blind = evaluate_question_files(model, processor, [path], out, tmp_path, settings.replace(limit=3))
    # the seeing run's answers are reused (same model), the blind run answers its 3 questions
    assert blind["q/n"] == 3 and "q/accuracy_blind" in blind and len(seen) == 3
    assert json.loads((out / "q_blind" / "results.json").read_text())["blind"] is True
    for _, imgs in seen:
        assert imgs[0].size == random_image(0).size
        assert set(imgs[0].getdata()) == {processor.image_fill()}


def test_evaluate_question_files_real_run(tiny, tmp_path):
    model, processor = tiny
    path = _question_file(tmp_path)
    settings = EvalSettings(batch_size=4, max_new_tokens=3, progress=False)
    result = evaluate_question_files(
        model, processor, [path], tmp_path / "runs", tmp_path, settings, blind=False
    )
    assert result["q/n"] == 5 and 0.0 <= result["q/accuracy"] <= 1.0
    answers = [json.loads(line) for line in (tmp_path / "runs" / "q" / "predictions.jsonl").open()]
    assert len(answers) == 5
    assert {k for k in result if k.endswith("/accuracy")} == {
        "q/accuracy",
        "qtype/q_existence/accuracy",
        "qtype/q_color/accuracy",
        "qtype/q_count/accuracy",
    }


def test_evaluate_question_files_default_root_and_errors(tiny, tmp_path):
    model, processor = tiny
    path = _question_file(tmp_path)
    out = tmp_path / "runs"

    def run(file, root=None):
        return evaluate_question_files(model, processor, [file], out, root, EvalSettings(progress=False))

    # image paths are relative to the file's folder when no root is given: eval/img/... is missing
    with pytest.raises(RecordError, match=rf"{path}:1 \(id 'b0'\): field 'image': image not found"):
        run(path)
    bad = tmp_path / "bad.jsonl"
    _write_jsonl(
        bad, [{"id": 1, "image": "img/0.png", "question": "?", "answer": "E", "qtype": "x", "choices": ["a"]}]
    )
    with pytest.raises(RecordError, match=rf"{bad}:1 .*option letter"):
        run(bad, tmp_path)
    Image.new("RGB", (8, 8)).save(tmp_path / "img" / "x.png")
    _write_jsonl(bad, [{"id": 1, "image": "img/x.png", "question": "?", "answer": "yes"}])
    with pytest.raises(RecordError, match=rf"{bad}:1 .*field 'qtype'"):
        run(bad, tmp_path)
    (tmp_path / "other").mkdir()
    twin = tmp_path / "other" / path.name  # another file of the same name: the same run folder
    twin.write_bytes(path.read_bytes())
    settings = EvalSettings(progress=False)
    with pytest.raises(ValueError, match=rf"{path} and {twin} would both write {out / path.stem}; rename"):
        evaluate_question_files(model, processor, [path, twin], out, tmp_path, settings)


def test_predict_jsonl_prompt_longer_than_the_context(tmp_path):
    """A prompt the processor cannot fit fails its batch; the batch is redone row by row so the
    bad row is named (or, with skip_bad, skipped and counted) and its neighbours are answered."""
    model, processor = tiny_model_and_processor()
    processor.max_length = 160
    path, ids = _prediction_questions(tmp_path)
    with path.open("a") as f:
        f.write(json.dumps({"id": "long", "question": "Describe it. " * 100}) + "\n")
    with pytest.raises(RecordError, match=rf"{path}:6: .*longer than max_length=160"):
        predict_jsonl(
            model, processor, path, tmp_path / "o.jsonl", batch_size=4, max_new_tokens=2, progress=False
        )
    stats = predict_jsonl(
        model,
        processor,
        path,
        tmp_path / "p.jsonl",
        batch_size=4,
        max_new_tokens=2,
        skip_bad=True,
        progress=False,
    )
    assert stats["bad"] == 1 and stats["written"] == 5
    assert sorted(map(str, (r["id"] for r in _read_jsonl(tmp_path / "p.jsonl")))) == sorted(map(str, ids))
