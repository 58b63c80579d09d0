"""``graft plan``: before renting GPUs, how much memory per GPU each distributed strategy needs
for a recipe, which is the smallest that fits, at which micro-batch and gradient accumulation,
and how many hours the stage takes.

The estimate is built from published accounting, every term of it in docs/plan.md: model states
as in the ZeRO paper (``plan_memory``), activations after Korthikanti et al. 2022, FLOPs after
Kaplan et al. 2020 at a stated utilisation of the GPU's datasheet peak (``plan_time``), and the
model measured on the meta device as ``graft inspect`` does (``plan_model``).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from graft.train.plan_memory import (
    GRAFT_STRATEGIES,
    LABELS,
    STRATEGIES,
    WEIGHT_BYTES,
    Memory,
    activation_bytes,
    logit_bytes,
    strategy_memory,
)
from graft.train.plan_model import ModelShape, model_shape
from graft.train.plan_time import (
    GPU_PEAK_FLOPS,
    Tokens,
    count_records,
    flops_per_sample,
    hours,
    tokens_from_data,
)
from graft.train.recipe import Recipe

#: the sequence length assumed when neither the recipe nor the data gives one
DEFAULT_MAX_LENGTH = 2048
_UNITS = {"": 1e9, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "kib": 2**10}
_UNITS |= {"mib": 2**20, "gib": 2**30, "tib": 2**40, "g": 1e9, "gi": 2**30}


class PlanError(ValueError):
    """Input the planner cannot use; the message says which and what would do."""


def parse_memory(text: str) -> float:
    """``80GB`` / ``80 GB`` / ``80`` (GB) / ``141GiB`` / ``8e10B`` -> bytes (GB = 1e9, GiB = 2**30)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)\s*", str(text).lower())
    if not match or match.group(2) not in _UNITS or float(match.group(1)) <= 0:
        raise PlanError(
            f"--gpu-memory: cannot read GPU memory {text!r}: give a size such as 80GB, 141GB or 80GiB"
        )
    return float(match.group(1)) * _UNITS[match.group(2)]


def gpu_type_name(text: str) -> str:
    name = text.strip().upper()
    if name not in GPU_PEAK_FLOPS:
        raise PlanError(f"--gpu-type: unknown GPU type {text!r}; known: {', '.join(GPU_PEAK_FLOPS)}")
    return name


@dataclass
class PlanSettings:
    """Everything a plan depends on besides the recipe."""

    gpus: int
    gpu_memory: float  # bytes per GPU
    gpu_type: str = "A100"
    #: utilisation of the peak bf16 rate over the work executed (recomputation included)
    mfu: float = 0.4
    #: a LLaVA JSON / JSONL file, the dataset or a sample of it
    data: str | None = None
    #: samples per epoch (overrides the data's record count)
    samples: int | None = None
    #: average tokens per sample, image tokens included (overrides the data's estimate)
    tokens_per_sample: float | None = None
    #: the longest sample for memory (default: the data's longest, else the recipe's max_length)
    seq_len: int | None = None
    #: logits for every position (a trainer that does not drop unlabelled ones); graft's loop
    #: computes the head on labelled positions only
    all_logits: bool = False
    #: attention through a fused kernel (SDPA / FlashAttention): no s x s score matrices stored
    fused_attention: bool = True
    #: CUDA context, cuBLAS / NCCL workspaces and buffers (bytes), and the allocator's
    #: fragmentation as a share of everything else
    overhead_fixed: float = 2e9
    fragmentation: float = 0.10

    def __post_init__(self) -> None:
        if self.gpus < 1:
            raise PlanError(f"--gpus must be at least 1, got {self.gpus}")
        if self.gpu_memory <= 0:
            raise PlanError("--gpu-memory must be positive")
        self.gpu_type = gpu_type_name(self.gpu_type)
        if not 0 < self.mfu <= 1:
            raise PlanError(f"--mfu is a fraction of the peak rate in (0, 1], got {self.mfu}")
        for name in ("samples", "tokens_per_sample", "seq_len"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise PlanError(f"--{name.replace('_', '-')} must be positive, got {value}")


@dataclass
class StrategyPlan:
    strategy: str
    label: str
    memory: Memory
    fits: bool
    micro_batch: int
    grad_accum: int
    hours: float | None
    #: the recipe's ``distributed.strategy`` for this row; None: not one graft ships (never advised)
    graft: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "memory": self.memory.to_dict()}


