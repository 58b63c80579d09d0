"""Write a graft model as a transformers LLaVA folder, atomically."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from graft.export.model import to_llava
from graft.export.processor import llava_processor
from graft.files import atomic_dir
from graft.modeling import GraftForConditionalGeneration
from graft.processing import GraftProcessor

logger = logging.getLogger(__name__)


def export_to_llava(
    model: GraftForConditionalGeneration,
    processor: GraftProcessor,
    out_dir: str | os.PathLike,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` + ``processor`` as a transformers LLaVA folder (config, safetensors weights,
    ``LlavaProcessor``, generation config). Raises ``LlavaExportError`` (a ValueError) naming the
    field LLaVA cannot represent."""
    llava = to_llava(model)
    llava_proc = llava_processor(model, processor)
    stop = processor.template.stop
    if stop:  # e.g. chatml's <|im_end|>: generation must stop there as graft's does
        stop_id = llava_proc.tokenizer.convert_tokens_to_ids(stop)
        eos = llava.generation_config.eos_token_id
        eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        if stop_id is not None and stop_id != llava_proc.tokenizer.unk_token_id and stop_id not in eos:
            llava.generation_config.eos_token_id = eos + [stop_id]
    with atomic_dir(out_dir, overwrite) as tmp:
        # the module's own key names (model.vision_tower.*, ...), not the legacy llava-hf ones
        llava.save_pretrained(tmp, save_original_format=False)
        llava_proc.save_pretrained(tmp)
    logger.info("exported LLaVA checkpoint to %s", out_dir)
    return Path(out_dir)


def export_hf(model_dir: str | os.PathLike, out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Export a saved graft folder (model + processor) to a transformers LLaVA folder."""
    model = GraftForConditionalGeneration.from_pretrained(model_dir)
    processor = GraftProcessor.from_pretrained(model_dir)
    return export_to_llava(model, processor, out_dir, overwrite=overwrite)
