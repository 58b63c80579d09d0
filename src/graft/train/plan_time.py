"""How many tokens a stage trains on and how long that takes: FLOPs over a GPU's sustained rate.

FLOPs per token of a dense transformer are 2 per matrix-multiply parameter forward and 4
backward (Kaplan et al. 2020, "Scaling Laws for Neural Language Models", section 2.1: C = 6N
per token): 6x for a parameter that learns. A frozen parameter that gradients flow through (a
frozen LLM after a learning projector) needs the activation gradient (2) but no weight
gradient (2): 4x. A frozen part that runs forward only (any frozen part before the first one
that learns, such as the vision tower before a learning projector) costs 2x. Gradient
checkpointing runs the forward of the layers on the backward path twice: +2x for them. The
attention score products (no parameters) add 2 * layers * context * hidden FLOPs per token
forward (Kaplan et al. table 1), 3x that on the backward path.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from graft.record_files import first_char, iter_jsonl, load_json
from graft.train.plan_model import FLOP_FACTORS, ModelShape

#: peak dense bf16 tensor-core FLOP/s per GPU (NVIDIA datasheets: A100 SXM 312 TFLOPS; H100 SXM
#: 989 TFLOPS, 1,979 "with sparsity"; H200 SXM 989 TFLOPS, the H100's compute with more memory)
GPU_PEAK_FLOPS = {"A100": 312e12, "H100": 989e12, "H200": 989e12}

#: characters per token of English text for a LLaMA-style BPE tokenizer (rule of thumb)
CHARS_PER_TOKEN = 4


@dataclass
class Tokens:
    """A stage's data: samples per epoch (None: unknown), average tokens (text + image tokens)
    and images per sample, the longest sample and its labelled tokens (for memory)."""

    samples: int | None
    tokens_per_sample: float
    images_per_sample: float
    max_tokens: int
    max_supervised: int
    source: str
    upper_bound: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _records(path: Path) -> list[dict[str, Any]]:
    """A JSON list of records, or JSON Lines (whatever the suffix); an unreadable line or item is a
    ``RecordError`` naming the file and line."""
    data: Any = load_json(path) if first_char(path) == "[" else [record for record, _ in iter_jsonl(path)]
    if not isinstance(data, list) or not data or not all(isinstance(r, dict) for r in data):
        raise ValueError(f"{path}: expected a non-empty list of LLaVA records (objects)")
    return data


def tokens_from_data(path: str | Path, image_tokens: int, max_length: int) -> Tokens:
    """Estimate from a LLaVA JSON / JSONL file (the dataset or a sample of it): text tokens as
    characters / 4 (``<image>`` placeholders left out), plus ``image_tokens`` per image."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--data {path}: no such file")
    records = _records(path)
    totals, supervised, images = [], [], []
    for i, record in enumerate(records):
        turns = record.get("conversations")
        if not isinstance(turns, list):
            raise ValueError(f"{path}: record {i} has no 'conversations' list")
        image = record.get("image")
        count = 0 if not image else len(image) if isinstance(image, list) else 1
        chars = [(t.get("from"), len(str(t.get("value", "")).replace("<image>", ""))) for t in turns]
        text = sum(c for _, c in chars) / CHARS_PER_TOKEN
        totals.append(text + count * image_tokens)
        supervised.append(sum(c for who, c in chars if who == "gpt") / CHARS_PER_TOKEN)
        images.append(count)
    n = len(records)
    return Tokens(
        samples=n,
        tokens_per_sample=sum(totals) / n,
        images_per_sample=sum(images) / n,
        max_tokens=min(max_length, int(max(totals)) + 1),
        max_supervised=min(max_length, int(max(supervised)) + 1),
        source=f"{path.name}: {n:,} records, text characters / {CHARS_PER_TOKEN} + {image_tokens} per image",
    )


def count_records(paths: list[str]) -> int | None:
    """Records in the recipe's own data files, when they are all on this machine."""
    if not paths or not all(Path(p).is_file() for p in paths):
        return None
    return sum(len(_records(Path(p))) for p in paths)


def flops_per_sample(
    shape: ModelShape, tokens: float, images: float, checkpointing: bool, word_alignment: bool = False
) -> dict[str, float]:
    """Training FLOPs of one sample per component: the LLM over every token, the vision tower
    over its patches and the connector over the vision features, per image. ``word_alignment``
    (``graft.word_alignment``): the LLM does not run; each image's soft tokens meet the
    embedding table instead, in the cosine product (forward and its gradient to the tokens) and
    the mixture of words (forward only): 6 x tokens x vocabulary x hidden per image."""
    if word_alignment:  # no token runs through the LLM
        out = flops_per_sample(shape, 0.0, images, checkpointing)
        out["alignment"] = 6.0 * shape.image_tokens * images * shape.vocab * shape.hidden
        return out
    runs = {"vision": shape.vision_seq * images, "connector": shape.vision_seq * images, "llm": tokens}
    out = {}
    for component, counts in shape.roles.items():
        factors = dict(FLOP_FACTORS)
        if checkpointing:  # the forward of what is on the backward path runs again
            factors["trainable"] += 2
            factors["on_path"] += 2
        out[component] = runs[component] * sum(factors[role] * n for role, n in counts.items())
    # attention scores and their weighted sum: 2 * n_layer * n_ctx * d per token forward (Kaplan)
    on_path = shape.llm_layers_on_path
    forward_only = shape.layers - on_path
    per_layer = 2 * tokens * shape.hidden * tokens
    out["attention"] = per_layer * (forward_only + on_path * (4 if checkpointing else 3))
    return out


def hours(flops: float, gpus: int, gpu_type: str, mfu: float) -> float:
    """Wall-clock hours for ``flops`` at ``mfu`` of the GPUs' peak bf16 dense rate."""
    return flops / (gpus * GPU_PEAK_FLOPS[gpu_type] * mfu) / 3600
