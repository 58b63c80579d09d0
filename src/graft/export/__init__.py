"""To and from transformers' ``LlavaForConditionalGeneration`` layout.

A graft model with a ``linear`` or ``mlp2x_gelu`` connector computes exactly what LLaVA
computes, so it can be written as a LLaVA folder that every tool running LLaVA loads. Weights
carry the module's own key names: ``model.vision_tower.*``,
``model.multi_modal_projector.linear_1/linear_2.*``, ``model.language_model.*`` (the LLM's base
model) and ``lm_head.*``; transformers also reads llava-hf's older names on import.

- ``model``: graft model -> ``LlavaForConditionalGeneration`` in memory (``to_llava``).
- ``processor``: ``GraftProcessor`` -> ``LlavaProcessor``.
- ``writer``: ``export_to_llava`` / ``export_hf`` write the folder atomically.
- ``importer``: ``import_from_llava`` reads one back as a graft model and processor.
"""

from graft.export.importer import import_from_llava
from graft.export.model import PROJECTOR_ACTS, LlavaExportError, llava_config, to_llava
from graft.export.processor import llava_processor
from graft.export.writer import export_hf, export_to_llava

__all__ = [
    "PROJECTOR_ACTS",
    "LlavaExportError",
    "export_hf",
    "export_to_llava",
    "import_from_llava",
    "llava_config",
    "llava_processor",
    "to_llava",
]
