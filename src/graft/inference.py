"""Load a saved graft model for inference: the one loader every verb and pipeline uses."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from graft.modeling import GraftForConditionalGeneration
    from graft.processing import GraftProcessor


def load_for_inference(
    model_dir: Path, bf16: bool = False
) -> tuple[GraftForConditionalGeneration, GraftProcessor]:
    """A saved graft model and its processor, on accelerate's device, in eval mode.

    Raises ``FileNotFoundError`` when ``model_dir`` is not a model folder."""
    import torch

    from graft.eval.processes import process_state
    from graft.modeling import GraftForConditionalGeneration
    from graft.precision import use_bf16
    from graft.processing import GraftProcessor

    if not (Path(model_dir) / "config.json").exists():
        raise FileNotFoundError(f"{model_dir} is not a model folder (no config.json)")
    device = process_state().device
    dtype = torch.bfloat16 if use_bf16(bf16, device) else torch.float32
    model = GraftForConditionalGeneration.from_pretrained(model_dir, dtype=dtype)
    return model.to(device).eval(), GraftProcessor.from_pretrained(model_dir)
