"""Cheetah's VPG-C connector: zero-init exactness, what learns, the guidance hook's arithmetic,
per-sample token choice, prefill-only behaviour under the KV cache, bad specs."""

import pytest
import torch
from accelerate import init_empty_weights

from graft.backbones import compose
from graft.connectors import build_connector
from graft.connectors.vpgc import decoder_layers
from graft.modeling import GraftForConditionalGeneration, last_instruction_positions
from graft.processing import GraftProcessor
from graft.templates import Message
from graft.train.recipe import recipe_from_dict
from graft.train.stages import apply_stage

from tiny import random_image, tiny_image_processor, tiny_llm, tiny_tokenizer, tiny_vision

torch.set_num_threads(1)

QFORMER = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
VPG = {"name": "qformer", "num_query_tokens": 4, "qformer_config": QFORMER}
LAYERS = 4  # the LLM's decoder layers: guidance at layer 2 by default


def _tiny_model(connector: dict) -> tuple[GraftForConditionalGeneration, GraftProcessor]:
    tokenizer = tiny_tokenizer()
    llm = tiny_llm(len(tokenizer) + 1, seed=0)
    if LAYERS != llm.config.num_hidden_layers:  # a deeper tiny LLM, same recipe as tests/tiny.py
        torch.manual_seed(0)
        llm = type(llm)(type(llm.config)(**{**llm.config.to_dict(), "num_hidden_layers": LAYERS})).eval()
    model = compose(tiny_vision(0), llm, tokenizer, connector=connector).eval()
    return model, GraftProcessor(tokenizer, tiny_image_processor(), model.config.image_seq_length)


def _base_and_vpgc():
    base, processor = _tiny_model(VPG)
    vpgc, _ = _tiny_model({"name": "vpgc", "vpg": VPG})
    vpgc.connector.vpg.load_state_dict(base.connector.state_dict())
    vpgc.connector.reset_guidance()
    return base, vpgc.eval(), processor


