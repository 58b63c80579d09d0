"""The data a training run reads: its loader and batch sampler (grouped by length and modality,
or mixed per batch), the frozen tower's feature cache, the endless batch stream that a resume
re-enters at its position, and each micro-batch's model inputs."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from graft.data import GroupedBatchSampler, LlavaDataset, MixedBatchSampler, TrainCollator
from graft.data.feature_cache import FeatureCache
from graft.modeling import GraftForConditionalGeneration
from graft.packing import PACKED_KEYS
from graft.processing import GraftProcessor
from graft.train.recipe import Recipe

logger = logging.getLogger(__name__)


def fill_feature_cache(
    recipe: Recipe, model: GraftForConditionalGeneration, dataset: LlavaDataset, accelerator: Accelerator
) -> FeatureCache:
    spec = recipe.feature_cache
    directory = spec.dir or Path(recipe.output_dir) / "feature_cache"
    cache = FeatureCache.for_model(directory, model, spec.dtype, spec.in_memory)
    info = cache.fill(
        model,
        dataset,
        spec.batch_size,
        accelerator.device,
        accelerator.process_index,
        accelerator.num_processes,
        barrier=accelerator.wait_for_everyone,
    )
    accelerator.wait_for_everyone()
    cache.load([k for k in info["keys"] if k in cache])
    if accelerator.is_main_process:
        logger.info(
            "feature cache %s: %d images, %d computed by this process",
            cache.root,
            info["images"],
            info["computed"],
        )
    dataset.load_pixels = False  # items now skip image decoding; the loop feeds vision_features
    return cache


def data_loader(
    recipe: Recipe, processor: GraftProcessor, accelerator: Accelerator, dataset: LlavaDataset
) -> tuple[DataLoader, GroupedBatchSampler | MixedBatchSampler]:
    sampler: GroupedBatchSampler | MixedBatchSampler
    shard = {"num_replicas": accelerator.num_processes, "rank": accelerator.process_index}
    if recipe.data.mix is not None:
        sampler = MixedBatchSampler(
            dataset.source_index,
            recipe.data.mix,
            recipe.batch_size,
            seed=recipe.seed,
            source_names=[str(p) for p in recipe.data.train],
            **shard,
        )
        logger.info("per-batch mix of the data.train files: %s", sampler.counts)
    else:
        sampler = GroupedBatchSampler(
            dataset.lengths,
            dataset.has_image,
            recipe.batch_size,
            seed=recipe.seed,
            group_by_modality=recipe.data.group_by_modality,
            max_batch_tokens=recipe.data.max_batch_tokens,
            packed=recipe.data.packing,
            **shard,
        )
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=TrainCollator(processor.tokenizer.pad_token_id, packed=recipe.data.packing),
        num_workers=recipe.data.num_workers,
        # its own generator: a new epoch's iterator draws a seed from it, and drawing from the
        # global RNG would shift dropout masks between a straight and a resumed run
        generator=torch.Generator().manual_seed(recipe.seed + accelerator.process_index),
    )
    return loader, sampler


def stream(
    loader: DataLoader, sampler: GroupedBatchSampler | MixedBatchSampler, epoch: int, done: int
) -> Iterator[tuple]:
    """Batches forever, epoch after epoch, with the position after each: (epoch, batches done, batch)."""
    while True:
        sampler.set_epoch(epoch, done)
        for batch in loader:
            done += 1
            if batch is not None:  # every sample of it was skipped (corrupt images)
                yield epoch, done, batch
        epoch, done = epoch + 1, 0


def model_inputs(batch: dict[str, Any], cache: FeatureCache | None, device: torch.device) -> dict | None:
    keys = ("input_ids", "attention_mask", "labels", "position_ids", "instruction_ids", "instruction_mask")
    inputs = {k: batch[k].to(device) for k in keys if k in batch}
    inputs.update(
        {k: batch[k].to(device) if torch.is_tensor(batch[k]) else batch[k] for k in PACKED_KEYS if k in batch}
    )
    if cache is not None and batch["image_keys"]:
        if not all(k in cache for k in batch["image_keys"]):
            logger.warning("skipping a batch with an image that could not be cached (ids %s)", batch["ids"])
            return None
        inputs["vision_features"] = cache.batch(batch["image_keys"], device)
    elif "pixel_values" in batch:
        inputs["pixel_values"] = batch["pixel_values"].to(device)
    return inputs
