import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlavaConfig, LlavaForConditionalGeneration

from graft.backbones import compose
from graft.config import GraftConfig
from graft.connectors import TokenReduction, UnknownConnectorError, build_connector
from graft.modeling import GraftForConditionalGeneration, ImageTokenMismatchError
from graft.processing import GraftProcessor
from graft.prompts import ImageMarkerError
from graft.templates import Message

from tiny import (
    random_image,
    tiny_image_processor,
    tiny_llm,
    tiny_model_and_processor,
    tiny_tokenizer,
    tiny_vision,
)


def _batch(processor, turns, images):
    sample = processor.encode(turns, images)
    return processor.collate([sample])


def test_save_load_round_trip_gives_identical_logits(tmp_path):
    model, processor = tiny_model_and_processor()
    batch = _batch(
        processor,
        [Message("user", "<image>\nWhat is it?"), Message("assistant", "A circle.")],
        [random_image()],
    )
    with torch.no_grad():
        before = model(**batch).logits
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, GraftForConditionalGeneration)
    assert AutoConfig.from_pretrained(tmp_path).model_type == "graft"
    batch2 = _batch(
        GraftProcessor.from_pretrained(tmp_path),
        [Message("user", "<image>\nWhat is it?"), Message("assistant", "A circle.")],
        [random_image()],
    )
    assert torch.equal(batch["input_ids"], batch2["input_ids"])
    with torch.no_grad():
        after = loaded(**batch2).logits
    assert torch.equal(before, after)


def test_images_anywhere_in_any_turn_each_get_their_own_block():
    model, processor = tiny_model_and_processor()
    turns = [
        Message("user", "Compare <image> with"),
        Message("assistant", "Which one?"),
        Message("user", "this one: <image>. And <image>?"),
        Message("assistant", "They differ."),
    ]
    images = [random_image(1), random_image(2), random_image(3)]
    batch = _batch(processor, turns, images)
    assert batch["pixel_values"].shape[0] == 3
    ids = batch["input_ids"][0]
    mask = ids == model.config.image_token_id
    assert int(mask.sum()) == 3 * model.config.image_seq_length
    with torch.no_grad():
        embeds = model.embed_inputs(batch["input_ids"], batch["pixel_values"])
        soft = model.get_image_features(batch["pixel_values"])
    # blocks appear in marker order: block k holds image k's soft tokens
    assert torch.allclose(embeds[0][mask], soft.reshape(-1, soft.shape[-1]))


def test_marker_and_image_count_must_agree():
    model, processor = tiny_model_and_processor()
    with pytest.raises(ImageMarkerError, match="2 <image> marker"):
        processor.encode([Message("user", "<image><image> hi"), Message("assistant", "yo")], [random_image()])
    batch = _batch(processor, [Message("user", "<image> hi"), Message("assistant", "yo")], [random_image()])
    with pytest.raises(ImageTokenMismatchError):
        model(input_ids=batch["input_ids"], pixel_values=torch.cat([batch["pixel_values"]] * 2))
    with pytest.raises(ImageTokenMismatchError, match="no images"):
        model(input_ids=batch["input_ids"])


@pytest.mark.parametrize("kind,channels", [("pool", 1), ("pixel_shuffle", 4)])
def test_token_reduction_shapes(kind, channels):
    reduction = TokenReduction(kind, 2)
    features = torch.randn(3, 16, 8)
    out = reduction(features)
    assert out.shape == (3, 4, 8 * channels)
    assert reduction.num_tokens(16) == 4
    if kind == "pool":  # the top-left 2x2 block averages patches 0, 1, 4, 5
        assert torch.allclose(out[:, 0], features[:, [0, 1, 4, 5]].mean(1))
    else:  # the top-left block concatenates them
        assert torch.equal(out[:, 0], features[:, [0, 1, 4, 5]].reshape(3, -1))


