"""Per-GPU memory of a training step under DDP, ZeRO-2 and ZeRO-3 / FSDP2, with and without CPU
offload. Every term and its source is in docs/plan.md; the figures are bytes.

Model states follow the ZeRO paper (Rajbhandari et al. 2020, "ZeRO: Memory Optimizations
Toward Training Trillion Parameter Models", section 3.1 and figure 1): in mixed-precision Adam a
trainable parameter holds 2 bytes of 16-bit weight, 2 of 16-bit gradient and K = 12 of
optimizer state (fp32 master weight, Adam momentum and variance, 4 each): 16 bytes in all.
Activations follow Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large
Transformer Models", section 4.1): s*b*h*(34 + 5*a*s/h) bytes per layer in 16-bit without
recomputation, 2*s*b*h per layer (its input) with full recomputation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

#: bytes per parameter: 16-bit weight, 16-bit gradient, optimizer states (ZeRO paper, K = 12)
WEIGHT_BYTES = 2
GRAD_BYTES = 2
OPTIMIZER_BYTES = 12
STATE_BYTES = WEIGHT_BYTES + GRAD_BYTES + OPTIMIZER_BYTES

#: the strategies, smallest (fastest, least sharding) first: the planner picks the first that fits
STRATEGIES = ("ddp", "zero2", "zero3", "ddp+offload", "zero2+offload", "zero3+offload")
LABELS = {
    "ddp": "DDP",
    "zero2": "ZeRO-2",
    "zero3": "ZeRO-3 / FSDP2",
    "ddp+offload": "DDP + CPU optimizer",
    "zero2+offload": "ZeRO-2 + CPU offload",
    "zero3+offload": "ZeRO-3 / FSDP2 + CPU offload",
}
#: the recipe's ``distributed.strategy`` that runs each row with the configs graft ships; None: graft
#: has no such strategy (DDP with a CPU optimizer; ZeRO-2 with offload needs a config of your own),
#: so the planner never advises it
GRAFT_STRATEGIES: dict[str, str | None] = {
    "ddp": "ddp",
    "zero2": "zero2",
    "zero3": "zero3",  # or fsdp2: the same accounting
    "ddp+offload": None,
    "zero2+offload": None,
    "zero3+offload": "zero3_offload",
}

#: graft's DDP keeps trainable weights and their gradients in fp32 (4 + 4 + 8 Adam = the paper's 16
#: bytes), and PyTorch's DDP reducer holds a flat copy of every gradient in its all-reduce buckets
#: (``gradient_as_bucket_view=False``, the default, which graft keeps): 4 more bytes per parameter
DDP_BUCKET_BYTES = 4

#: ZeRO-3 / FSDP2 gather whole units (a decoder layer) to compute: the current one and the
#: prefetched next, each with its 16-bit weights and, when it learns, its 16-bit gradients
LIVE_UNITS = 2

#: bytes per logit: the fp32 log-probabilities cross-entropy keeps for backward (4), and in the
#: backward pass their fp32 gradient and the logits' fp32 gradient (4 + 4)
LOGIT_BYTES = 12


def model_states(params: float, gpus: int, stage: int) -> float:
    """The ZeRO paper's per-GPU model states of ``params`` trainable parameters on ``gpus`` data
    parallel GPUs, ZeRO stage 0 (DDP), 1 (P_os), 2 (P_os+g) or 3 (P_os+g+p); figure 1."""
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"ZeRO stage must be 0, 1, 2 or 3, got {stage}")
    sharded = {0: 0, 1: OPTIMIZER_BYTES, 2: OPTIMIZER_BYTES + GRAD_BYTES, 3: STATE_BYTES}[stage]
    return (STATE_BYTES - sharded) * params + sharded * params / gpus


def activation_bytes(
    seq: int, micro: int, hidden: int, heads: int, layers: int, checkpointing: bool, fused_attention: bool
) -> float:
    """Activations kept for backward by ``layers`` transformer layers (Korthikanti et al. 2022).

    Without recomputation: s*b*h*(34 + 5*a*s/h) per layer; the 5*a*s/h term is the attention
    score matrices (softmax input, output, dropout mask), which fused kernels (FlashAttention,
    PyTorch SDPA) never store. With full checkpointing: 2*s*b*h per layer (each layer's input,
    16-bit) plus one layer's full activations while that layer is recomputed in backward."""
    if layers <= 0:
        return 0.0
    sbh = seq * micro * hidden
    per_layer = sbh * (34 + (0 if fused_attention else 5 * heads * seq / hidden))
    if checkpointing:
        return 2 * sbh * layers + per_layer
    return per_layer * layers


