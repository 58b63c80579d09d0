"""Recipes, stages, the training loop and the vision feature cache, on tiny backbones."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import yaml
from accelerate.utils import set_seed

from graft.data import LlavaDataset
from graft.data.feature_cache import FeatureCache
from graft.modeling import GraftForConditionalGeneration
from graft.processing import GraftProcessor
from graft.train import (
    apply_stage,
    build_model,
    load_recipe,
    merge_lora,
    param_groups,
    parameter_counts,
    train,
)
from graft.train.metrics_log import read_log
from graft.train.recipe import RecipeError, recipe_from_dict
from graft.train.shipped import CONFIGS_DIR

from tiny import random_image, tiny_recipe, tiny_world

torch.set_num_threads(1)


# --- helpers (the lead may move these to a shared module) ------------------------------------------
def _write_recipe(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, str]:
    return tiny_world(tmp_path_factory.mktemp("world"))


# --- recipes ---------------------------------------------------------------------------------------
def test_unknown_key_names_the_key_the_file_and_the_valid_keys(tmp_path, world):
    raw = tiny_recipe(world, tmp_path / "out")
    raw["llm"]["lrr"] = 1e-4
    path = _write_recipe(tmp_path / "bad.yaml", raw)
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert "'llm.lrr'" in str(err.value) and str(path) in str(err.value)
    assert "lora, lr, mode" in str(err.value)

    raw = tiny_recipe(world, tmp_path / "out", epoch=2)
    with pytest.raises(RecipeError, match="unknown key 'epoch'.*epochs"):
        load_recipe(_write_recipe(tmp_path / "bad2.yaml", raw))


def test_unknown_override_key_is_an_error(tmp_path, world):
    path = _write_recipe(tmp_path / "r.yaml", tiny_recipe(world, tmp_path / "out"))
    with pytest.raises(RecipeError, match="unknown override key 'optim.learning_rate'"):
        load_recipe(path, {"optim.learning_rate": 1e-4})
    with pytest.raises(RecipeError, match="has no sub-keys"):
        load_recipe(path, {"seed.x": 1})


def test_paths_are_relative_to_the_recipe_and_overrides_to_the_working_dir(tmp_path, monkeypatch):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "vision").mkdir()
    raw = {
        "model": {"vision": "vision", "llm": "lmsys/vicuna-7b-v1.5", "tokenizer": "../tok"},
        "data": {"train": ["d/a.json"]},
        "optim": {"lr": "1e-3"},  # YAML 1.1 reads 1e-3 as a string
        "output_dir": "out",
    }
    recipe = load_recipe(_write_recipe(tmp_path / "cfg" / "r.yaml", raw))
    assert recipe.model.vision == str(tmp_path / "cfg" / "vision")  # exists beside the recipe
    assert recipe.model.llm == "lmsys/vicuna-7b-v1.5"  # a hub id stays one
    assert recipe.model.tokenizer == str(tmp_path / "tok")  # ../ marks a path
    assert recipe.data.train == [str(tmp_path / "cfg" / "d" / "a.json")]
    assert recipe.output_dir == str(tmp_path / "cfg" / "out")
    assert recipe.optim.lr == pytest.approx(1e-3)

    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(tmp_path / "cfg" / "r.yaml", {"output_dir": "elsewhere", "connector.lr": 0.5})
    assert recipe.output_dir == str(tmp_path / "elsewhere")
    assert recipe.connector.lr == 0.5 and recipe.connector.mode == "full"  # merged, not replaced


def test_recipe_checks_values(tmp_path, world):
    for overrides, message in [
        ({"llm.mode": "half"}, "valid modes"),
        ({"precision": "fp16"}, "precision"),
        ({"connector.mode": "frozen", "llm.mode": "frozen"}, "nothing to train"),
        ({"vision.mode": "full", "feature_cache.enabled": True}, "frozen vision tower"),
        ({"grad_accum": 2, "global_batch_size": 8}, "not both"),
        ({"batch_size": "two"}, "batch_size"),
    ]:
        with pytest.raises(RecipeError, match=message):
            recipe_from_dict(tiny_recipe(world, tmp_path, **overrides))


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml")))
def test_shipped_recipes_load(name):
    recipe = load_recipe(CONFIGS_DIR / f"{name}.yaml")
    assert recipe.vision.mode == "frozen"
    if name.startswith("llava-1.5-7b"):
        assert recipe.precision == "bf16" and recipe.gradient_checkpointing
        assert recipe.optim.warmup_ratio == 0.03
        if recipe.model.init_from is None:  # stage 1
            assert recipe.model.vision == "openai/clip-vit-large-patch14-336"
            assert recipe.model.llm == "lmsys/vicuna-7b-v1.5"
            assert (recipe.connector.lr, recipe.global_batch_size, recipe.template) == (1e-3, 256, "plain")
        else:
            assert (recipe.llm.lr, recipe.global_batch_size, recipe.llm.mode) == (2e-5, 128, "full")


# --- stages ----------------------------------------------------------------------------------------
def test_stage_modes_counts_and_param_groups(tmp_path, world):
    recipe = recipe_from_dict(tiny_recipe(world, tmp_path, **{"llm.mode": "frozen"}))
    model, _ = build_model(recipe)
    apply_stage(model, recipe)
    counts = parameter_counts(model)
    assert counts["connector"]["trainable"] == counts["connector"]["total"] > 0
    assert counts["vision"]["trainable"] == counts["llm"]["trainable"] == 0
    groups = param_groups(model, recipe)
    assert {g["name"] for g in groups} == {"connector", "connector/no_decay"}
    assert all(p.ndim == 1 for g in groups if g["name"].endswith("no_decay") for p in g["params"])

    recipe = recipe_from_dict(tiny_recipe(world, tmp_path, **{"llm.mode": "lora", "llm.lora": {"r": 4}}))
    model, _ = build_model(recipe)
    apply_stage(model, recipe)
    trainable = [n for n, p in model.language_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert {g["lr"] for g in param_groups(model, recipe) if g["name"] == "llm"} == {1e-3}


def test_llm_top_layers_train_alone_and_backward_stops_there(tmp_path, world):
    overrides = {"llm.mode": "full", "llm.top_layers": 1, "connector.mode": "frozen"}
    recipe = recipe_from_dict(tiny_recipe(world, tmp_path, **overrides))
    model, processor = build_model(recipe)
    apply_stage(model, recipe)
    layers = model.language_model.model.layers
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {
        f"language_model.model.layers.{len(layers) - 1}.{n}" for n, _ in layers[-1].named_parameters()
    }
    assert trainable == expected | {"language_model.model.norm.weight"}
    assert parameter_counts(model)["connector"]["trainable"] == 0
    # nothing below the top layer asks for a gradient: the lower layers see no backward pass
    seen = []
    layers[0].register_full_backward_hook(lambda *args: seen.append(0))
    layers[-1].register_full_backward_hook(lambda *args: seen.append(-1))
    batch = processor.collate([LlavaDataset(world["data"], world["root"], processor)[0].encoded])
    model(**batch, use_cache=False).loss.backward()
    assert seen == [-1]
    for bad in (
        {"llm.top_layers": 0},
        {"llm.mode": "frozen", "llm.top_layers": 1},
        {"connector.top_layers": 1},
    ):
        with pytest.raises(RecipeError, match="top_layers"):
            recipe_from_dict(tiny_recipe(world, tmp_path, **{"llm.mode": "full", **bad}))
    recipe = recipe_from_dict(tiny_recipe(world, tmp_path, **{"llm.mode": "full", "llm.top_layers": 99}))
    with pytest.raises(ValueError, match="decoder layers"):
        apply_stage(build_model(recipe)[0], recipe)


def test_merged_lora_model_reloads_to_the_same_logits(tmp_path, world):
    recipe = recipe_from_dict(tiny_recipe(world, tmp_path, **{"llm.mode": "lora", "llm.lora": {"r": 4}}))
    model, processor = build_model(recipe)
    apply_stage(model, recipe)
    batch = processor.collate([LlavaDataset(world["data"], world["root"], processor)[0].encoded])
    model.eval()
    with torch.no_grad():
        base = model(**batch).logits
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # zero-initialised: make the adapters matter
            p.data.normal_(0, 0.02)
    with torch.no_grad():
        before = model(**batch).logits
    assert (before - base).abs().max() > 1e-2
    merge_lora(model)
    model.save_pretrained(tmp_path / "m")
    reloaded = GraftForConditionalGeneration.from_pretrained(tmp_path / "m").eval()
    with torch.no_grad():
        after = reloaded(**batch).logits
    assert torch.allclose(before, after, atol=1e-5)


# --- the loop ----------------------------------------------------------------------------------------
def test_train_saves_a_reloadable_model_and_logs(tmp_path, world):
    result_recipe = recipe_from_dict(tiny_recipe(world, tmp_path / "out", max_steps=6))
    result = train(result_recipe)
    assert result.steps == 6 and len(result.losses) == 6
    assert result.losses[-1] < result.losses[0]
    out = tmp_path / "out"
    rows = read_log(out)
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert {"loss", "lr", "samples_per_s", "tokens_per_s", "lr/llm", "grad_norm"} <= set(rows[0])
    assert rows[-1]["loss"] == pytest.approx(result.final_loss)
    assert not (out / ".final.tmp").exists()
    assert load_recipe(out / "recipe.yaml").to_dict() == result_recipe.to_dict()  # the run, as run

    reloaded = GraftForConditionalGeneration.from_pretrained(out).eval()
    processor = GraftProcessor.from_pretrained(out)
    batch = processor.collate([LlavaDataset(world["data"], world["root"], processor)[0].encoded])
    with torch.no_grad():
        expected = result.model.eval()(**batch).logits
        assert torch.equal(reloaded(**batch).logits, expected)


@pytest.mark.parametrize("component", ["llm", "vision"])
def test_lora_training_saves_a_merged_model(tmp_path, world, component):
    lora = {f"{component}.mode": "lora", f"{component}.lora": {"r": 4, "dropout": 0.0}}
    set_seed(0)
    start, _ = build_model(recipe_from_dict(tiny_recipe(world, tmp_path)))
    result = train(recipe_from_dict(tiny_recipe(world, tmp_path / "out", **lora)))
    assert not any("lora" in n for n, _ in result.model.named_parameters())
    prefix = {"llm": "language_model.", "vision": "vision_tower."}[component]
    trained = result.model.state_dict()
    assert any(not torch.equal(t, trained[n]) for n, t in start.state_dict().items() if n.startswith(prefix))
    reloaded = GraftForConditionalGeneration.from_pretrained(tmp_path / "out").eval()
    processor = GraftProcessor.from_pretrained(tmp_path / "out")
    batch = processor.collate([LlavaDataset(world["data"], world["root"], processor)[2].encoded])
    with torch.no_grad():
        assert torch.allclose(reloaded(**batch).logits, result.model.eval()(**batch).logits, atol=1e-6)


def test_a_connector_only_stage_leaves_the_rest_untouched(tmp_path, world):
    # stage 1 on data with a text-only sample: that batch reaches no trainable weight
    recipe = recipe_from_dict(tiny_recipe(world, tmp_path / "out", **{"llm.mode": "frozen"}))
    set_seed(recipe.seed)  # as train() does: the new image-token row is drawn at random
    before, _ = build_model(recipe)
    result = train(recipe)
    after = result.model.state_dict()
    for name, tensor in before.state_dict().items():
        changed = not torch.equal(tensor, after[name])
        assert changed == name.startswith("connector."), name


def test_accumulated_micro_batches_equal_one_big_batch(tmp_path, world):
    # the step's loss is the mean over all its supervised tokens, however the batch is cut
    import copy

    from accelerate import Accelerator

    from graft.train.loop import _step

    recipe = recipe_from_dict(tiny_recipe(world, tmp_path))
    model, processor = build_model(recipe)
    apply_stage(model, recipe)
    twin = copy.deepcopy(model)
    dataset = LlavaDataset(world["data"], world["root"], processor)
    samples = [dataset[i].encoded for i in (0, 2, 3, 7)]  # different answer lengths, one text-only
    accelerator = Accelerator()
    results = []
    for m, cuts in ((model, [samples]), (twin, [samples[:2], samples[2:]])):
        batches = [processor.collate(c) for c in cuts]
        optimizer = torch.optim.SGD(param_groups(m, recipe))  # linear in the gradient
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
        trainable = [p for p in m.parameters() if p.requires_grad]
        results.append(_step(accelerator, m, batches, optimizer, scheduler, trainable, 1.0))
    assert results[0]["loss"] == pytest.approx(results[1]["loss"], abs=1e-6)
    assert results[0]["grad_norm"] == pytest.approx(results[1]["grad_norm"], rel=1e-5)
    a, b = model.state_dict(), twin.state_dict()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6


def test_gradient_checkpointing_gives_the_same_losses(tmp_path, world):
    plain = train(recipe_from_dict(tiny_recipe(world, tmp_path / "a", max_steps=3)))
    ckpt = train(
        recipe_from_dict(tiny_recipe(world, tmp_path / "b", max_steps=3, gradient_checkpointing=True))
    )
    assert ckpt.losses == pytest.approx(plain.losses, abs=1e-6)


def shared_prefix_runs(monkeypatch) -> list[int]:
    """The shared prefix's length each time a forward runs it once for its batch, from now on."""
    import graft.modeling

    calls = []
    run_once = graft.modeling.decode_after_shared_prefix
    monkeypatch.setattr(
        graft.modeling, "decode_after_shared_prefix", lambda *a, **k: calls.append(a[4]) or run_once(*a, **k)
    )
    return calls