def test_a_margin_widens_each_pixel_shuffle_group_to_the_patches_around_it():
    """margin 1 on a 4x4 grid in 2x2 groups: each group reads a 4x4 window (zeros beyond the image)
    whose centre is its own pixel-shuffled block; still one group per 2x2 block."""
    features = torch.randn(3, 16, 8)
    plain, wide = TokenReduction("pixel_shuffle", 2), TokenReduction("pixel_shuffle", 2, margin=1)
    out = wide(features)
    assert out.shape == (3, 4, 8 * 16) and wide.num_tokens(16) == 4 and wide.channel_multiplier() == 16
    window = out.view(3, 4, 4, 4, 8)  # [n, group, row, column, channel]
    assert torch.equal(window[:, :, 1:3, 1:3].reshape(3, 4, -1), plain(features))
    # the top-left group's window: a ring of zeros above and left, then patches 0-2, 4-6, 8-10
    assert window[:, 0, 0].abs().sum() == 0 and window[:, 0, :, 0].abs().sum() == 0
    assert torch.equal(window[:, 0, 1:, 1:].reshape(3, 9, 8), features[:, [0, 1, 2, 4, 5, 6, 8, 9, 10]])
    # group 3 (bottom right) reads patches 5 and 15 too: both change its token, and only its
    connector = build_connector({"name": "linear", "reduction": "pixel_shuffle", "reduction_margin": 1}, 8, 6)
    for patch, groups in ((15, [3]), (5, [0, 1, 2, 3]), (0, [0])):
        moved = features.clone()
        moved[:, patch] += 1.0
        changed = (connector(moved) - connector(features)).abs().sum((0, 2)) > 0
        assert changed.nonzero().flatten().tolist() == groups
    for kind, margin in (("pool", 1), ("pixel_shuffle", -1), ("pixel_shuffle", 1.5)):
        with pytest.raises(ValueError, match=f"reduction margin {margin!r}"):
            TokenReduction(kind, 2, margin)


def test_reduced_connector_model_runs_with_fewer_tokens():
    model, processor = tiny_model_and_processor({"name": "mlp2x_gelu", "reduction": "pixel_shuffle"})
    assert model.config.image_seq_length == model.num_patches // 4
    batch = _batch(processor, [Message("user", "<image> hi"), Message("assistant", "yo")], [random_image()])
    assert torch.isfinite(model(**batch).loss)


@pytest.mark.parametrize("name", ["linear", "mlp2x_gelu", "swiglu"])
def test_a_projector_writes_each_groups_tokens_one_after_another(name):
    """tokens_per_group=2: two tokens per patch group, group g's at 2g and 2g + 1, each from that
    group's patches alone; a model with it holds twice the placeholders and trains."""
    spec = {"name": name, "reduction": "pixel_shuffle", "tokens_per_group": 2}
    connector = build_connector(spec, 8, 6)
    features = torch.randn(3, 16, 8)
    tokens = connector(features)
    assert tokens.shape == (3, 8, 6) and connector.num_tokens(16) == 8
    moved = features.clone()
    moved[:, [10, 11, 14, 15]] += 1.0  # the patches of group 3 (bottom right)
    changed = (connector(moved) - tokens).abs().sum((0, 2)) > 0
    assert changed.nonzero().flatten().tolist() == [6, 7]
    model, processor = tiny_model_and_processor(spec)
    assert model.config.image_seq_length == 2 * model.num_patches // 4
    batch = _batch(processor, [Message("user", "<image> hi"), Message("assistant", "yo")], [random_image()])
    assert torch.isfinite(model(**batch).loss)
    for bad in (0, 1.5):
        with pytest.raises(ValueError, match=f"tokens_per_group must be a positive integer, got {bad}"):
            build_connector(dict(spec, tokens_per_group=bad), 8, 6)


def test_markers_precede_each_groups_tokens_with_its_row_and_its_column():
    """marker_grid=2: each of the 2 x 2 groups' two tokens after its row's marker and its column's,
    the same tokens as without markers; a model with them holds four tokens per group and trains."""
    spec = {"name": "mlp2x_gelu", "reduction": "pixel_shuffle", "tokens_per_group": 2}
    plain, marked = build_connector(spec, 8, 6), build_connector(dict(spec, marker_grid=2), 8, 6)
    marked.load_state_dict(plain.state_dict(), strict=False)
    features = torch.randn(3, 16, 8)
    tokens, with_markers = plain(features), marked(features)
    assert with_markers.shape == (3, 16, 6) and marked.num_tokens(16) == 16
    rows, cols = marked.markers.detach()
    for group in range(4):
        row, col = divmod(group, 2)
        cell = with_markers[:, 4 * group : 4 * group + 4]
        assert torch.equal(cell[:, 0], rows[row].expand(3, -1)) and torch.equal(
            cell[:, 1], cols[col].expand(3, -1)
        )
        assert torch.equal(cell[:, 2:], tokens[:, 2 * group : 2 * group + 2])
    with pytest.raises(
        ValueError, match="marker_grid=3 marks a 3x3 grid of groups, but the image gives 4 groups"
    ):
        build_connector(dict(spec, marker_grid=3), 8, 6)(features)
    for bad in (-1, 2.0):
        with pytest.raises(ValueError, match=f"marker_grid must be the side .*, got {bad}"):
            build_connector(dict(spec, marker_grid=bad), 8, 6)
    model, processor = tiny_model_and_processor(dict(spec, marker_grid=2))
    assert model.config.image_seq_length == 4 * model.num_patches // 4
    batch = _batch(processor, [Message("user", "<image> hi"), Message("assistant", "yo")], [random_image()])
    assert torch.isfinite(model(**batch).loss)


