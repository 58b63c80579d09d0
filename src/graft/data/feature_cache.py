"""A disk (+ memory) cache of a frozen vision tower's selected features, one file per image.

While the vision tower is frozen its output for an image never changes, so training computes
it once (a warm-up pass before the first step) and then feeds ``vision_features=`` to the model
instead of pixels. Entries are keyed by the dataset's image key (the file's content hash plus
the preprocessing signature) and live under a folder named by the *fingerprint* of what turns
pixels into features: the vision tower's config and a hash of its weights, the selected layer
and strategy, and the storage dtype. Change any of those and the run looks in another folder;
stale entries are never read. Two stages with the same frozen tower share the cache.

Layout: ``<dir>/<fingerprint>/<key[:2]>/<key>.safetensors`` (one tensor, ``features``), plus
``<dir>/<fingerprint>/fingerprint.json`` saying what the fingerprint stands for. Every file is
written to a temporary name and renamed, so a killed warm-up leaves only whole entries.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from graft.files import write_text_atomic
from graft.processing import ImageLoadError, load_image

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: config fields that say where a tower was loaded from or how it is run, not what it computes
#: (the weights' dtype is in the weight hash)
_VOLATILE = {"_name_or_path", "transformers_version", "dtype", "torch_dtype", "architectures"}
_VOLATILE |= {"output_attentions", "output_hidden_states", "return_dict"}


def vision_fingerprint(model: Any, dtype: str = "fp32") -> dict[str, Any]:
    """What the cached features depend on; ``fingerprint_id`` hashes it into a folder name."""
    tower = model.vision_tower
    weights = hashlib.sha256()
    for name, tensor in sorted(tower.state_dict().items()):
        weights.update(name.encode())
        weights.update(str(tensor.dtype).encode())
        weights.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return {
        "vision_config": {k: v for k, v in tower.config.to_dict().items() if k not in _VOLATILE},
        "vision_weights_sha256": weights.hexdigest(),
        "vision_feature_layer": model.config.vision_feature_layer,
        "select_strategy": model.config.vision_feature_select_strategy,
        "dtype": dtype,
    }


def fingerprint_id(fingerprint: dict[str, Any]) -> str:
    blob = json.dumps(fingerprint, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


class FeatureCache:
    def __init__(
        self, directory: str | os.PathLike, fingerprint: dict[str, Any], in_memory: bool = True
    ) -> None:
        self.fingerprint = fingerprint
        self.dtype = DTYPES[fingerprint["dtype"]]
        self.root = Path(directory) / fingerprint_id(fingerprint)
        self.in_memory = in_memory
        self._memory: dict[str, torch.Tensor] = {}
        self.root.mkdir(parents=True, exist_ok=True)
        info = self.root / "fingerprint.json"
        if not info.exists():
            write_text_atomic(info, json.dumps(fingerprint, indent=2, sort_keys=True, default=str))

    @classmethod
    def for_model(
        cls, directory: str | os.PathLike, model: Any, dtype: str = "fp32", in_memory: bool = True
    ) -> FeatureCache:
        return cls(directory, vision_fingerprint(model, dtype), in_memory)

    # --- entries --------------------------------------------------------------------------------
    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def __contains__(self, key: str) -> bool:
        return key in self._memory or self.path(key).exists()

    def put(self, key: str, features: torch.Tensor) -> None:
        """Store one image's features ``[P, d_vis]``."""
        features = features.detach().to("cpu", self.dtype).contiguous()
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # a unique temporary name: several processes may fill the same cache at once
        tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
        save_file({"features": features}, str(tmp))
        os.replace(tmp, path)
        if self.in_memory:
            self._memory[key] = features

    def get(self, key: str) -> torch.Tensor:
        features = self._memory.get(key)
        if features is None:
            try:
                features = load_file(str(self.path(key)))["features"]
            except FileNotFoundError:
                raise KeyError(f"no cached vision features for image key {key}") from None
            if self.in_memory:
                self._memory[key] = features
        return features

    def batch(self, keys: Sequence[str], device: torch.device | str = "cpu") -> torch.Tensor:
        """Features of a batch's images in order: ``[N, P, d_vis]``, ready for ``vision_features=``."""
        return torch.stack([self.get(k) for k in keys]).to(device)

    def load(self, keys: Sequence[str]) -> None:
        """Read entries from disk into memory (after a warm-up done by other processes)."""
        if self.in_memory:
            for key in tqdm(keys, desc="loading feature cache", unit="img", disable=None, mininterval=1.0):
                self.get(key)

    # --- warm-up --------------------------------------------------------------------------------
    @torch.no_grad()
    def fill(
        self,
        model: Any,
        dataset: Any,
        batch_size: int = 64,
        device: torch.device | str | None = None,
        rank: int = 0,
        world_size: int = 1,
        barrier: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """Compute the features of every image of ``dataset`` not cached yet.

        With several processes each computes a share (``rank::world_size``) of the missing
        images; ``barrier`` (all processes wait) is called once every process has listed what
        is missing and before anyone writes, so they all split the same list. Call ``load``
        after all are done. Returns the keys, each one's image file and counts. An image that
        cannot be read is an error, or, when the dataset skips bad samples, left uncached (the
        loop then skips batches that hold it). ``device``: where the images are computed, by
        default where the model's vision tower is.
        """
        if device is None:  # where the tower is: a model on a GPU computes there
            device = next(model.vision_tower.parameters()).device
        paths = _image_paths(dataset)
        missing = sorted(k for k in paths if k not in self)
        if barrier is not None:
            barrier()
        mine = missing[rank::world_size]
        was_training = model.vision_tower.training
        model.vision_tower.eval()
        bad: list[str] = []
        bar = tqdm(total=len(mine), desc="caching vision features", unit="img", disable=None)
        for start in range(0, len(mine), batch_size):
            chunk = mine[start : start + batch_size]
            keys, images = [], []
            for key in chunk:
                try:
                    images.append(load_image(paths[key]))
                    keys.append(key)
                except ImageLoadError as err:
                    if not dataset.skip_bad:
                        raise
                    logger.warning("not caching an unreadable image: %s", err)
                    bad.append(key)
            if images:
                pixels = dataset.processor.preprocess_images(images).to(device)
                features = model.select_vision_features(pixels)
                for key, feats in zip(keys, features, strict=True):
                    self.put(key, feats)
            bar.update(len(chunk))
        bar.close()
        model.vision_tower.train(was_training)
        keys = sorted(paths)
        return {
            "keys": keys,
            "files": [paths[k] for k in keys],
            "images": len(paths),
            "computed": len(mine) - len(bad),
            "bad": bad,
        }


def _image_paths(dataset: Any) -> dict[str, str]:
    """image key -> file, over every image of the dataset (an image shared by samples once)."""
    paths: dict[str, str] = {}
    for i, record in enumerate(tqdm(dataset.records, desc="hashing images", unit="sample", disable=None)):
        for k, image in enumerate(record.images):
            try:
                key = dataset.image_key(i, k)
            except ImageLoadError:
                if not dataset.skip_bad:
                    raise
                continue
            paths.setdefault(key, dataset.image_path(image))
    return paths
