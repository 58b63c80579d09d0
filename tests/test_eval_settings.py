"""Settings passed once: ``GenerationSettings`` (how prompts become answers) and ``EvalSettings``
(what an evaluation run does, blind included) from ``graft eval`` down to ``generate_answers``."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import graft.eval.predict as predict_mod
from graft.cli import app
from graft.eval.predict import predict_jsonl
from graft.eval.runner import run_task
from graft.eval.settings import EvalSettings
from graft.generate import ChatSession, GenerationSettings, Reply, generate_answers
from graft.templates import Message

from tiny import random_image, save_tiny_backbones, tiny_model_and_processor, write_jsonl, write_pope

torch.set_num_threads(1)


def test_eval_settings_resolve_a_tasks_generation_settings():
    assert EvalSettings().generation() == GenerationSettings()
    task = {"max_new_tokens": 3, "do_sample": True, "seed": 1}
    run = EvalSettings(batch_size=4)
    assert run.generation(task) == GenerationSettings(max_new_tokens=3, batch_size=4, do_sample=True, seed=1)
    assert run.replace(max_new_tokens=7).generation_kwargs(task) == {**task, "max_new_tokens": 7}
    assert task == {"max_new_tokens": 3, "do_sample": True, "seed": 1}  # the task's own is left alone


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: EvalSettings(limit=0), "limit must be >= 1"),
        (lambda: EvalSettings(batch_size=0), "batch_size must be >= 1"),
        (lambda: EvalSettings(max_new_tokens=0), "max_new_tokens must be >= 1"),
        (lambda: GenerationSettings(batch_size=0), "batch_size must be >= 1"),
        (lambda: GenerationSettings(max_new_tokens=0), "max_new_tokens must be >= 1"),
    ],
)
def test_bad_settings_fail_when_made(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_an_unknown_setting_is_a_type_error():
    with pytest.raises(TypeError, match="max_tokens"):
        EvalSettings().replace(max_tokens=3)
    with pytest.raises(TypeError, match="max_tokens"):
        GenerationSettings().replace(max_tokens=3)


def test_settings_object_and_keywords_give_the_same_answers():
    model, processor = tiny_model_and_processor()
    convs = [[Message("user", "<image>\nWhat is it?")], [Message("user", "Hi")]]
    images = [[random_image(1)], []]
    settings = GenerationSettings(max_new_tokens=5, batch_size=1)
    by_object = generate_answers(model, processor, convs, images, settings)
    assert by_object == generate_answers(model, processor, convs, images, max_new_tokens=5, batch_size=1)
    chat = ChatSession(model, processor, settings=settings)
    assert chat.settings == settings
    assert ChatSession(model, processor).settings.max_new_tokens == 256  # the chat's default


def _capture(monkeypatch):
    seen = []

    def fake(model, processor, convs, images, settings):
        seen.extend(images)
        return [Reply("Yes")] * len(convs)

    monkeypatch.setattr(predict_mod, "generate_replies", fake)
    return seen


def test_blind_predictions_see_blank_images_of_the_same_size(tmp_path, monkeypatch):
    model, processor = tiny_model_and_processor()
    random_image(1, size=40).save(tmp_path / "a.png")
    random_image(2).crop((0, 0, 30, 20)).save(tmp_path / "b.png")
    rows = [{"id": 1, "images": ["a.png", "b.png"], "question": "Same?"}, {"id": 2, "question": "Hi"}]
    path = write_jsonl(tmp_path / "q.jsonl", rows)
    seen = _capture(monkeypatch)
    predict_jsonl(model, processor, path, tmp_path / "seeing.jsonl", progress=False)
    seeing = seen[:]
    seen.clear()
    stats = predict_jsonl(model, processor, path, tmp_path / "blind.jsonl", settings=EvalSettings(blind=True))
    assert stats["written"] == 2 and [len(i) for i in seen] == [2, 0]
    assert [img.size for img in seen[0]] == [img.size for img in seeing[0]] == [(40, 40), (30, 20)]
    assert all((np.asarray(img) == processor.image_fill()).all() for img in seen[0])
    assert any((np.asarray(img) != np.asarray(processor.blank_image(img))).any() for img in seeing[0])


def test_a_blind_run_is_recorded_and_never_mixed_with_a_seeing_one(tmp_path, monkeypatch):
    model, processor = tiny_model_and_processor()
    data = write_pope(tmp_path / "pope", n=4)
    seen = _capture(monkeypatch)
    blind = run_task(model, processor, "pope", data, tmp_path / "b", EvalSettings(blind=True, progress=False))
    assert blind["blind"] is True and len(seen) == 4
    assert all((np.asarray(i[0]) == processor.image_fill()).all() for i in seen)
    assert json.loads((tmp_path / "b" / "pope" / "model.json").read_text())["blind"] is True
    with pytest.raises(ValueError, match="another blind setting"):
        run_task(model, processor, "pope", data, tmp_path / "b", progress=False)

    seeing = run_task(model, processor, "pope", data, tmp_path / "s", progress=False)
    assert seeing["blind"] is False
    # a seeing run's model.json is as before the blind option existed: old folders still resume
    assert "blind" not in json.loads((tmp_path / "s" / "pope" / "model.json").read_text())
    with pytest.raises(ValueError, match="another blind setting"):
        run_task(model, processor, "pope", data, tmp_path / "s", blind=True, progress=False)
    again = run_task(model, processor, "pope", data, tmp_path / "b", blind=True, progress=False)
    assert again["prediction_counts"]["written"] == 0  # a blind run resumes a blind folder


def test_graft_eval_blind(tmp_path):
    vision, llm = save_tiny_backbones(tmp_path)
    model_dir = tmp_path / "m"
    result = CliRunner().invoke(
        app, ["compose", "--vision", str(vision), "--llm", str(llm), "--out", str(model_dir)]
    )
    assert result.exit_code == 0, result.output
    data = write_pope(tmp_path / "pope", n=2)
    args = ["eval", "--model", str(model_dir), "--task", f"pope={data}", "--max-new-tokens", "2"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "run"), "--blind"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "pope" / "results.json").read_text())["blind"] is True
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "run")])
    assert result.exit_code != 0 and "blind" in result.output
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "r"), "--batch-size", "0"])
    assert result.exit_code != 0 and "batch_size must be >= 1" in result.output
