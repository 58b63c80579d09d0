"""Checkpoints resume exactly: N steps, stop, N more == 2N straight (loss and weights, fp32)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from graft.train import loop, train
from graft.train.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from graft.train.recipe import recipe_from_dict

from tiny import tiny_recipe, tiny_world

torch.set_num_threads(1)

N = 3


class Killed(Exception):
    """Stands for the process dying right after a checkpoint was written."""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return tiny_world(tmp_path_factory.mktemp("world"))


def _recipe(world, out, **overrides):
    # LoRA with dropout draws random numbers every step, 2N steps of 2 micro-batches of 2 cross an
    # epoch boundary (9 samples -> 5 batches): RNG and data position must both come back exactly
    raw = tiny_recipe(
        world,
        out,
        max_steps=2 * N,
        save_every=N,
        **{"llm.mode": "lora", "llm.lora": {"r": 4, "dropout": 0.1}},
    )
    raw.update(overrides)
    return recipe_from_dict(raw)


def _trainable(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _stop_after_step(monkeypatch, step: int) -> None:
    real = loop.save_checkpoint

    def save_then_die(output_dir, state, *args, **kwargs):
        path = real(output_dir, state, *args, **kwargs)
        if state.step == step:
            raise Killed
        return path

    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)


@pytest.fixture(scope="module")
def straight(world, tmp_path_factory):
    return train(_recipe(world, tmp_path_factory.mktemp("straight")))


def test_a_finished_run_resumed_trains_nothing_and_says_so(world, straight, tmp_path, caplog):
    out = tmp_path / "done"
    shutil.copytree(straight.output_dir, out)
    with caplog.at_level("INFO", logger="graft.train.loop"):
        again = train(_recipe(world, out, resume=True))
    assert again.steps == 2 * N and again.losses == [] and again.final_loss is None
    assert "already finished: step 6 of 6; nothing to train" in caplog.text
    json.dumps(again.summary(), allow_nan=False)  # what graft train prints: strict JSON (no NaN)
    a, b = _trainable(straight.model), _trainable(again.model)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6


def test_stop_and_resume_matches_a_straight_run(world, straight, tmp_path, monkeypatch):
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        _stop_after_step(m, N)
        with pytest.raises(Killed):
            train(_recipe(world, out))
    assert latest_checkpoint(out).name == f"step-{N}"

    resumed = train(_recipe(world, out, resume=True))
    assert resumed.steps == 2 * N and len(resumed.losses) == N
    assert resumed.losses == pytest.approx(straight.losses[N:], abs=1e-6)
    assert abs(resumed.final_loss - straight.final_loss) < 1e-6
    a, b = _trainable(straight.model), _trainable(resumed.model)
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    # the log continues where it stopped
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 2 * N + 1))


def test_a_killed_checkpoint_write_does_not_break_resume(world, straight, tmp_path, monkeypatch):
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        _stop_after_step(m, N)
        with pytest.raises(Killed):
            train(_recipe(world, out))
    # the process died while writing the next checkpoint: a half-written temporary folder
    partial = out / "checkpoints" / f"step-{2 * N}.tmp"
    shutil.copytree(out / "checkpoints" / f"step-{N}", partial)
    (partial / "state.json").unlink()
    (partial / "trainable.safetensors").write_bytes(b"\x00garbage")
    assert latest_checkpoint(out).name == f"step-{N}"

    resumed = train(_recipe(world, out, resume=True))
    assert abs(resumed.final_loss - straight.final_loss) < 1e-6
    assert not partial.exists()  # cleaned up by the next save
    assert [p.name for p in list_checkpoints(out)] == [f"step-{N}", f"step-{2 * N}"]


def test_resume_without_a_checkpoint_starts_from_scratch(world, straight, tmp_path):
    fresh = train(_recipe(world, tmp_path / "run", resume=True))
    assert fresh.losses == pytest.approx(straight.losses, abs=1e-6)


def test_only_the_newest_checkpoints_are_kept(world, tmp_path):
    result = train(_recipe(world, tmp_path / "run", max_steps=4, save_every=1, keep_checkpoints=2))
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step-3", "step-4"]
    assert [p.name for p in result.checkpoints] == ["step-1", "step-2", "step-3", "step-4"]


def test_resume_refuses_another_process_count(world, straight, tmp_path):
    ckpt = tmp_path / "step-3"
    shutil.copytree(list_checkpoints(straight.output_dir)[0], ckpt)
    state = json.loads((ckpt / "state.json").read_text())
    (ckpt / "state.json").write_text(json.dumps({**state, "world_size": 2}))
    with pytest.raises(ValueError, match="2 process"):
        load_checkpoint(ckpt, straight.model, None, None)
