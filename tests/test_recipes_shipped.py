"""The recipes graft ships: package data found by name, their relative paths the working
directory's, and a clear error for the old top-level ``configs/`` paths."""

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from graft.cli import app
from graft.train import load_recipe, packaged_recipe, recipe_names
from graft.train.recipe import save_recipe
from graft.train.shipped import CONFIGS_DIR, RUN_RECIPE, find_recipe, is_packaged
from graft.train.stages import build_model

from tiny import tiny_model_and_processor


def test_shipped_recipes_live_inside_the_package():
    import graft

    assert CONFIGS_DIR.parent == Path(graft.__file__).resolve().parent
    names = recipe_names()
    assert {"shapes-stage1", "shapes-tiny-stage1", "llava-1.5-7b-stage1", "vpgc-vicuna-7b"} <= set(names)
    assert packaged_recipe("shapes-stage1") == CONFIGS_DIR / "shapes-stage1.yaml"
    with pytest.raises(FileNotFoundError, match="no recipe 'nope'.*known: .*shapes-stage1"):
        packaged_recipe("nope")


def test_a_name_finds_a_shipped_recipe_and_a_file_wins_over_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert find_recipe("shapes-stage1") == CONFIGS_DIR / "shapes-stage1.yaml"
    (tmp_path / "shapes-stage2").mkdir()  # a folder of that name, not written by graft train
    assert find_recipe("shapes-stage2") == CONFIGS_DIR / "shapes-stage2.yaml"
    (tmp_path / "shapes-stage1").write_text("a file of that name")
    assert find_recipe("shapes-stage1") == Path("shapes-stage1")


def test_a_training_runs_folder_gives_the_recipe_it_ran(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ran = load_recipe("shapes-stage2", {"optim.lr": 1e-4})
    run = tmp_path / "runs" / "stage2"
    run.mkdir(parents=True)
    save_recipe(ran, run / RUN_RECIPE)  # what graft train writes into its output folder
    monkeypatch.chdir(run)  # its paths are absolute: read from anywhere, they stay the run's
    again = load_recipe(run)
    assert find_recipe(run) == run / RUN_RECIPE
    assert again.optim.lr == 1e-4 and again.data.train == ran.data.train
    assert again.output_dir == ran.output_dir
    with pytest.raises(FileNotFoundError, match=f"{tmp_path} is a folder without {RUN_RECIPE}"):
        find_recipe(tmp_path)


def test_shipped_recipe_paths_are_the_working_directorys(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe("shapes-stage1", {"output_dir": "mine"})
    assert recipe.source == str(CONFIGS_DIR / "shapes-stage1.yaml")
    runs = tmp_path / "runs" / "shapes"
    assert recipe.data.train == [str(runs / "world" / "stage1.json")]
    assert recipe.model.vision == str(runs / "backbones" / "vision")  # ./ marks a path, not a hub id
    assert recipe.feature_cache.dir == str(runs / "feature_cache")
    assert recipe.output_dir == str(tmp_path / "mine")
    stage2 = load_recipe("llava-1.5-7b-stage2")
    assert stage2.model.init_from == str(tmp_path / "runs" / "llava-1.5-7b" / "stage1")
    assert stage2.data.image_root == str(tmp_path / "data")


def test_a_copy_of_a_shipped_recipe_reads_paths_beside_itself(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    copy = tmp_path / "mine" / "r.yaml"
    copy.parent.mkdir()
    shutil.copy(packaged_recipe("shapes-tiny-stage2"), copy)
    assert is_packaged(CONFIGS_DIR / "shapes-tiny-stage2.yaml") and not is_packaged(copy)
    assert load_recipe(copy).output_dir == str(tmp_path / "mine" / "runs" / "shapes" / "stage2")


def test_an_old_configs_path_says_to_give_the_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="recipe not found: configs/shapes-stage1.yaml; graft ships"):
        load_recipe("configs/shapes-stage1.yaml")
    result = CliRunner().invoke(app, ["train", "configs/llava-1.5-7b-stage1.yaml"])
    assert result.exit_code == 2
    assert "give that name instead of a path" in result.output and "'llava-1.5-7b-stage1'" in result.output
    result = CliRunner().invoke(app, ["inspect", "no-such-recipe"])
    assert result.exit_code == 2 and "recipes shipped with graft, by name:" in result.output


def test_the_vpgc_recipe_trains_in_the_template_of_the_model_it_wraps(tmp_path):
    model, processor = tiny_model_and_processor("qformer", template="chatml")
    model.save_pretrained(tmp_path / "base")
    processor.save_pretrained(tmp_path / "base")
    recipe = load_recipe("shapes-vpgc", {"model.init_from": str(tmp_path / "base")})
    assert build_model(recipe)[1].template.name == "chatml"


def test_a_missing_init_from_folder_is_named_not_a_traceback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # shapes-stage2 starts from runs/shapes/stage1, not made here
    for args in (["train", "shapes-stage2", "--out", str(tmp_path / "out")], ["inspect", "shapes-stage2"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, result.output
        assert (
            "error: model.init_from " in result.output
            and ": no such folder (nor is it a hub" in result.output
        )
        assert "Repo id must" not in result.output  # the hub's naming rules: not what went wrong