@dataclass
class Plan:
    recipe: str
    settings: PlanSettings
    shape: ModelShape
    tokens: Tokens
    global_batch: int
    epochs: float
    total_tokens: float | None
    flops: float | None
    hours: float | None
    strategies: list[StrategyPlan] = field(default_factory=list)
    #: the recipe gives ``global_batch_size`` (graft derives the accumulation from batch_size)
    fixed_global_batch: bool = False

    @property
    def best(self) -> StrategyPlan | None:
        """The first strategy, in ``STRATEGIES`` order, that fits and that graft can run."""
        return next((s for s in self.strategies if s.fits and s.graft is not None), None)

    def to_dict(self) -> dict[str, Any]:
        best = self.best
        return {
            "recipe": self.recipe,
            "settings": asdict(self.settings),
            "model": self.shape.to_dict(),
            "tokens": self.tokens.to_dict(),
            "global_batch": self.global_batch,
            "epochs": self.epochs,
            "total_tokens": self.total_tokens,
            "flops": self.flops,
            "hours": self.hours,
            "best": best.strategy if best else None,
            "strategies": [s.to_dict() for s in self.strategies],
        }


def stage_tokens(recipe: Recipe, settings: PlanSettings, shape: ModelShape) -> Tokens:
    """The data the stage trains on: ``--data``, else given counts, else the recipe (upper bound)."""
    max_length = recipe.data.max_length or DEFAULT_MAX_LENGTH
    if settings.data is not None:
        tokens = tokens_from_data(settings.data, shape.image_tokens, max_length)
    else:
        per_sample = settings.tokens_per_sample
        tokens = Tokens(
            samples=count_records(recipe.data.train),
            tokens_per_sample=per_sample or max_length,
            images_per_sample=1.0,
            max_tokens=max_length,
            max_supervised=max(1, max_length - shape.image_tokens),
            source=f"given: {per_sample:g} tokens per sample" if per_sample else "",
            upper_bound=per_sample is None,
        )
        if per_sample is None:
            tokens.source = f"upper bound: the recipe's max_length, {max_length} tokens per sample"
    if settings.tokens_per_sample is not None and settings.data is not None:
        tokens.tokens_per_sample = settings.tokens_per_sample
        tokens.source += f"; given: {settings.tokens_per_sample:g} tokens per sample"
    if settings.samples is not None:
        tokens.samples = settings.samples
        tokens.source += f"; {settings.samples:,} samples given"
    if settings.seq_len is not None:
        if settings.seq_len <= shape.image_tokens:
            raise PlanError(
                f"--seq-len {settings.seq_len}: the longest sample holds an image, {shape.image_tokens} "
                "tokens, and its text; give more"
            )
        tokens.max_tokens = settings.seq_len
        tokens.max_supervised = min(tokens.max_supervised, settings.seq_len)
    return tokens


def global_batch(recipe: Recipe, gpus: int) -> int:
    """Samples per optimizer step over all GPUs (``global_batch_size``, else per-GPU x accum x GPUs)."""
    size = recipe.global_batch_size or recipe.batch_size * (recipe.grad_accum or 1) * gpus
    if size % gpus:
        raise PlanError(
            f"global_batch_size {size} is not a multiple of {gpus} GPUs: micro-batch x accumulation x "
            "GPUs must equal it; change --gpus or the recipe's global_batch_size"
        )
    return size


def _divisors_desc(n: int) -> list[int]:
    return [d for d in range(n, 0, -1) if n % d == 0]