def test_the_shared_prefix_gives_the_same_losses_and_weights(tmp_path, world, monkeypatch):
    calls = shared_prefix_runs(monkeypatch)
    shared = train(recipe_from_dict(tiny_recipe(world, tmp_path / "a", max_steps=3)))
    # the micro-batches of two samples ran Vicuna's system prompt once (a sample alone has no one
    # to share it with: the text-only record and the seventh image record come alone)
    assert len(calls) == 4 and min(calls) >= 8
    plain = train(recipe_from_dict(tiny_recipe(world, tmp_path / "b", max_steps=3, share_prefix=False)))
    assert len(calls) == 4
    assert shared.losses == pytest.approx(plain.losses, abs=1e-6)
    a, b = shared.model.state_dict(), plain.model.state_dict()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


def test_compiled_decoder_layers_give_the_same_losses_and_a_plain_checkpoint(tmp_path, world, monkeypatch):
    from torch._dynamo.utils import counters

    plain = train(recipe_from_dict(tiny_recipe(world, tmp_path / "a", max_steps=3)))
    calls = shared_prefix_runs(monkeypatch)
    compiled = train(recipe_from_dict(tiny_recipe(world, tmp_path / "b", max_steps=3, compile=True)))
    assert compiled.losses == pytest.approx(plain.losses, abs=1e-5)
    # compiled layers run every sample's opening: with the prefix's cache, whose update reads the
    # layer's index, each layer would compile its own graph (share_prefix is on by default)
    assert calls == []
    # the saved folder is an ordinary model: same keys (no compile wrapper), same weights
    a = GraftForConditionalGeneration.from_pretrained(tmp_path / "a").state_dict()
    b = GraftForConditionalGeneration.from_pretrained(tmp_path / "b").state_dict()
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5

    def generates(step, total, model, processor):  # as the demo's learning curve does, between steps
        model.eval()
        model.generate(**processor.tokenizer(["a b c"], return_tensors="pt"), max_new_tokens=4)
        model.train()

    counters.clear()  # the layers' graphs are compiled and cached by now
    train(recipe_from_dict(tiny_recipe(world, tmp_path / "c", max_steps=3, compile=True)), on_step=generates)
    # the hook's generation ran eagerly: compiled, each new cache length would compile new graphs
    assert counters["stats"]["unique_graphs"] == 0


