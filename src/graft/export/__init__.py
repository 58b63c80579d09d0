"""To and from transformers' layouts: ``LlavaForConditionalGeneration`` and
``AyaVisionForConditionalGeneration``, and Aya Vision with graft's cell adapter as remote code.

A graft model with a ``linear`` or ``mlp2x_gelu`` connector on every patch computes exactly what
LLaVA computes; one with the ``swiglu`` projector after a LayerNorm (pixel shuffle or none)
computes exactly what Aya Vision computes. Either is written as a folder that
``AutoModelForImageTextToText`` and ``AutoProcessor`` load. What only the demo's cell connectors
have (several tokens per group, a margin, markers) no transformers architecture represents: such a
model is written as ``GraftCellsForConditionalGeneration`` (``graft.remote``), whose code the
folder carries and the Auto classes run with ``trust_remote_code=True``. Weights carry the module's own key
names: ``model.vision_tower.*``, ``model.multi_modal_projector.*``, ``model.language_model.*``
(the LLM's base model) and ``lm_head.*``; transformers also reads llava-hf's older names on import.

- ``model``: graft model -> transformers model in memory (``to_transformers``).
- ``processor``: ``GraftProcessor`` -> ``LlavaProcessor`` (both architectures).
- ``writer``: ``export_to_transformers`` / ``export_hf`` write the folder atomically.
- ``importer``: ``import_from_hf`` reads any of the three back as a graft model and processor.
"""

from graft.export.importer import import_from_hf
from graft.export.model import (
    PROJECTOR_ACTS,
    ExportError,
    export_architecture,
    to_transformers,
    transformers_config,
)
from graft.export.processor import llava_processor
from graft.export.writer import export_hf, export_to_transformers

__all__ = [
    "PROJECTOR_ACTS",
    "ExportError",
    "export_architecture",
    "export_hf",
    "export_to_transformers",
    "import_from_hf",
    "llava_processor",
    "to_transformers",
    "transformers_config",
]