def test_unknown_connector_lists_valid_names():
    with pytest.raises(UnknownConnectorError, match="valid connectors: lexical, linear, mlp2x_gelu"):
        build_connector({"name": "mlp3x"}, 8, 8)
    with pytest.raises(ValueError, match="unknown options: depth"):
        build_connector({"name": "linear", "depth": 3}, 8, 8)
    with pytest.raises(ValueError, match="unknown token reduction"):
        build_connector({"name": "linear", "reduction": "avg"}, 8, 8)


def test_text_only_sample_needs_no_images():
    model, processor = tiny_model_and_processor()
    batch = _batch(processor, [Message("user", "hello"), Message("assistant", "hi")], [])
    assert "pixel_values" not in batch
    assert torch.isfinite(model(**batch).loss)


def test_cached_features_equal_pixels():
    model, processor = tiny_model_and_processor()
    batch = _batch(processor, [Message("user", "<image> hi"), Message("assistant", "yo")], [random_image()])
    with torch.no_grad():
        from_pixels = model(**batch).logits
        features = model.select_vision_features(batch.pop("pixel_values"))
        from_cache = model(**batch, vision_features=features).logits
    assert torch.equal(from_pixels, from_cache)


def test_supervised_logits_only_gives_the_same_loss_and_gradients():
    """The head applied at supervised positions only: loss and every gradient as the full path
    (two samples of different lengths, so padding and unsupervised prompt positions are mixed)."""
    model, processor = tiny_model_and_processor()
    model.train()
    samples = [
        processor.encode(
            [Message("user", "<image>\nWhat is it?"), Message("assistant", "A red circle on the left.")],
            [random_image(0)],
        ),
        processor.encode(
            [
                Message("user", "<image>\nColour?"),
                Message("assistant", "Red."),
                Message("user", "And the shape?"),
                Message("assistant", "A circle."),
            ],
            [random_image(1)],
        ),
    ]
    batch = processor.collate(samples)
    torch.manual_seed(0)  # the same dropout masks on both paths
    results = []
    for only in (False, True):
        model.zero_grad()
        torch.manual_seed(0)
        out = model(**batch, use_cache=False, supervised_logits_only=only)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((out.loss.detach(), grads, out.logits))
    (full_loss, full_grads, full_logits), (loss, grads, logits) = results
    assert full_logits is not None and logits is None
    torch.testing.assert_close(loss, full_loss, rtol=1e-6, atol=1e-6)
    assert grads.keys() == full_grads.keys() and len(grads) > 10
    for name, grad in grads.items():
        torch.testing.assert_close(grad, full_grads[name], rtol=1e-5, atol=1e-6, msg=name)


INSTRUCT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
INSTRUCT_SPEC = {
    "name": "qformer_instruct",
    "num_query_tokens": 4,
    "qformer_config": {**INSTRUCT, "vocab_size": 64, "max_position_embeddings": 64},
}


def test_image_count_mismatch_is_named_before_any_image_is_encoded():
    """Images without placeholders (an instruction-aware connector would have failed on its rows
    first) and the word-alignment loss (which indexed the images by placeholder block) say both
    counts; placeholders without images are never a text-only batch."""
    model, processor = tiny_model_and_processor(INSTRUCT_SPEC)
    text = _batch(processor, [Message("user", "hi"), Message("assistant", "yo")], [])
    pixels = _batch(processor, [Message("user", "<image> hi"), Message("assistant", "yo")], [random_image()])[
        "pixel_values"
    ]
    rows = {"instruction_ids": torch.ones(1, 3, dtype=torch.long)}
    with pytest.raises(ImageTokenMismatchError, match="holds 0 image placeholder tokens but 1 image"):
        model(input_ids=text["input_ids"], pixel_values=pixels, **rows)

    model, processor = tiny_model_and_processor("linear")
    batch = _batch(
        processor, [Message("user", "<image> hi"), Message("assistant", "A red circle.")], [random_image()]
    )
    words = batch["labels"] != -100
    n = model.config.image_seq_length
    for images, said in (
        (torch.cat([batch["pixel_values"]] * 2), f"2 image\\(s\\) need 2 x {n}"),
        (None, "no images"),
    ):
        with pytest.raises(ImageTokenMismatchError, match=f"holds {n} image placeholder tokens but {said}"):
            model(
                input_ids=batch["input_ids"], labels=batch["labels"], pixel_values=images, caption_words=words
            )


