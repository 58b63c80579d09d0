import torch
from transformers import LlamaConfig, MistralConfig

from graft.config import IGNORE_INDEX
from graft.shared_prefix import MIN_SHARED_PREFIX, shareable, shared_prefix_length
from graft.templates import Message

from tiny import random_image, tiny_model_and_processor


def _samples(processor):
    turns = [
        [Message("user", "<image>\nWhat is it?"), Message("assistant", "A red circle on the left.")],
        [
            Message("user", "<image>\nColour?"),
            Message("assistant", "Red."),
            Message("user", "And the shape?"),
            Message("assistant", "A circle."),
        ],
        [Message("user", "How many objects are there?"), Message("assistant", "There are 3.")],
    ]
    images = [[random_image(0)], [random_image(1)], []]
    return [processor.encode(t, i) for t, i in zip(turns, images, strict=True)]


def test_shared_prefix_gives_the_same_loss_and_gradients():
    """Vicuna's system prompt opens every sample: run once, then repeated along the batch, it
    gives the plain forward's loss and every gradient (samples of different lengths, one without
    an image, so padding and image positions are mixed)."""
    model, processor = tiny_model_and_processor()
    model.train()
    batch = processor.collate(_samples(processor))
    prefix = model._shared_prefix(batch["input_ids"], batch["attention_mask"], batch["labels"])
    assert prefix >= MIN_SHARED_PREFIX
    results = []
    for share in (False, True):
        model.zero_grad()
        torch.manual_seed(0)
        loss = model(**batch, use_cache=False, supervised_logits_only=True, share_prefix=share).loss
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((loss.detach(), grads))
    (plain_loss, plain_grads), (loss, grads) = results
    torch.testing.assert_close(loss, plain_loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == plain_grads.keys() and len(grads) > 10
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_the_prefix_stops_at_a_difference_an_image_padding_or_a_supervised_label():
    ids = torch.tensor([[5] * 12 + [7, 8], [5] * 12 + [9, 0]])
    mask = torch.ones_like(ids)
    labels = torch.full_like(ids, IGNORE_INDEX)
    no_image = torch.zeros_like(ids, dtype=torch.bool)
    assert shared_prefix_length(ids, mask, labels, no_image) == 12
    assert shared_prefix_length(ids[:1], mask[:1], labels[:1], no_image[:1]) == 0  # one row: nothing shared
    image = no_image.clone()
    image[:, 10] = True
    assert shared_prefix_length(ids, mask, labels, image) == 10
    padded = mask.clone()
    padded[1, 9:] = 0
    assert shared_prefix_length(ids, padded, labels, no_image) == 9
    supervised = labels.clone()
    supervised[0, 10] = 4  # predicted by position 9, which must run per sample
    assert shared_prefix_length(ids, mask, supervised, no_image) == 9
    short = labels.clone()
    short[:, MIN_SHARED_PREFIX - 1] = 4
    assert shared_prefix_length(ids, mask, short, no_image) == 0  # below the minimum


def test_windowed_attention_is_not_shared():
    assert shareable(LlamaConfig())
    assert not shareable(MistralConfig(sliding_window=16))


def test_gradient_checkpointing_turns_sharing_off():
    """Checkpointed layers drop the cache, so the prefix would vanish from the rest's attention."""
    model, processor = tiny_model_and_processor()
    model.train()
    batch = processor.collate(_samples(processor))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert model._shared_prefix(batch["input_ids"], batch["attention_mask"], batch["labels"]) == 0
    model.gradient_checkpointing_disable()
    assert model._shared_prefix(batch["input_ids"], batch["attention_mask"], batch["labels"]) > 0
