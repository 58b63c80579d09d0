"""One source of truth each: the template and pad-to-square of a model live in its processor
(a recipe sets them only when it names them), its connector in its config (which also says how
many tokens an image becomes), and every default in one place."""

import json
import shutil

import pytest

from graft.backbones import compose
from graft.config import DEFAULT_CONNECTOR, GraftConfig, connector_spec
from graft.processing import PROCESSOR_FILE, GraftProcessor
from graft.templates import DEFAULT_TEMPLATE, get_template
from graft.train.recipe import RecipeError, recipe_from_dict
from graft.train.stages import build_model

from tiny import tiny_llm, tiny_model_and_processor, tiny_recipe, tiny_tokenizer, tiny_vision, tiny_world


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, str]:
    return tiny_world(tmp_path_factory.mktemp("world"))


def test_a_stage_keeps_the_folders_template_and_padding_unless_its_recipe_names_them(tmp_path, world):
    model, processor = tiny_model_and_processor()
    processor.template, processor.pad_to_square = get_template("chatml"), True
    folder = tmp_path / "stage1"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)

    raw = tiny_recipe(world, tmp_path / "out", **{"model.init_from": str(folder)})
    del raw["template"]
    recipe = recipe_from_dict(raw)
    assert recipe.template is None and recipe.processor_settings() == {}
    _, kept = build_model(recipe)
    assert (kept.template.name, kept.pad_to_square) == ("chatml", True)

    named = recipe_from_dict({**raw, "template": "plain", "data": {**raw["data"], "pad_to_square": False}})
    assert named.processor_settings() == {"template": "plain", "pad_to_square": False}
    _, overridden = build_model(named)
    assert (overridden.template.name, overridden.pad_to_square) == ("plain", False)


def test_a_fresh_compose_gets_the_default_template(tmp_path, world):
    raw = tiny_recipe(world, tmp_path / "out")
    del raw["template"]
    _, processor = build_model(recipe_from_dict(raw))
    assert processor.template.name == DEFAULT_TEMPLATE and not processor.pad_to_square


def test_an_unknown_template_fails_when_the_recipe_loads(tmp_path, world):
    with pytest.raises(RecipeError, match="unknown template 'vicuna'; valid templates: plain, vicuna_v1"):
        recipe_from_dict(tiny_recipe(world, tmp_path, template="vicuna"))


def test_tokens_per_image_come_from_the_models_config(tmp_path):
    model, processor = tiny_model_and_processor()
    model.save_pretrained(tmp_path / "m")
    processor.save_pretrained(tmp_path / "m")
    settings_file = tmp_path / "m" / PROCESSOR_FILE
    settings = json.loads(settings_file.read_text())
    assert settings["image_seq_length"] == model.config.image_seq_length  # still written, for old readers
    settings_file.write_text(json.dumps({**settings, "image_seq_length": 3}))  # a stale copy
    assert GraftProcessor.from_pretrained(tmp_path / "m").image_seq_length == model.config.image_seq_length

    # a folder holding only a processor (no model config) reads its own copy
    shutil.copytree(
        tmp_path / "m", tmp_path / "p", ignore=shutil.ignore_patterns("config.json", "*.safetensors")
    )
    assert GraftProcessor.from_pretrained(tmp_path / "p").image_seq_length == 3


def test_a_connector_spec_has_one_form_and_one_default():
    assert connector_spec(None) == connector_spec({}) == {"name": DEFAULT_CONNECTOR}
    assert connector_spec("linear") == {"name": "linear"}
    spec = {"name": "mlp2x_gelu", "reduction": "pool", "reduction_factor": 2}
    assert connector_spec(spec) == spec and connector_spec(spec) is not spec
    for bad in ({"reduction": "pool"}, 3):
        with pytest.raises(ValueError, match="a connector is a name or"):
            connector_spec(bad)
    assert GraftConfig().connector == {"name": DEFAULT_CONNECTOR}
    tokenizer = tiny_tokenizer()
    model = compose(tiny_vision(), tiny_llm(len(tokenizer) + 1), tokenizer)
    assert model.config.connector == {"name": DEFAULT_CONNECTOR}