def test_from_pretrained_refuses_weights_that_do_not_fit_the_connector_spec(tmp_path):
    """A config.json whose connector was edited or lost (and so became the default) would load
    a connector partly initialised afresh, with only a warning."""
    model, _ = tiny_model_and_processor("mlp2x_gelu")
    model.save_pretrained(tmp_path)
    loaded, info = GraftForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and loaded.config.connector == {"name": "mlp2x_gelu"}
    config = json.loads((tmp_path / "config.json").read_text())
    for connector, said in (
        ("linear", "unexpected: connector.linear_2.bias, connector.linear_2.weight"),
        ("swiglu", "of another shape: connector.linear_1.bias, connector.linear_1.weight"),
    ):
        (tmp_path / "config.json").write_text(json.dumps({**config, "connector": {"name": connector}}))
        with pytest.raises(
            ValueError,
            match=f"do not fit its config.json \\(connector {{'name': '{connector}'}}\\): .*{said}",
        ):
            AutoModelForCausalLM.from_pretrained(tmp_path)

    linear, _ = tiny_model_and_processor("linear")
    linear.save_pretrained(tmp_path / "linear")
    config = json.loads((tmp_path / "linear" / "config.json").read_text())
    del config["connector"]
    (tmp_path / "linear" / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError, match="mlp2x_gelu.*missing: connector.linear_2.bias, connector.linear_2.weight"
    ):
        GraftForConditionalGeneration.from_pretrained(tmp_path / "linear")


def test_a_vision_feature_layer_outside_the_tower_is_a_clear_error():
    vision, text = tiny_vision().config, tiny_llm(400).config  # 2 layers: hidden states -3..2
    for layer in (-3, 2):
        assert GraftConfig(vision, text, vision_feature_layer=layer).vision_feature_layer == layer
    for layer in (-4, 3):
        with pytest.raises(ValueError, match=f"vision_feature_layer={layer} is outside .*valid: -3..2"):
            GraftConfig(vision, text, vision_feature_layer=layer)


@pytest.mark.parametrize("strategy", ["default", "full"])
@pytest.mark.parametrize("layer", [-2, -1, 0])
def test_image_features_equal_llavas_for_each_layer_and_strategy(strategy, layer):
    tokenizer = tiny_tokenizer()
    model = compose(
        tiny_vision(), tiny_llm(len(tokenizer) + 1), tokenizer, "mlp2x_gelu", layer, strategy
    ).eval()
    config = LlavaConfig(
        vision_config=model.config.vision_config.to_dict(),
        text_config=model.config.text_config.to_dict(),
        vision_feature_layer=layer,
        vision_feature_select_strategy=strategy,
        image_token_id=model.config.image_token_id,
        projector_hidden_act="gelu",
    )
    llava = LlavaForConditionalGeneration(config).eval()
    llava.model.vision_tower.load_state_dict(model.vision_tower.state_dict())
    llava.model.multi_modal_projector.load_state_dict(model.connector.state_dict())
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model.get_image_features(pixels)
        theirs = llava.get_image_features(
            pixels,
            vision_feature_layer=layer,
            vision_feature_select_strategy=strategy,
            output_hidden_states=True,
        ).pooler_output
    assert ours.shape[1] == 16 + (strategy == "full") and torch.equal(ours, torch.stack(list(theirs)))


def test_tied_and_resized_embeddings_survive_a_round_trip(tmp_path):
    tokenizer = tiny_tokenizer()
    llm = tiny_llm(len(tokenizer), tie=True)  # no row for <image> yet: compose adds one
    model = compose(tiny_vision(), llm, tokenizer, "linear").eval()
    assert model.language_model.config.vocab_size == len(tokenizer) == model.config.image_token_id + 1
    processor = GraftProcessor(tokenizer, tiny_image_processor(), model.config.image_seq_length)
    batch = _batch(processor, [Message("user", "<image> hi"), Message("assistant", "yo")], [random_image()])
    model.save_pretrained(tmp_path)
    loaded = GraftForConditionalGeneration.from_pretrained(tmp_path).eval()
    head, table = loaded.get_output_embeddings().weight, loaded.get_input_embeddings().weight
    assert head.data_ptr() == table.data_ptr() and table.shape[0] == len(tokenizer)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, loaded(**batch).logits)