def _randomise_guidance(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (
            model.connector.w_g.weight,
            model.connector.w_g.bias,
            model.connector.w_o.weight,
            model.connector.q_new,
        ):
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def _training_batch(processor):
    """Two samples, right-padded, different instruction lengths; sample 0 has two images."""
    first = [Message("user", "Compare <image> with <image>."), Message("assistant", "A circle.")]
    second = [
        Message("user", "<image>\nIs there a red circle? How many objects are there?"),
        Message("assistant", "Yes. There are 3 objects."),
    ]
    samples = [
        processor.encode(first, [random_image(1), random_image(2)]),
        processor.encode(second, [random_image(3)]),
    ]
    return samples, processor.collate(samples)


def test_logits_at_initialisation_equal_the_base_models_exactly():
    base, vpgc, processor = _base_and_vpgc()
    _, batch = _training_batch(processor)
    with torch.no_grad():
        assert torch.equal(vpgc(**batch).logits, base(**batch).logits)
    # and the guidance is live: once W_g, W_o are not zero, image positions onwards change
    _randomise_guidance(vpgc)
    with torch.no_grad():
        changed = (vpgc(**batch).logits - base(**batch).logits).abs().amax(-1) > 1e-6
    for row in range(2):
        first_image = int((batch["input_ids"][row] == vpgc.config.image_token_id).nonzero()[0])
        assert not changed[row, :first_image].any()  # tokens before any image never see it
        assert changed[row, first_image:].any()


def test_only_w_g_w_o_and_the_new_queries_train():
    _, vpgc, processor = _base_and_vpgc()
    recipe = recipe_from_dict(
        {
            "model": {"vision": "v", "llm": "l"},
            "data": {"train": ["x.json"]},
            "vision": {"mode": "frozen"},
            "connector": {"mode": "full"},
            "llm": {"mode": "frozen"},
        }
    )
    apply_stage(vpgc, recipe)
    trainable = {name for name, p in vpgc.named_parameters() if p.requires_grad}
    assert trainable == {
        "connector.w_g.weight",
        "connector.w_g.bias",
        "connector.w_o.weight",
        "connector.w_o.bias",
        "connector.q_new",
    }
    vpgc.train()
    assert not vpgc.connector.vpg.training  # the frozen Q-Former keeps dropout off
    _, batch = _training_batch(processor)
    vpgc(**batch).loss.backward()
    assert vpgc.connector.w_o.weight.grad.abs().sum() > 0  # the hook is in the autograd graph
    assert all(p.grad is None for p in vpgc.connector.vpg.parameters())


def test_trainable_count_for_a_7b_llm_on_the_meta_device():
    with init_empty_weights():
        connector = build_connector({"name": "vpgc", "vpg": {"name": "qformer"}}, 1408, 4096)
    connector.set_trainable(True)
    assert connector.w_g.weight.is_meta
    assert sum(p.numel() for p in connector.parameters() if p.requires_grad) == 6_320_896


def test_each_image_gets_its_own_residual_from_its_samples_guidance():
    _, vpgc, processor = _base_and_vpgc()
    _randomise_guidance(vpgc)
    _, batch = _training_batch(processor)
    layer = decoder_layers(vpgc.language_model)[vpgc.connector.layer_index]
    seen = {}
    before = layer.register_forward_pre_hook(
        lambda m, a: seen.__setitem__("before", a[0].clone()), prepend=True
    )
    after = layer.register_forward_pre_hook(lambda m, a: seen.__setitem__("after", a[0].clone()))
    with torch.no_grad():
        vpgc(**batch)
        before.remove(), after.remove()
        c = vpgc.connector
        positions = last_instruction_positions(
            batch["input_ids"].shape, batch["attention_mask"], batch["labels"]
        )
        h = seen["before"][torch.arange(2), positions]
        queries = c.w_g(h).unsqueeze(1) + c.q_new
        features = vpgc.select_vision_features(batch["pixel_values"])
        delta = seen["after"] - seen["before"]
        image_mask = batch["input_ids"] == vpgc.config.image_token_id
        assert torch.equal(delta[~image_mask], torch.zeros_like(delta[~image_mask]))
        blocks = delta[image_mask].view(3, 4, -1)
        for j, sample in enumerate([0, 0, 1]):
            expected = c.w_o(c.vpg.query_outputs(features[j : j + 1], queries=queries[sample : sample + 1]))[
                0
            ]
            assert torch.allclose(blocks[j], expected, atol=1e-5), f"image {j}"
        assert not torch.allclose(blocks[0], blocks[1], atol=1e-3)  # two images, two residuals


def test_the_last_instruction_token_is_found_per_sample():
    samples, batch = _training_batch(_tiny_model({"name": "vpgc", "vpg": VPG})[1])
    positions = last_instruction_positions(batch["input_ids"].shape, batch["attention_mask"], batch["labels"])
    for row, sample in enumerate(samples):
        answer_start = next(i for i, t in enumerate(sample.labels) if t != -100)
        assert positions[row] == answer_start - 1
    # generation prompts: the last attended token, left padding or right
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    assert last_instruction_positions((3, 5), mask).tolist() == [4, 4, 2]
    # multi-turn: the token before the last answer
    labels = torch.tensor([[-100, 5, 6, -100, -100, 7, 8]])
    assert last_instruction_positions((1, 7), None, labels).tolist() == [4]


def test_batched_samples_with_different_lengths_match_each_alone():
    _, vpgc, processor = _base_and_vpgc()
    _randomise_guidance(vpgc)
    samples, batch = _training_batch(processor)
    with torch.no_grad():
        together = vpgc(**batch).logits
        for row, sample in enumerate(samples):
            alone = vpgc(**processor.collate([sample])).logits[0]
            assert torch.allclose(together[row, : len(sample.input_ids)], alone, atol=1e-5), f"sample {row}"


def test_generation_with_kv_cache_equals_without_and_left_padding_picks_each_prompts_end():
    _, vpgc, processor = _base_and_vpgc()
    _randomise_guidance(vpgc, seed=3)
    conversations = [
        [Message("user", "<image> What?")],
        [Message("user", "Compare <image> and <image>. Is there a red circle? How many objects are there?")],
    ]
    images = [[random_image(1)], [random_image(2), random_image(3)]]
    prompts = processor.prompts(conversations, images)
    settings = {
        "max_new_tokens": 5,
        "do_sample": False,
        "output_scores": True,
        "return_dict_in_generate": True,
    }
    with torch.no_grad():
        cached = vpgc.generate(**prompts, **settings)
        uncached = vpgc.generate(**prompts, **settings, use_cache=False)
        assert torch.equal(cached.sequences, uncached.sequences)
        for a, b in zip(cached.scores, uncached.scores, strict=True):
            finite = torch.isfinite(a)
            assert torch.equal(finite, torch.isfinite(b)) and torch.allclose(a[finite], b[finite], atol=1e-4)
        for row in range(2):
            alone = vpgc.generate(
                **processor.prompts(conversations[row : row + 1], images[row : row + 1]), **settings
            )
            first = torch.stack([s[row] for s in cached.scores])
            solo = torch.stack([s[0] for s in alone.scores])
            finite = torch.isfinite(first)
            assert torch.allclose(first[finite], solo[finite], atol=1e-4), f"prompt {row}"


def test_save_and_reload_keep_the_guidance(tmp_path):
    _, vpgc, processor = _base_and_vpgc()
    _randomise_guidance(vpgc)
    _, batch = _training_batch(processor)
    vpgc.save_pretrained(tmp_path)
    loaded = GraftForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert loaded.connector.layer_index == LAYERS // 2
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, vpgc(**batch).logits)
    # a fresh model from the config starts exactly at the base (zero projections, copied queries)
    fresh = GraftForConditionalGeneration(loaded.config)
    assert not fresh.connector.w_o.weight.any() and not fresh.connector.w_g.weight.any()
    assert torch.equal(fresh.connector.q_new, fresh.connector.vpg.query_tokens)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"name": "vpgc"}, "guides a Q-Former and none was given"),
        ({"name": "vpgc", "vpg": {"name": "mlp2x_gelu"}}, "vpg.name='mlp2x_gelu' has none"),
        ({"name": "vpgc", "vpg": VPG, "layer": 2}, "unknown options: layer"),
    ],
)
def test_a_vpgc_spec_without_a_qformer_is_a_clear_error(spec, message):
    with pytest.raises(ValueError, match=message):
        build_connector(spec, 32, 64)