def test_bf16_training_runs_and_saves_bf16(tmp_path, world, monkeypatch):
    monkeypatch.setenv("GRAFT_EMULATED_BF16", "1")  # bf16 even on a CPU that only emulates it
    result = train(recipe_from_dict(tiny_recipe(world, tmp_path / "out", max_steps=2, precision="bf16")))
    assert all(torch.isfinite(torch.tensor(result.losses)))
    reloaded = GraftForConditionalGeneration.from_pretrained(tmp_path / "out")
    assert reloaded.language_model.dtype == torch.bfloat16


def test_bf16_falls_back_to_fp32_where_the_cpu_only_emulates_it(tmp_path, world, monkeypatch, caplog):
    import graft.precision
    from graft.inference import load_for_inference

    monkeypatch.delenv("GRAFT_EMULATED_BF16", raising=False)
    monkeypatch.setattr(graft.precision, "cpu_has_bf16", lambda: False)
    monkeypatch.setattr(graft.precision, "_warned", set())
    with caplog.at_level("WARNING", logger="graft.precision"):
        train(recipe_from_dict(tiny_recipe(world, tmp_path / "out", max_steps=1, precision="bf16")))
    assert "no native bf16" in caplog.text and "computing in fp32" in caplog.text
    assert "precision: fp32" in (tmp_path / "out" / "recipe.yaml").read_text()  # what ran
    assert (
        GraftForConditionalGeneration.from_pretrained(tmp_path / "out").language_model.dtype == torch.float32
    )
    model, _ = load_for_inference(tmp_path / "out", bf16=True)
    assert model.language_model.dtype == torch.float32
    monkeypatch.setattr(graft.precision, "cpu_has_bf16", lambda: True)
    assert load_for_inference(tmp_path / "out", bf16=True)[0].language_model.dtype == torch.bfloat16


