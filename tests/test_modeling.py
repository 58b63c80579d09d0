import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from graft.connectors import TokenReduction, UnknownConnectorError, build_connector
from graft.modeling import GraftForConditionalGeneration, ImageTokenMismatchError
from graft.processing import GraftProcessor
from graft.prompts import ImageMarkerError
from graft.templates import Message

from tiny import random_image, tiny_model_and_processor


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


def test_reduced_connector_model_runs_with_fewer_tokens():
    model, processor = tiny_model_and_processor({"name": "mlp2x_gelu", "reduction": "pixel_shuffle"})
    assert model.config.image_seq_length == model.num_patches // 4
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
