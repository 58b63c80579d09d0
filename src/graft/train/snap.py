"""Snap a connector onto another architecture: the ``lexical`` connector onto plain ``swiglu``.

The ``lexical`` connector writes words the LLM already reads (``graft.word_alignment``), but no
transformers architecture has its word head, so a model with it does not export. Its trunk is
``swiglu``'s, so a ``swiglu`` student starts from the teacher's weights (its last layer scaled to
the tokens' size: the trunk only had to point at words) and learns, LLM-free, to write the
teacher's soft tokens directly: a squared error relative to a word's size, on the
cached vision features of a records file's images. The student model (same vision tower, LLM
and processor) is saved for the next stage, and exports as ``swiglu`` models do.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from tqdm.auto import tqdm

from graft.files import write_text_atomic
from graft.modeling import GraftForConditionalGeneration

logger = logging.getLogger(__name__)


@dataclass
class SnapSettings:
    """How the student learns the teacher's tokens."""

    #: the student's connector: the teacher's spec under this name (its other options kept)
    connector: str = "swiglu"
    steps: int = 400
    #: images per step
    batch_size: int = 64
    lr: float = 2.0e-3
    #: images held out to measure how close the student comes (never trained on)
    heldout: int = 256
    seed: int = 0
    #: the teacher's tokens under bfloat16 autocast, as the recipes train (its 49k-word product
    #: is most of the step's cost)
    bf16: bool = True


def _student(teacher: GraftForConditionalGeneration, connector: str) -> GraftForConditionalGeneration:
    """A model with the teacher's weights and ``connector`` in place of its connector's name (its
    other options kept); the connector's weights are copied where name and shape agree (all of
    them for lexical -> swiglu)."""
    name = teacher.config.connector.get("name")
    if teacher.connector.needs_instruction or teacher.connector.needs_llm_hidden:
        raise ValueError(
            f"cannot snap connector {name!r}: its tokens depend on the question, not the image alone"
        )
    config = teacher.config.__class__.from_dict(teacher.config.to_dict())
    spec = {k: v for k, v in dict(teacher.config.connector).items() if k != "word_scale"}
    config.connector = spec | {"name": connector}
    try:
        student = GraftForConditionalGeneration(config).to(teacher.dtype)
    except (TypeError, ValueError) as err:
        raise ValueError(f"cannot snap connector {name!r} onto {connector!r}: {err}") from None
    if student.config.image_seq_length != teacher.config.image_seq_length:
        raise ValueError(
            f"cannot snap connector {name!r} onto {connector!r}: they give {teacher.config.image_seq_length} "
            f"and {student.config.image_seq_length} tokens per image"
        )
    mine = student.state_dict()
    shared = {k: v for k, v in teacher.state_dict().items() if k in mine and mine[k].shape == v.shape}
    student.load_state_dict(shared, strict=False)
    return student


@torch.no_grad()
def _match_size(connector: torch.nn.Module, features: torch.Tensor, targets: torch.Tensor) -> None:
    """Scale the connector's last linear layer so that its tokens have the targets' mean size: the
    teacher's trunk points at its words (only their direction mattered) at any length."""
    last = [m for m in connector.modules() if isinstance(m, torch.nn.Linear)][-1]
    ratio = targets.norm(dim=-1).mean() / connector(features).norm(dim=-1).mean()
    last.weight.mul_(ratio)
    if last.bias is not None:
        last.bias.mul_(ratio)


@torch.no_grad()
def _teacher_tokens(
    model: GraftForConditionalGeneration, features: torch.Tensor, s: SnapSettings, device: torch.device
) -> torch.Tensor:
    out = []
    for i in tqdm(range(0, len(features), s.batch_size), desc="teacher tokens", unit="batch", disable=None):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=s.bf16):
            out.append(
                model.get_image_features(vision_features=features[i : i + s.batch_size].to(device)).float()
            )
    return torch.cat(out)


def _fidelity(tokens: torch.Tensor, target: torch.Tensor, table: torch.Tensor) -> dict[str, float]:
    """How close the student's tokens are: squared error relative to a word's size, cosine, and
    how often both pick the same nearest word."""
    scale = (table**2).sum(-1).mean()
    unit = torch.nn.functional.normalize(table, dim=-1)
    same = (tokens @ unit.T).argmax(-1) == (target @ unit.T).argmax(-1)
    return {
        "relative_error": float(((tokens - target) ** 2).sum(-1).mean() / scale),
        "cosine": float(torch.nn.functional.cosine_similarity(tokens, target, dim=-1).mean()),
        "same_word": float(same.float().mean()),
    }