@pytest.mark.parametrize("layer", [LAYERS, -1, 100])
def test_a_guidance_layer_outside_the_llm_is_a_clear_error(layer):
    with pytest.raises(
        ValueError, match=rf"guidance_layer={layer} is outside the LLM, which has {LAYERS} decoder"
    ):
        _tiny_model({"name": "vpgc", "vpg": VPG, "guidance_layer": layer})


def test_a_vpgc_stage_trains_only_the_guidance_and_reloads(tmp_path):
    from graft.train import train

    from tiny import tiny_recipe, tiny_world

    world = tiny_world(tmp_path / "world", n_images=4)
    raw = tiny_recipe(
        world,
        tmp_path / "out",
        **{
            "model.connector": {"name": "vpgc", "vpg": VPG},
            "connector.lr": 1e-2,
            "llm.mode": "frozen",
            "feature_cache.enabled": True,
            "max_steps": 3,
        },
    )
    result = train(recipe_from_dict(raw))
    model = result.model
    learned = {name for name, p in model.named_parameters() if p.requires_grad}
    assert learned == {
        f"connector.{n}" for n in ("w_g.weight", "w_g.bias", "w_o.weight", "w_o.bias", "q_new")
    }
    assert model.connector.w_o.weight.abs().sum() > 0 and model.connector.w_g.weight.abs().sum() > 0
    assert not torch.equal(model.connector.q_new, model.connector.vpg.query_tokens)
    reloaded = GraftForConditionalGeneration.from_pretrained(tmp_path / "out").eval()
    for name, tensor in model.connector.state_dict().items():
        assert torch.equal(reloaded.connector.state_dict()[name], tensor), name


def test_wrap_with_vpgc_keeps_the_trained_model_exactly(tmp_path):
    from graft.backbones import wrap_with_vpgc

    base, processor = _tiny_model(VPG)
    with torch.no_grad():  # a "trained" Q-Former: queries away from their init
        base.connector.query_tokens.add_(0.3)
    enc = processor.encode([Message("user", "<image>\nWhat is it?")], [random_image(1)], True)
    ids = torch.tensor([enc.input_ids])
    want = base(input_ids=ids, pixel_values=enc.pixel_values).logits
    wrapped = wrap_with_vpgc(base, guidance_layer=1)
    assert not wrapped.training and wrapped.config.connector["guidance_layer"] == 1
    torch.testing.assert_close(
        wrapped(input_ids=ids, pixel_values=enc.pixel_values).logits, want, rtol=0, atol=0
    )
    torch.testing.assert_close(wrapped.connector.q_new, base.connector.query_tokens)
    wrapped.save_pretrained(tmp_path)
    again = GraftForConditionalGeneration.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(
        again(input_ids=ids, pixel_values=enc.pixel_values).logits, want, rtol=0, atol=0
    )
    with pytest.raises(ValueError, match="VPG-C guides a Q-Former; this model's connector is 'mlp2x_gelu'"):
        wrap_with_vpgc(_tiny_model({"name": "mlp2x_gelu"})[0])
