"""Write a graft model as a transformers folder (LLaVA, Aya Vision, or Aya Vision with graft's
cell adapter as remote code), atomically."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from transformers import LlavaProcessor, PreTrainedModel

from graft.export.model import to_transformers
from graft.export.processor import llava_processor
from graft.files import atomic_dir
from graft.inference import load_model_folder
from graft.modeling import GraftForConditionalGeneration
from graft.processing import GraftProcessor
from graft.remote.modeling_graft_cells import GraftCellsForConditionalGeneration

logger = logging.getLogger(__name__)


def _convert(
    model: GraftForConditionalGeneration, processor: GraftProcessor
) -> tuple[PreTrainedModel, LlavaProcessor]:
    """The transformers model and ``LlavaProcessor``, generation set to stop where graft's does."""
    hf_model = to_transformers(model)
    llava_proc = llava_processor(model, processor)
    stop = processor.template.stop
    if stop:  # e.g. chatml's <|im_end|>: generation must stop there as graft's does
        stop_id = llava_proc.tokenizer.convert_tokens_to_ids(stop)
        eos = hf_model.generation_config.eos_token_id
        eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        if stop_id is not None and stop_id != llava_proc.tokenizer.unk_token_id and stop_id not in eos:
            hf_model.generation_config.eos_token_id = eos + [stop_id]
    return hf_model, llava_proc


def _save(hf_model: PreTrainedModel, llava_proc: LlavaProcessor, folder: Path, out_dir: Path) -> None:
    remote = isinstance(hf_model, GraftCellsForConditionalGeneration)
    if remote:  # the folder carries the code (modeling_graft_cells.py, cells.py), config.json its auto_map
        type(hf_model.config).register_for_auto_class()
        type(hf_model).register_for_auto_class("AutoModelForImageTextToText")
    # the module's own key names (model.vision_tower.*, ...), not the legacy llava-hf ones
    hf_model.save_pretrained(folder, save_original_format=False)
    llava_proc.save_pretrained(folder)
    how = " (its code in the folder: load it with trust_remote_code=True)" if remote else ""
    logger.info("exported %s checkpoint to %s%s", type(hf_model).__name__, out_dir, how)


def export_to_transformers(
    model: GraftForConditionalGeneration,
    processor: GraftProcessor,
    out_dir: str | os.PathLike,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` + ``processor`` as a transformers folder that ``AutoModelForImageTextToText``
    and ``AutoProcessor`` load (config, safetensors weights, ``LlavaProcessor``, generation
    config): ``LlavaForConditionalGeneration``, ``AyaVisionForConditionalGeneration``, or
    ``GraftCellsForConditionalGeneration`` whose code the folder carries (``trust_remote_code=True``;
    ``export_architecture``). Raises ``ExportError`` (a ValueError) naming the field neither
    represents, and ``FileExistsError`` for a non-empty ``out_dir`` unless ``overwrite``."""
    hf_model, llava_proc = _convert(model, processor)
    with atomic_dir(out_dir, overwrite) as tmp:
        _save(hf_model, llava_proc, tmp, Path(out_dir))
    return Path(out_dir)


def export_hf(model_dir: str | os.PathLike, out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Export a saved graft folder (model + processor) to a transformers folder.

    ``out_dir`` is checked before the model loads: ``NotADirectoryError`` for a file,
    ``FileExistsError`` for a non-empty folder unless ``overwrite``, ``ValueError`` when it is
    ``model_dir`` itself. ``model_dir`` raises as ``graft.inference.check_model_folder`` says."""
    if Path(out_dir).resolve() == Path(model_dir).resolve():
        raise ValueError(f"{out_dir} is the graft model folder itself; export to another folder")
    with atomic_dir(out_dir, overwrite) as tmp:
        model, processor = load_model_folder(model_dir)
        _save(*_convert(model, processor), tmp, Path(out_dir))
    return Path(out_dir)
