"""Does a model use its images? The loss of training-format records with their own image beside
the loss of the same records, each given its neighbour's image (records batched by length, the
batch's images moved one record along). A model that reads the image loses more with the wrong
one; a model that learned only answer priors loses the same. It needs no generation and no
answer parsing, so it tells "does not see" apart from "sees but answers in the wrong format"."""

from __future__ import annotations

import os
from typing import Any

import torch

from graft.config import IGNORE_INDEX
from graft.data import LlavaDataset, TrainCollator

#: records read per record wanted: multi-image and text-only records are passed over
SCAN_FACTOR = 4


@torch.no_grad()
def image_reliance(
    model: Any,
    processor: Any,
    data_file: str | os.PathLike,
    image_root: str | os.PathLike,
    limit: int = 64,
    batch_size: int = 16,
) -> dict[str, float]:
    """``loss_own`` and ``loss_other`` (mean per supervised token) over the first ``limit``
    single-image records among the first ``SCAN_FACTOR * limit`` of ``data_file``, and their
    difference ``gain``."""
    if batch_size < 2:
        raise ValueError(f"batch_size must be at least 2 to swap images, got {batch_size}")
    # only the head of the file is read: a stage-2 file holds tens of thousands of records
    dataset = LlavaDataset(data_file, image_root, processor, limit=limit * SCAN_FACTOR)
    rows = [i for i, record in enumerate(dataset.records) if len(record.images) == 1][:limit]
    if len(rows) < 2:
        raise ValueError(
            f"{data_file}: image_reliance needs at least 2 single-image records, got {len(rows)}"
        )
    collate = TrainCollator(processor.tokenizer.pad_token_id)
    was_training = model.training
    model.eval()
    totals = {"own": 0.0, "other": 0.0}
    tokens = 0
    rows.sort(key=lambda i: dataset.lengths[i])  # batches of like lengths: little padding
    chunks = [rows[k : k + batch_size] for k in range(0, len(rows), batch_size)]
    if len(chunks[-1]) == 1:  # a record alone has no neighbour to swap with
        chunks[-2:] = [chunks[-2] + chunks[-1]]
    for chunk in chunks:
        batch = collate([dataset[i] for i in chunk])
        if batch is None:
            continue
        labels = batch["labels"].to(model.device)
        count = int((labels[:, 1:] != IGNORE_INDEX).sum())
        pixels = batch["pixel_values"].to(model.device)
        for name, images in (("own", pixels), ("other", pixels.roll(1, 0))):
            out = model(
                input_ids=batch["input_ids"].to(model.device),
                attention_mask=batch["attention_mask"].to(model.device),
                pixel_values=images,
                labels=labels,
                supervised_logits_only=True,  # the same loss, the 49k-word head only where labels are
            )
            totals[name] += float(out.loss) * count
        tokens += count
    model.train(was_training)
    own, other = totals["own"] / max(tokens, 1), totals["other"] / max(tokens, 1)
    return {"loss_own": own, "loss_other": other, "gain": other - own, "records": len(rows)}
