"""A training run's folder holds it to itself: a resume continues the recorded run with its own
recipe, one run writes a folder at a time, a rerun never trains over a run silently, and a resumed
run's log has each step once."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from graft.cli import app
from graft.files import BusyError, FileLock
from graft.train import loop, train
from graft.train.recipe import recipe_from_dict
from graft.train.resume import TRAIN_LOCK

from tiny import tiny_recipe, tiny_world


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return tiny_world(tmp_path_factory.mktemp("world"))


def _killed_after_checkpoint(world, out, monkeypatch, **overrides) -> None:
    """Train 4 steps saving every 2, killed right after the step-2 checkpoint."""
    real = loop.save_checkpoint

    def save_then_die(output_dir, state, *args, **kwargs):
        path = real(output_dir, state, *args, **kwargs)
        if state.step == 2:
            raise Killed
        return path

    with monkeypatch.context() as m:
        m.setattr(loop, "save_checkpoint", save_then_die)
        with pytest.raises(Killed):
            train(recipe_from_dict(tiny_recipe(world, out, save_every=2, **overrides)))


def test_a_resume_with_another_recipe_is_refused_and_the_log_has_each_step_once(world, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _killed_after_checkpoint(world, out, monkeypatch)
    with (out / "log.jsonl").open("a") as log:  # a step logged after the checkpoint, before the kill
        log.write(json.dumps({"step": 3, "loss": 9.9}) + "\n")
    recorded = (out / "recipe.yaml").read_text()
    changed = tiny_recipe(world, out, save_every=2, resume=True, **{"connector.lr": 0.5, "batch_size": 1})
    with pytest.raises(
        ValueError, match=r"resuming its run with another recipe \(batch_size: 2 then, 1 now; "
    ):
        train(recipe_from_dict(changed))
    assert (out / "recipe.yaml").read_text() == recorded  # still the run's own
    # where and how often things are written may change
    done = train(recipe_from_dict(tiny_recipe(world, out, save_every=1, log_every=2, resume=True)))
    assert done.steps == 4
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 4]  # step 3 ran again (logged every 2 now); its old line is gone


def test_one_run_writes_a_folder_at_a_time(world, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with FileLock(out / TRAIN_LOCK, "graft train run"):
        with pytest.raises(BusyError, match=r"in use by another graft train run \(pid \d+\)"):
            train(recipe_from_dict(tiny_recipe(world, out)))
    assert train(recipe_from_dict(tiny_recipe(world, out, max_steps=1))).steps == 1


def test_the_cli_never_trains_over_a_run_without_resume_or_overwrite(world, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(world, tmp_path / "run", max_steps=1)))
    runner = CliRunner()
    assert runner.invoke(app, ["train", str(recipe)]).exit_code == 0
    again = runner.invoke(app, ["train", str(recipe), "--set", "connector.lr=0.5"])
    assert again.exit_code == 2 and "holds a training run or a model; --resume continues" in again.output
    # finished without a checkpoint (save_every 0): a resume would train it again from step 0
    saved = (tmp_path / "run" / "model.safetensors").read_bytes()
    resumed = runner.invoke(app, ["train", str(recipe), "--resume", "--set", "connector.lr=0.5"])
    assert resumed.exit_code == 2 and "its run is finished" in resumed.output, resumed.output
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == saved
    assert yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())["connector"]["lr"] != 0.5
    # --overwrite never removes a folder that a run is still writing
    with FileLock(tmp_path / "run" / TRAIN_LOCK, "graft train run"):
        busy = runner.invoke(app, ["train", str(recipe), "--overwrite"])
    assert busy.exit_code == 2 and "in use by another graft train run" in busy.output
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == saved
    both = runner.invoke(app, ["train", str(recipe), "--resume", "--overwrite"])
    assert both.exit_code == 2 and "give one" in both.output
    over = runner.invoke(app, ["train", str(recipe), "--overwrite", "--set", "connector.lr=0.5"])
    assert over.exit_code == 0, over.output
    assert yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())["connector"]["lr"] == 0.5
    assert len((tmp_path / "run" / "log.jsonl").read_text().splitlines()) == 1  # the new run's alone
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")  # a model graft train did not write
    other = runner.invoke(app, ["train", str(recipe), "--out", str(tmp_path / "model"), "--overwrite"])
    assert other.exit_code == 2 and "did not write" in other.output
    assert (tmp_path / "model" / "config.json").exists()


@pytest.mark.parametrize(
    "override,message",
    [({"max_steps": -1}, "max_steps must be >= 0"), ({"connector.lr": -1.0}, "connector.lr must be > 0")],
)
def test_negative_steps_and_rates_are_refused(world, tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        recipe_from_dict(tiny_recipe(world, tmp_path, **override))


def test_a_run_that_stopped_before_its_first_step_does_not_block_a_rerun(world, tmp_path):
    recipe = tmp_path / "r.yaml"
    out = tmp_path / "run"
    recipe.write_text(yaml.safe_dump(tiny_recipe(world, out, max_steps=1, **{"data.train": ["gone.json"]})))
    failed = CliRunner().invoke(app, ["train", str(recipe)])
    assert failed.exit_code == 2 and "gone.json" in failed.output, failed.output
    assert (out / "recipe.yaml").exists()  # what the failed run left, and all of it
    recipe.write_text(yaml.safe_dump(tiny_recipe(world, out, max_steps=1)))
    rerun = CliRunner().invoke(app, ["train", str(recipe)])
    assert rerun.exit_code == 0, rerun.output