def test_global_batch_size_sets_gradient_accumulation(tmp_path, world):
    result = train(
        recipe_from_dict(
            tiny_recipe(world, tmp_path / "out", grad_accum=None, global_batch_size=4, max_steps=1)
        )
    )
    assert read_log(tmp_path / "out")[0]["samples_per_s"] > 0
    assert result.steps == 1
    with pytest.raises(ValueError, match="not a multiple"):
        train(recipe_from_dict(tiny_recipe(world, tmp_path / "o2", grad_accum=None, global_batch_size=3)))


# --- the feature cache ---------------------------------------------------------------------------------
def test_cached_and_uncached_training_give_the_same_losses(tmp_path, world):
    plain = train(recipe_from_dict(tiny_recipe(world, tmp_path / "a")))
    raw = tiny_recipe(
        world, tmp_path / "b", **{"feature_cache.enabled": True, "feature_cache.dir": str(tmp_path / "fc")}
    )
    cached = train(recipe_from_dict(raw))
    assert cached.losses == pytest.approx(plain.losses, abs=1e-6)
    entries = list((tmp_path / "fc").glob("*/*/*.safetensors"))
    assert len(entries) == 6  # one per distinct image file
    # the trained weights agree too
    a, b = plain.model.state_dict(), cached.model.state_dict()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


