"""Does bf16 pay on this machine? Times SmolLM2-135M-sized work in fp32 and in bf16, one run.

A matmul of the MLP's shape (batch x 576 by 576 x 1536) and a forward and backward pass of one
SmolLM2-sized decoder layer (transformers' ``LlamaDecoderLayer``, 16 sequences of 80 tokens)
under bf16 autocast against fp32; prints one JSON line with each side's milliseconds, their
ratio, and whether graft would compute in bf16 here (``graft.precision``). bf16 is timed even
where graft would not use it.

    python benchmarks/bf16_speed.py
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

from graft.precision import native_bf16


def time_ms(work: Callable[[], object], repeat: int) -> float:
    """Milliseconds per call of ``work``, after one untimed call."""
    work()  # warm-up
    start = time.perf_counter()
    for _ in range(repeat):
        work()
    return (time.perf_counter() - start) / repeat * 1e3


def smollm2_layer_config() -> LlamaConfig:
    """A decoder layer of SmolLM2-135M's shape: hidden 576, MLP 1536, 9 heads, 3 KV heads."""
    return LlamaConfig(
        hidden_size=576,
        intermediate_size=1536,
        num_attention_heads=9,
        num_key_value_heads=3,
        attn_implementation="sdpa",
    )


def main() -> None:
    torch.manual_seed(0)
    a, b = torch.randn(512, 576), torch.randn(576, 1536)
    config = smollm2_layer_config()
    layer = LlamaDecoderLayer(config, layer_idx=0)
    hidden = torch.randn(16, 80, 576, requires_grad=True)
    position_ids = torch.arange(80)[None].expand(16, -1)
    rope = LlamaRotaryEmbedding(config)(hidden, position_ids)

    def layer_step(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = layer(hidden, position_embeddings=rope, position_ids=position_ids)
        (out[0] if isinstance(out, tuple) else out).float().sum().backward()

    result: dict[str, object] = {
        "cpu": torch.backends.cpu.get_cpu_capability(),
        "graft_uses_bf16_here": native_bf16("cpu"),
    }
    for name, fp32, bf16, repeat in (
        ("matmul", lambda: a @ b, lambda: a.bfloat16() @ b.bfloat16(), 20),
        ("decoder_layer_fwd_bwd", lambda: layer_step(False), lambda: layer_step(True), 3),
    ):
        ms32, ms16 = time_ms(fp32, repeat), time_ms(bf16, repeat)
        result[name] = {
            "fp32_ms": round(ms32, 2),
            "bf16_ms": round(ms16, 2),
            "bf16_over_fp32": round(ms16 / ms32, 2),
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
