import torch

from graft.templates import Message

from tiny import random_image, tiny_model_and_processor


def test_forward_with_image_gives_finite_loss():
    model, processor = tiny_model_and_processor()
    sample = processor.encode(
        [Message("user", "<image>\nIs there a red circle?"), Message("assistant", "Yes")], [random_image()]
    )
    batch = processor.collate([sample])
    out = model(**batch)
    assert torch.isfinite(out.loss)
    assert (batch["input_ids"] == model.config.image_token_id).sum() == model.config.image_seq_length