def logit_bytes(micro: int, positions: int, vocab: int) -> float:
    """The output head's logits for ``positions`` tokens per sample (all, or labelled ones only)."""
    return micro * positions * vocab * LOGIT_BYTES


@dataclass
class Memory:
    """One strategy's per-GPU bytes; ``cpu`` is what each GPU's rank keeps in host memory."""

    states: float
    gathered: float
    frozen: float
    activations: float
    logits: float
    overhead: float
    cpu: float

    @property
    def total(self) -> float:
        return self.states + self.gathered + self.frozen + self.activations + self.logits + self.overhead

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "total": self.total}


def weights_and_states(
    strategy: str,
    trainable: float,
    frozen: float,
    gpus: int,
    largest_unit: float,
    unit_trainable: float,
    frozen_bytes: int = WEIGHT_BYTES,
) -> dict[str, float]:
    """Trainable states, gathered units, frozen weights (GPU) and offloaded bytes (CPU); frozen
    weights take ``frozen_bytes`` each (2 in a bf16 run, 4 in an fp32 one)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
    n, t, fb = gpus, trainable, frozen_bytes * frozen
    unit = LIVE_UNITS * (WEIGHT_BYTES * largest_unit + GRAD_BYTES * unit_trainable)
    if strategy == "ddp":
        states = model_states(t, n, 0) + DDP_BUCKET_BYTES * t
        return {"states": states, "gathered": 0.0, "frozen": fb, "cpu": 0.0}
    if strategy == "zero2":
        return {"states": model_states(t, n, 2), "gathered": 0.0, "frozen": fb, "cpu": 0.0}
    if strategy == "zero3":
        return {"states": model_states(t, n, 3), "gathered": unit, "frozen": fb / n, "cpu": 0.0}
    # offload: the optimizer step runs on the CPU (ZeRO-Offload, Ren et al. 2021): fp32 master
    # weights, Adam states and the gradients it reads live in host memory
    cpu_states = (OPTIMIZER_BYTES + GRAD_BYTES) * t
    if strategy == "ddp+offload":
        gpu = (WEIGHT_BYTES + GRAD_BYTES) * t
        return {"states": gpu, "gathered": 0.0, "frozen": fb, "cpu": cpu_states}
    if strategy == "zero2+offload":  # gradients leave for the CPU bucket by bucket as produced
        return {
            "states": WEIGHT_BYTES * t,
            "gathered": 0.0,
            "frozen": fb,
            "cpu": cpu_states / n,
        }
    # zero3+offload: every parameter's shard in host memory; the GPU holds the gathered units only
    cpu = (STATE_BYTES * t + fb) / n
    return {"states": 0.0, "gathered": unit, "frozen": 0.0, "cpu": cpu}


def strategy_memory(
    strategy: str,
    *,
    trainable: float,
    frozen: float,
    gpus: int,
    largest_unit: float,
    unit_trainable: float,
    activations: float,
    logits: float,
    overhead_fixed: float,
    fragmentation: float,
    frozen_bytes: int = WEIGHT_BYTES,
) -> Memory:
    """A strategy's per-GPU memory: states and weights as it shards them, plus the activations and
    logits of one micro-batch, plus a fixed overhead and a share of the rest for fragmentation."""
    parts: dict[str, Any] = weights_and_states(
        strategy, trainable, frozen, gpus, largest_unit, unit_trainable, frozen_bytes
    )
    on_gpu = parts["states"] + parts["gathered"] + parts["frozen"] + activations + logits
    return Memory(
        states=parts["states"],
        gathered=parts["gathered"],
        frozen=parts["frozen"],
        activations=activations,
        logits=logits,
        overhead=overhead_fixed + fragmentation * on_gpu,
        cpu=parts["cpu"],
    )
