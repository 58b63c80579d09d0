"""``graft inspect RECIPE``: parameter counts per component, on the meta device."""

import json
from pathlib import Path

import torch
import yaml
from transformers import AutoTokenizer
from typer.testing import CliRunner

from graft.backbones import compose_from_pretrained
from graft.cli import app
from graft.train.recipe import load_recipe
from graft.train.shipped import CONFIGS_DIR
from graft.train.stages import apply_stage, parameter_counts

from tiny import save_tiny_backbones, tiny_llm

torch.set_num_threads(1)

QFORMER = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


def _tiny_recipe(tmp_path: Path, connector: dict, **sections) -> Path:
    vision, llm = save_tiny_backbones(tmp_path / "backbones")
    recipe = {
        "model": {"vision": str(vision), "llm": str(llm), "connector": connector},
        "data": {"train": ["train.json"]},
        "vision": {"mode": "frozen"},
        "connector": {"mode": "full"},
        "llm": {"mode": "frozen"},
        **sections,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_the_shipped_vpgc_recipe_trains_6_320_896_parameters_offline():
    result = CliRunner().invoke(app, ["inspect", "vpgc-vicuna-7b"])  # by name, as the README says
    assert result.exit_code == 0, result.output
    assert "6,320,896" in result.output
    counts = json.loads(
        CliRunner().invoke(app, ["inspect", str(CONFIGS_DIR / "vpgc-vicuna-7b.yaml"), "--json"]).stdout
    )["components"]
    assert counts["connector"]["trainable"] == 6_320_896
    assert counts["llm"] == {"trainable": 0, "total": 6_738_415_616}  # LLaMA-7B
    assert counts["vision"]["trainable"] == 0


def test_inspect_counts_what_training_builds(tmp_path):
    connector = {"name": "vpgc", "vpg": {"name": "qformer", "num_query_tokens": 4, "qformer_config": QFORMER}}
    path = _tiny_recipe(tmp_path, connector)
    for overrides in ([], ["--set", "llm.mode=lora", "--set", "llm.lora.r=4"]):
        result = CliRunner().invoke(app, ["inspect", str(path), "--json", *overrides])
        assert result.exit_code == 0, result.output
        counts = json.loads(result.stdout)["components"]
        recipe = load_recipe(path, {"llm.mode": "lora", "llm.lora.r": 4} if overrides else None)
        model, _, _ = compose_from_pretrained(recipe.model.vision, recipe.model.llm, connector=connector)
        apply_stage(model, recipe)
        assert counts == parameter_counts(model), overrides


def test_a_tied_head_counts_once_as_in_training(tmp_path):
    path = _tiny_recipe(tmp_path, "mlp2x_gelu", llm={"mode": "full"})
    llm = tmp_path / "backbones" / "llm"
    tiny_llm(len(AutoTokenizer.from_pretrained(llm)), tie=True).save_pretrained(llm)  # as SmolLM2's
    result = CliRunner().invoke(app, ["inspect", str(path), "--json"])
    assert result.exit_code == 0, result.output
    recipe = load_recipe(path)
    model, _, _ = compose_from_pretrained(recipe.model.vision, recipe.model.llm, connector="mlp2x_gelu")
    apply_stage(model, recipe)
    assert json.loads(result.stdout)["components"] == parameter_counts(model)


def test_inspect_errors_are_clear(tmp_path):
    runner = CliRunner()
    missing = runner.invoke(app, ["inspect", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and "recipe not found" in missing.output
    outside = _tiny_recipe(
        tmp_path, {"name": "vpgc", "vpg": {"name": "qformer", "qformer_config": QFORMER}, "guidance_layer": 9}
    )
    result = runner.invoke(app, ["inspect", str(outside)])
    assert result.exit_code == 2 and "guidance_layer=9 is outside the LLM" in result.output
    hub = tmp_path / "hub.yaml"
    hub.write_text(
        yaml.safe_dump(
            {"model": {"vision": "nobody/vision", "llm": "nobody/llm"}, "data": {"train": ["x.json"]}}
        )
    )
    result = runner.invoke(app, ["inspect", str(hub)])
    assert (
        result.exit_code == 2
        and "write the architecture out in the recipe as model.text_config" in result.output
    )
