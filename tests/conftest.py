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