def test_feature_cache_is_reused_and_invalidated_by_the_tower(tmp_path, world):
    recipe = recipe_from_dict(tiny_recipe(world, tmp_path))
    model, processor = build_model(recipe)
    dataset = LlavaDataset(world["data"], world["root"], processor)
    cache = FeatureCache.for_model(tmp_path / "fc", model)
    assert cache.fill(model, dataset)["computed"] == 6
    again = FeatureCache.for_model(tmp_path / "fc", model, in_memory=False)
    assert again.root == cache.root and again.fill(model, dataset)["computed"] == 0
    key = dataset[0].image_keys[0]
    pixels = processor.preprocess_images([random_image(0)])
    with torch.no_grad():
        assert torch.equal(again.get(key), model.select_vision_features(pixels)[0])

    model.config.vision_feature_layer = -1
    assert FeatureCache.for_model(tmp_path / "fc", model).root != cache.root
    model.config.vision_feature_layer = -2
    with torch.no_grad():
        next(model.vision_tower.parameters()).add_(1e-3)
    changed = FeatureCache.for_model(tmp_path / "fc", model)
    assert changed.root != cache.root and changed.fill(model, dataset)["computed"] == 6


def test_feature_cache_computes_where_the_vision_tower_is(tmp_path, world, monkeypatch):
    # a CUDA run of the demo's grounding once sent CPU pixels to a tower on the GPU; here the
    # "meta" device stands in for the GPU, and a CPU twin computes the features
    import copy

    recipe = recipe_from_dict(tiny_recipe(world, tmp_path))
    model, processor = build_model(recipe)
    dataset = LlavaDataset(world["data"], world["root"], processor)
    cache = FeatureCache.for_model(tmp_path / "fc", model)
    twin = copy.deepcopy(model)
    model.vision_tower.to("meta")
    seen: list[str] = []
    made: list[torch.Tensor] = []  # each batch's pixels as made, on the CPU
    preprocess = dataset.processor.preprocess_images
    monkeypatch.setattr(
        dataset.processor, "preprocess_images", lambda im: made.append(preprocess(im)) or made[-1]
    )

    def select(pixels: torch.Tensor) -> torch.Tensor:
        seen.append(pixels.device.type)
        return twin.select_vision_features(made[-1])

    monkeypatch.setattr(model, "select_vision_features", select)
    assert cache.fill(model, dataset)["computed"] == 6
    assert seen and set(seen) == {"meta"}
    key = dataset[0].image_keys[0]
    with torch.no_grad():
        assert torch.equal(
            cache.get(key), twin.select_vision_features(processor.preprocess_images([random_image(0)]))[0]
        )


def test_a_lora_stage_prints_no_library_future_warning(tmp_path, world):
    recipe = recipe_from_dict(tiny_recipe(world, tmp_path, **{"llm.mode": "lora", "llm.lora": {"r": 4}}))
    model, _ = build_model(recipe)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        apply_stage(model, recipe)
    assert [str(w.message) for w in caught if issubclass(w.category, FutureWarning)] == []
