import os
import subprocess
import sys

import torch

from graft.templates import Message

from tiny import random_image, tiny_model_and_processor


def test_forward_with_image_gives_finite_loss():
    model, processor = tiny_model_and_processor()
    sample = processor.encode(
        [Message("user", "<image>\nIs there a red circle?"), Message("assistant", "Yes")], [random_image()]
    )
    batch = processor.collate([sample])
    out = model(**batch)
    assert torch.isfinite(out.loss)
    assert (batch["input_ids"] == model.config.image_token_id).sum() == model.config.image_seq_length


def test_models_keep_pytorch_layers_unless_hub_kernels_are_asked_for(tmp_path):
    # transformers would swap in kernels downloaded from the Hub on a GPU (offline: an error at
    # model.train()); graft turns that off unless the user sets USE_HUB_KERNELS
    code = (
        "import os, graft\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,"
        " num_attention_heads=2, num_key_value_heads=2)\n"
        f"LlamaForCausalLM(cfg).save_pretrained({str(tmp_path)!r})\n"
        f"model = LlamaForCausalLM.from_pretrained({str(tmp_path)!r})\n"
        "print(os.environ['USE_HUB_KERNELS'], model.use_kernels)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "USE_HUB_KERNELS"}

    def run() -> list[str]:
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout.split()[-2:]

    assert run() == ["0", "False"]
    env["USE_HUB_KERNELS"] = "1"  # the user's choice stands
    assert run() == ["1", "True"]
