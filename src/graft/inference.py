"""Load a saved graft model: the one checked loader every verb, pipeline and export uses.

``check_model_folder`` looks at the files first (config.json, the weights, graft_processor.json,
the image processor and tokenizer files), so a folder that a save or a copy left incomplete is a
``FileNotFoundError`` naming the folder and what is missing, not a traceback from transformers."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from graft.modeling import GraftForConditionalGeneration
    from graft.processing import GraftProcessor

WEIGHTS, WEIGHTS_INDEX = "model.safetensors", "model.safetensors.index.json"
IMAGE_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
#: vocabularies a fast tokenizer can be rebuilt from when tokenizer.json is absent
SLOW_VOCABULARIES = ("tokenizer.model", "spiece.model", "vocab.json", "vocab.txt")


def _weight_files(folder: Path) -> tuple[list[Path], list[str]]:
    """The weight files the folder's index (or its single file) names, and what is missing."""
    index = folder / WEIGHTS_INDEX
    if not index.is_file():
        single = folder / WEIGHTS
        return ([single], []) if single.is_file() else ([], [f"{WEIGHTS} (or a sharded {WEIGHTS_INDEX})"])
    try:
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    except (ValueError, KeyError, AttributeError) as err:
        raise ValueError(f"{index}: not a safetensors index ({err!r}); save the model again") from None
    files = [folder / name for name in shards]
    return files, [f"{p.name} (listed in {WEIGHTS_INDEX})" for p in files if not p.is_file()]


def _missing_files(folder: Path) -> tuple[list[Path], list[str]]:
    from graft.processing import PROCESSOR_FILE

    weights, missing = _weight_files(folder)
    if not (folder / PROCESSOR_FILE).is_file():
        missing.append(PROCESSOR_FILE)
    if not any((folder / name).is_file() for name in IMAGE_PROCESSOR_FILES):
        missing.append(IMAGE_PROCESSOR_FILES[0])
    if not any((folder / name).is_file() for name in ("tokenizer.json", *SLOW_VOCABULARIES)):
        missing.append("tokenizer.json")
    if not (folder / "tokenizer_config.json").is_file():  # without it the special tokens are lost
        missing.append("tokenizer_config.json")
    return weights, missing


def check_model_folder(model_dir: str | os.PathLike) -> Path:
    """``model_dir`` as a Path once it holds every file of a saved graft model.

    Raises ``FileNotFoundError`` naming the folder and each missing file (or that it is no folder),
    and ``ValueError`` for a config.json or weight file that is not a graft model's."""
    from safetensors import SafetensorError, safe_open

    folder = Path(model_dir)
    if not folder.exists():
        raise FileNotFoundError(f"{folder}: no such folder; give a graft model folder")
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is a file, not a model folder; give a graft model folder")
    config = folder / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{folder} is not a model folder (no config.json)")
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (ValueError, AttributeError) as err:
        raise ValueError(f"{config}: not a model config ({err}); save the model again") from None
    if model_type != "graft":
        hint = f": turn it into one with `graft import-hf --model {folder} --out DIR`"
        raise ValueError(
            f"{config}: model_type={model_type!r}, not a graft model"
            + (hint if model_type in ("llava", "aya_vision") else "")
        )
    weights, missing = _missing_files(folder)
    if missing:
        raise FileNotFoundError(
            f"{folder} is not a whole graft model folder (an interrupted save or an incomplete copy?): "
            f"missing {', '.join(missing)}; save or copy the model again"
        )
    for path in weights:
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except SafetensorError as err:
            raise ValueError(f"{path}: unreadable ({err}); save or copy the model again") from None
    return folder


def _load_checked(
    folder: Path, dtype: torch.dtype | None
) -> tuple[GraftForConditionalGeneration, GraftProcessor]:
    from graft.modeling import GraftForConditionalGeneration
    from graft.processing import GraftProcessor

    processor = GraftProcessor.from_pretrained(folder)  # the cheap half first
    options = {} if dtype is None else {"dtype": dtype}
    return GraftForConditionalGeneration.from_pretrained(folder, **options), processor


def load_model_folder(
    model_dir: str | os.PathLike, dtype: torch.dtype | None = None
) -> tuple[GraftForConditionalGeneration, GraftProcessor]:
    """A saved graft model (on the CPU, in ``dtype`` when given) and its processor; raises as
    ``check_model_folder`` does."""
    return _load_checked(check_model_folder(model_dir), dtype)


def load_for_inference(
    model_dir: str | os.PathLike, bf16: bool = False
) -> tuple[GraftForConditionalGeneration, GraftProcessor]:
    """A saved graft model and its processor, on accelerate's device, in eval mode.

    Raises ``FileNotFoundError`` when ``model_dir`` is not a whole model folder and ``ValueError``
    when its files are not a graft model's (``check_model_folder``)."""
    import torch

    from graft.eval.processes import process_state
    from graft.precision import use_bf16

    folder = check_model_folder(model_dir)
    device = process_state().device
    dtype = torch.bfloat16 if use_bf16(bf16, device) else torch.float32
    model, processor = _load_checked(folder, dtype)
    return model.to(device).eval(), processor
