"""Does ``torch.compile`` pay for training SmolLM2 on this CPU? Eager against compiled, one run.

Times a forward and backward pass through a stack of SmolLM2-135M-sized decoder layers
(transformers' ``LlamaDecoderLayer``: hidden 576, MLP 1536, 9 heads, 3 KV heads; 16 sequences)
in fp32 (or, with ``--bf16``, under bf16 autocast as graft trains on a CPU with AVX512-BF16),
eager and under ``torch.compile(dynamic=True)``, at a short and a long sequence length
(the demo's warm-up records are about 80 tokens, its multi-question stage-2 records a few
hundred). Prints one JSON line: each side's milliseconds per pass, their ratio per length, and
the seconds the first compiled pass and the first pass at the second length took (compilation).

    python benchmarks/compile_speed.py
    python benchmarks/compile_speed.py --layers 4 --lengths 80 200
    python benchmarks/compile_speed.py --bf16
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

from bf16_speed import smollm2_layer_config, time_ms  # this folder: run as benchmarks/compile_speed.py


def _seconds(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lengths", type=int, nargs="+", default=[80, 200])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--bf16", action="store_true", help="under bf16 autocast, as graft's bf16 training")
    args = parser.parse_args()
    torch.manual_seed(0)
    config = smollm2_layer_config()
    eager = torch.nn.ModuleList([LlamaDecoderLayer(config, layer_idx=i) for i in range(args.layers)])
    compiled = [torch.compile(layer, dynamic=True) for layer in eager]
    rope = LlamaRotaryEmbedding(config)

    def step(layers: object, length: int) -> None:
        hidden = torch.randn(args.batch, length, config.hidden_size, requires_grad=True)
        position_ids = torch.arange(length)[None].expand(args.batch, -1)
        with torch.autocast("cpu", dtype=torch.bfloat16) if args.bf16 else nullcontext():
            embeddings = rope(hidden, position_ids)
            out = hidden
            for layer in layers:
                out = layer(out, position_embeddings=embeddings, position_ids=position_ids)
                out = out[0] if isinstance(out, tuple) else out
        out.float().sum().backward()

    result: dict[str, object] = {
        "cpu": torch.backends.cpu.get_cpu_capability(),
        "layers": args.layers,
        "precision": "bf16 autocast" if args.bf16 else "fp32",
    }
    for k, length in enumerate(args.lengths):
        first = _seconds(lambda length=length: step(compiled, length))
        result["compile_s" if k == 0 else f"first_pass_at_{length}_s"] = round(first, 1)
        e = time_ms(lambda length=length: step(eager, length), args.repeat)
        c = time_ms(lambda length=length: step(compiled, length), args.repeat)
        result[f"tokens_{length}"] = {
            "eager_ms": round(e, 1),
            "compiled_ms": round(c, 1),
            "speedup": round(e / c, 2),
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