def cached_features(
    model: GraftForConditionalGeneration,
    processor: Any,
    records: str | Path,
    image_root: str | Path,
    cache_dir: str | Path,
) -> torch.Tensor:
    """The vision features ``[N, P, d_vis]`` of every image of a records file, from (and into) the
    feature cache that training keeps in ``cache_dir``."""
    from graft.data import LlavaDataset
    from graft.data.feature_cache import FeatureCache

    dataset = LlavaDataset(records, image_root, processor)
    cache = FeatureCache.for_model(cache_dir, model)
    keys = cache.fill(model, dataset)["keys"]
    return cache.batch(keys).float()


def snap_connector(
    teacher: GraftForConditionalGeneration,
    processor: Any,
    features: torch.Tensor,
    out: str | Path,
    settings: SnapSettings | None = None,
) -> dict[str, Any]:
    """Train a student of ``teacher`` on the soft tokens its connector gives for ``features``
    (``[N, P, d_vis]``, the chosen vision layer's, as a feature cache holds them) and save it
    with ``processor`` into ``out``. Returns the student's fidelity on the held-out images
    (``snap.json`` in ``out`` keeps it with the settings)."""
    from graft.train.checkpoint import save_final

    s = settings or SnapSettings()
    if s.steps < 1 or s.batch_size < 1:
        raise ValueError(f"snapping needs steps >= 1 and batch_size >= 1, got {s.steps} and {s.batch_size}")
    if len(features) <= s.heldout:
        raise ValueError(
            f"snapping needs more than {s.heldout} images (the held-out ones); got {len(features)}"
        )
    start, device = time.perf_counter(), PartialState().device
    student = _student(teacher, s.connector)
    teacher.to(device).eval()
    table = teacher.get_input_embeddings().weight.detach().float()
    targets = _teacher_tokens(teacher, features, s, device)
    features = features.to(device)
    rng = torch.Generator().manual_seed(s.seed)
    order = torch.randperm(len(features), generator=rng).to(device)
    test, train = order[: s.heldout], order[s.heldout :]
    connector = student.connector.to(device).float().train()
    _match_size(connector, features[train[: s.batch_size]], targets[train[: s.batch_size]])
    optimizer = torch.optim.AdamW(connector.parameters(), lr=s.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, s.lr, total_steps=s.steps, pct_start=0.05)
    scale = (table**2).sum(-1).mean()
    for step in tqdm(range(s.steps), desc="snapping connector", unit="step", disable=None):
        pick = train[torch.randint(len(train), (s.batch_size,), generator=rng).to(device)]
        loss = ((connector(features[pick].float()) - targets[pick]) ** 2).sum(-1).mean() / scale
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % 50 == 0:
            logger.info("snap step %d: loss %.4f", step + 1, loss.item())
    connector.eval()
    with torch.no_grad():
        result = _fidelity(connector(features[test].float()), targets[test], table)
    result["final_loss"] = loss.item()
    result["seconds"] = round(time.perf_counter() - start, 2)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "snap.json", json.dumps({"settings": asdict(s), "fidelity": result}, indent=2))
    save_final(student.cpu(), processor, out)
    return result


def snap_model(
    source: str | Path,
    records: str | Path,
    image_root: str | Path,
    out: str | Path,
    cache_dir: str | Path | None = None,
    settings: SnapSettings | None = None,
) -> dict[str, Any]:
    """``snap_connector`` from folder to folder: the model saved in ``source``, taught on the
    images of a records file (their vision features cached in ``cache_dir``, default
    ``out/feature_cache``), at most a quarter of them held out."""
    from graft.inference import load_for_inference

    s = settings or SnapSettings()
    model, processor = load_for_inference(Path(source))
    features = cached_features(
        model, processor, records, image_root, cache_dir or Path(out) / "feature_cache"
    )
    return snap_connector(
        model, processor, features, out, replace(s, heldout=min(s.heldout, len(features) // 4))
    )