def _activations(
    micro: int, recipe: Recipe, settings: PlanSettings, shape: ModelShape, tokens: Tokens
) -> float:
    """Activations of the LLM layers and (when it learns) vision layers on the backward path."""
    ckpt, fused = recipe.gradient_checkpointing, settings.fused_attention
    llm = activation_bytes(
        tokens.max_tokens, micro, shape.hidden, shape.heads, shape.llm_layers_on_path, ckpt, fused
    )
    if recipe.objective == "word_alignment":  # the LLM does not run
        llm = 0
    images = max(1, round(micro * tokens.images_per_sample))
    vision = activation_bytes(
        shape.vision_seq,
        images,
        shape.vision_hidden,
        shape.vision_heads,
        shape.vision_layers_on_path,
        ckpt,
        fused,
    )
    return (llm + vision) * _precision_scale(recipe)


def _precision_scale(recipe: Recipe) -> int:
    """An fp32 recipe (no autocast) stores activations and frozen weights in 4 bytes, not 2."""
    return 2 if recipe.precision == "fp32" else 1


def _plan_strategy(
    strategy: str, recipe: Recipe, settings: PlanSettings, shape: ModelShape, tokens: Tokens, per_gpu: int
) -> tuple[Memory, bool, int]:
    """The largest micro-batch dividing the per-GPU batch that fits (else 1), its memory, fits."""
    logit_positions = tokens.max_tokens if settings.all_logits else tokens.max_supervised
    if recipe.objective == "word_alignment":  # each image token against the vocabulary instead
        logit_positions = shape.image_tokens * max(1, round(tokens.images_per_sample))
    memory = None
    for micro in _divisors_desc(per_gpu):
        memory = strategy_memory(
            strategy,
            trainable=shape.trainable,
            frozen=shape.frozen,
            gpus=settings.gpus,
            largest_unit=shape.largest_unit,
            unit_trainable=shape.largest_unit_trainable,
            activations=_activations(micro, recipe, settings, shape, tokens),
            logits=logit_bytes(micro, logit_positions, shape.vocab),
            overhead_fixed=settings.overhead_fixed,
            fragmentation=settings.fragmentation,
            frozen_bytes=WEIGHT_BYTES * _precision_scale(recipe),
        )
        if memory.total <= settings.gpu_memory:
            return memory, True, micro
    assert memory is not None
    return memory, False, 1


def make_plan(recipe: Recipe, settings: PlanSettings, shape: ModelShape | None = None) -> Plan:
    """Memory per strategy and hours for ``recipe`` on ``settings.gpus`` GPUs."""
    shape = shape or model_shape(recipe)
    tokens = stage_tokens(recipe, settings, shape)
    batch = global_batch(recipe, settings.gpus)
    per_gpu = batch // settings.gpus
    samples = tokens.samples
    epochs = recipe.epochs
    if recipe.max_steps is not None:  # the run's length is fixed in steps, not epochs
        samples, epochs = recipe.max_steps * batch, 1.0
    flops = total_tokens = run_hours = None
    if samples is not None:
        per_sample = flops_per_sample(
            shape,
            tokens.tokens_per_sample,
            tokens.images_per_sample,
            recipe.gradient_checkpointing,
            word_alignment=recipe.objective == "word_alignment",
        )
        flops = sum(per_sample.values()) * samples * epochs
        total_tokens = tokens.tokens_per_sample * samples * epochs
        run_hours = hours(flops, settings.gpus, settings.gpu_type, settings.mfu)
    plans = []
    for strategy in STRATEGIES:
        memory, fits, micro = _plan_strategy(strategy, recipe, settings, shape, tokens, per_gpu)
        plans.append(
            StrategyPlan(
                strategy,
                LABELS[strategy],
                memory,
                fits,
                micro,
                per_gpu // micro,
                run_hours,
                GRAFT_STRATEGIES[strategy],
            )
        )
    return Plan(
        recipe=str(Path(recipe.source).name) if recipe.source else "<recipe>",
        settings=settings,
        shape=shape,
        tokens=tokens,
        global_batch=batch,
        epochs=epochs,
        total_tokens=total_tokens,
        flops=flops,
        hours=run_hours,
        strategies=plans,
        fixed_global_batch=recipe.global_batch_size is not None,
    )