def test_a_bf16_model_and_bf16_autocast_run_and_generate_on_the_cpu():
    model, processor = tiny_model_and_processor()
    batch = _batch(processor, [Message("user", "<image> hi"), Message("assistant", "yo")], [random_image()])
    prompts = processor.prompts(
        [[Message("user", "<image> What?")], [Message("user", "Hi")]], [[random_image()], []]
    )
    with torch.no_grad():
        reference = model(**batch).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = model(**batch).logits
        model.to(torch.bfloat16)
        cast = model(**batch).logits  # fp32 pixels into a bf16 vision tower
        features = model.select_vision_features(batch["pixel_values"])
        text = {k: v for k, v in batch.items() if k != "pixel_values"}
        from_features = model(**text, vision_features=features.float()).logits
        generated = model.generate(**prompts, max_new_tokens=3, do_sample=False)
    assert cast.dtype == torch.bfloat16 and torch.equal(cast, from_features)
    for logits in (autocast, cast):
        torch.testing.assert_close(logits.float(), reference, atol=0.05, rtol=0)
    assert generated.shape == (2, prompts["input_ids"].shape[1] + 3)


def test_qformer_instruct_reads_the_instruction_and_not_its_right_padding():
    model, _ = tiny_model_and_processor(INSTRUCT_SPEC)
    features = torch.randn(1, model.num_patches, 32, generator=torch.Generator().manual_seed(0))

    def queries(ids: list[int], pad: int = 0) -> torch.Tensor:
        mask = torch.tensor([[1] * len(ids) + [0] * pad])
        with torch.no_grad():
            return model.connector.query_outputs(
                features, instruction_ids=torch.tensor([ids + [0] * pad]), instruction_mask=mask
            )

    alone = queries([2, 5, 6, 3])
    torch.testing.assert_close(queries([2, 5, 6, 3], pad=5), alone, atol=1e-6, rtol=0)
    assert (queries([2, 7, 8, 3]) - alone).abs().max() > 1e-3


@pytest.mark.parametrize(
    "connector",
    ["linear", "mlp2x_gelu", "swiglu", "lexical", {"name": "qformer", "qformer_config": INSTRUCT}],
)
def test_a_frozen_llm_passes_gradients_to_every_connector_weight(connector):
    model, processor = tiny_model_and_processor(connector)
    model.train()
    model.language_model.requires_grad_(False)
    model.vision_tower.requires_grad_(False)
    batch = _batch(
        processor, [Message("user", "<image> hi"), Message("assistant", "A red circle.")], [random_image()]
    )
    model(**batch).loss.backward()
    dead = [n for n, p in model.connector.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not dead
    assert all(p.grad is None for p in model.language_model.parameters())


def test_each_copy_for_beams_or_several_sequences_gets_its_samples_images(monkeypatch):
    model, processor = tiny_model_and_processor("linear")
    conversations = [
        [Message("user", "<image> and <image>?")],
        [Message("user", "Hi")],
        [Message("user", "<image> what?")],
    ]
    prompts = processor.prompts(conversations, [[random_image(1), random_image(2)], [], [random_image(3)]])
    prefills = []
    embed = model.embed_inputs

    def spy(input_ids, pixel_values=None, *args, **kwargs):
        embeds = embed(input_ids, pixel_values, *args, **kwargs)
        if pixel_values is not None:
            prefills.append((input_ids, embeds))
        return embeds

    monkeypatch.setattr(model, "embed_inputs", spy)
    with torch.no_grad():
        soft = model.get_image_features(prompts["pixel_values"])  # images 0, 1 (sample 0) and 2
        model.generate(**prompts, max_new_tokens=2, do_sample=True, num_return_sequences=2)
    (input_ids, embeds), n = prefills[0], model.config.image_seq_length
    mask = input_ids == model.config.image_token_id
    for row, images in enumerate([[0, 1], [0, 1], [], [], [2], [2]]):
        torch.testing.assert_close(
            embeds[row][mask[row]], soft[images].reshape(len(images) * n, soft.shape[-1])
        )
