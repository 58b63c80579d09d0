"""``TrainCollator``: a list of ``TrainSample`` -> one right-padded training batch."""

from __future__ import annotations

from typing import Any

import torch

from graft.data.dataset import TrainSample
from graft.packing import pack_batch
from graft.processing import collate_samples


class TrainCollator:
    """Pads with ``pad_token_id`` (labels with -100) and keeps what the feature cache needs.

    The batch holds ``input_ids``, ``attention_mask``, ``labels``, ``pixel_values`` (only when
    the samples carry pixels), ``image_keys`` (one per image, in order of appearance, matching
    the rows of ``pixel_values``), ``num_images`` (LongTensor[B]) and ``ids``. ``None`` items (a
    sample the dataset skipped for a corrupt image) are dropped; a batch with nothing left is
    ``None`` and the training loop skips it.
    """

    def __init__(self, pad_token_id: int, packed: bool = False) -> None:
        self.pad_token_id = pad_token_id
        #: one padding-free row per batch (``graft.packing.pack_batch``)
        self.packed = packed

    def __call__(self, samples: list[TrainSample | None]) -> dict[str, Any] | None:
        samples = [s for s in samples if s is not None]
        if not samples:
            return None
        with_pixels = [s.encoded.pixel_values is not None for s in samples if s.image_keys]
        if any(with_pixels) and not all(with_pixels):
            # rows of pixel_values would no longer line up with image_keys
            raise ValueError("a batch mixes samples with and without loaded pixels")
        batch: dict[str, Any] = collate_samples([s.encoded for s in samples], self.pad_token_id, "right")
        if "pixel_values" in batch and batch["pixel_values"].shape[0] != sum(
            len(s.image_keys) for s in samples
        ):
            raise ValueError("pixel_values rows do not match the number of images in the batch")
        batch["image_keys"] = [key for s in samples for key in s.image_keys]
        batch["num_images"] = torch.tensor([len(s.image_keys) for s in samples], dtype=torch.long)
        batch["ids"] = [s.id for s in samples]
        return pack_batch(batch) if self.packed else batch
