"""Padding-free batches: packed logits, loss and gradients equal the padded ones; bad calls refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from graft.packing import PACKED_ATTENTION, enable_packing, pack_batch
from graft.templates import Message

from tiny import random_image, tiny_model_and_processor

CONVERSATIONS = [
    ([Message("user", "<image>\nIs there a red circle?"), Message("assistant", "Yes.")], 1),
    ([Message("user", "How many objects are there on the left?"), Message("assistant", "There are 3.")], 0),
    (
        [
            Message("user", "Compare <image> and <image>."),
            Message("assistant", "The image shows a blue square."),
            Message("user", "And?"),
            Message("assistant", "No."),
        ],
        2,
    ),
]


def _batch(processor, seed: int = 0) -> dict:
    samples = [
        processor.encode(messages, [random_image(seed + 10 * i + k) for k in range(n)])
        for i, (messages, n) in enumerate(CONVERSATIONS)
    ]
    return processor.collate(samples, padding_side="right")


@pytest.fixture
def model_and_batch():
    torch.manual_seed(0)
    model, processor = tiny_model_and_processor(connector="mlp2x_gelu")
    with torch.no_grad():  # larger weights: differences would show
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
    return model, processor, _batch(processor)


def test_pack_batch_layout(model_and_batch):
    _, _, batch = model_and_batch
    packed = pack_batch(batch)
    lengths = batch["attention_mask"].sum(1).tolist()
    assert packed["input_ids"].shape == (1, sum(lengths))
    assert packed["cu_seq_lens_q"].tolist() == [0, lengths[0], lengths[0] + lengths[1], sum(lengths)]
    assert packed["max_length_q"] == max(lengths)
    assert packed["position_ids"][0, lengths[0]].item() == 0  # restarts at each sample
    assert "attention_mask" not in packed
    assert torch.equal(packed["pixel_values"], batch["pixel_values"])
    starts = packed["cu_seq_lens_q"][:-1].long()
    assert (packed["labels"][0, starts] == -100).all()


def test_packed_logits_equal_each_sample_alone(model_and_batch):
    model, _, batch = model_and_batch
    enable_packing(model, torch.device("cpu"))
    assert model.language_model.config._attn_implementation == PACKED_ATTENTION
    packed = pack_batch(batch)
    inputs = {k: packed[k] for k in ("input_ids", "position_ids", "pixel_values", *PACKED)}
    with torch.no_grad():
        logits = model(**inputs, use_cache=False).logits[0]
        edges = packed["cu_seq_lens_q"].tolist()
        images = 0
        for i, length in enumerate(batch["attention_mask"].sum(1).tolist()):
            ids = batch["input_ids"][i : i + 1, :length]
            count = CONVERSATIONS[i][1]
            pixels = batch["pixel_values"][images : images + count] if count else None
            images += count
            alone = model(input_ids=ids, pixel_values=pixels, use_cache=False).logits[0]
            torch.testing.assert_close(logits[edges[i] : edges[i + 1]], alone, atol=1e-5, rtol=1e-5)


PACKED = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


def _loss_and_grads(model, inputs: dict, count: torch.Tensor) -> tuple[torch.Tensor, dict]:
    model.zero_grad()
    loss = model(**inputs, use_cache=False, supervised_logits_only=True, num_items_in_batch=count).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_packed_loss_and_gradients_equal_padded(model_and_batch):
    model, _, batch = model_and_batch
    model.train()
    count = (batch["labels"][:, 1:] != -100).sum()
    padded = {k: batch[k] for k in ("input_ids", "attention_mask", "labels", "pixel_values")}
    loss, grads = _loss_and_grads(model, padded, count)
    enable_packing(model, torch.device("cpu"))
    packed = pack_batch(batch)
    assert (packed["labels"][:, 1:] != -100).sum() == count  # the same answers are supervised
    inputs = {k: packed[k] for k in ("input_ids", "position_ids", "labels", "pixel_values", *PACKED)}
    packed_loss, packed_grads = _loss_and_grads(model, inputs, count)
    torch.testing.assert_close(packed_loss, loss, atol=1e-6, rtol=1e-5)
    assert packed_grads.keys() == grads.keys() and len(grads) > 10
    for name, grad in grads.items():
        torch.testing.assert_close(packed_grads[name], grad, atol=1e-6, rtol=1e-4, msg=name)


def test_packed_batches_refuse_what_would_mix_samples(model_and_batch):
    model, _, batch = model_and_batch
    packed = pack_batch(batch)
    inputs = {k: packed[k] for k in ("input_ids", "position_ids", "pixel_values", *PACKED)}
    with pytest.raises(ValueError, match="enable_packing"):  # SDPA would ignore the boundaries
        model(**inputs, use_cache=False)
    enable_packing(model, torch.device("cpu"))
    with pytest.raises(ValueError, match="attention_mask"):
        model(**inputs, attention_mask=torch.ones_like(packed["input_ids"]), use_cache=False)
    with pytest.raises(ValueError, match="KV cache"):
        model(**inputs, use_cache=True)

    qformer = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
    vpgc = {"name": "vpgc", "vpg": {"name": "qformer", "num_query_tokens": 4, "qformer_config": qformer}}
    guided, processor = tiny_model_and_processor(connector=vpgc)
    enable_packing(guided, torch.device("cpu"))
    packed = pack_batch(_batch(processor))
    with pytest.raises(ValueError, match="packing"):
        guided(
            **{k: packed[k] for k in ("input_ids", "position_ids", "pixel_values", *PACKED)}, use_cache=False
        )


def test_unpacked_batches_still_work_under_the_packed_implementation(model_and_batch):
    model, _, batch = model_and_batch
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    with torch.no_grad():
        expected = model(**inputs, use_cache=False).logits
        enable_packing(model, torch.device("cpu"))
        got = model(**inputs, use_cache=False).logits
    torch.testing.assert_close(got, expected)


def test_training_with_packing_follows_the_padded_run(tmp_path):
    from graft.train import train
    from graft.train.recipe import recipe_from_dict

    from tiny import tiny_recipe, tiny_world

    world = tiny_world(tmp_path / "world")
    losses = {}
    for packing in (False, True):
        raw = tiny_recipe(world, tmp_path / f"run-{packing}", **{"data.packing": packing, "max_steps": 3})
        losses[packing] = train(recipe_from_dict(raw)).losses
    assert len(losses[True]) == 3
    torch.testing.assert_close(losses[True], losses[False], atol=1e-5, rtol=1e-4)


def test_token_budget_batches_cover_the_epoch_and_resume():
    from graft.data.sampler import GroupedBatchSampler

    rng = np.random.default_rng(0)
    lengths = rng.integers(20, 400, 200).tolist()
    has_image = (rng.random(200) < 0.8).tolist()
    for packed in (True, False):
        sampler = GroupedBatchSampler(lengths, has_image, 16, seed=3, max_batch_tokens=1024, packed=packed)
        sampler.set_epoch(1)
        batches = list(sampler)
        assert sorted(i for b in batches for i in b) == list(range(200))
        for b in batches:
            size = sum(lengths[i] for i in b) if packed else max(lengths[i] for i in b) * len(b)
            assert size <= 1024 or len(b) == 1
            assert len({has_image[i] for i in b}) == 1 and len(b) <= 16
        assert len(batches) == sampler.batches_per_epoch
        sampler.set_epoch(1, start_batch=5)
        assert list(sampler) == batches[5:]
    packed_sampler = GroupedBatchSampler(lengths, has_image, 16, seed=3, max_batch_tokens=1024, packed=True)
    assert sampler.batches_per_epoch > packed_sampler.batches_per_epoch  # padding costs batches
