"""Teach a connector to write given soft tokens, LLM-free: a snap onto another architecture, or
tokens grounded in annotations.

``fit_connector`` is the one loop: a squared error relative to a word's size, on the cached
vision features of a records file's images, the connector's last layer first scaled to the
targets' size. Two callers:

- the snap (``snap_connector``): the ``lexical`` connector writes words the LLM already reads
  (``graft.word_alignment``), but no transformers architecture has its word head, so a model with
  it does not export. Its trunk is ``swiglu``'s, so a ``swiglu`` student starts from the
  teacher's weights and learns to write the teacher's soft tokens directly; it exports as
  ``swiglu`` models do;
- grounding on the shapes world (``graft.world.grounding`` gives each image cell's target words,
  the demo's ``ground`` step fits the connector to them).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from tqdm.auto import tqdm

from graft.files import write_text_atomic
from graft.modeling import GraftForConditionalGeneration
from graft.precision import use_bf16

logger = logging.getLogger(__name__)


@dataclass
class FitSettings:
    """How a connector learns to write given tokens (``fit_connector``)."""

    steps: int = 400
    #: images per step
    batch_size: int = 64
    lr: float = 2.0e-3
    #: images held out to measure how close the connector comes (never trained on)
    heldout: int = 256
    seed: int = 0
    #: weight of a cross-entropy asking each token to lie nearer its own class's word than any
    #: other class's (``fit_connector``'s ``classes``), beside the squared error: where the words
    #: differ little (SmolLM2's shape words), the squared error alone leaves them mixed up
    contrast: float = 0.0
    #: that cross-entropy's temperature, on squared distances relative to a word's size
    temperature: float = 0.02

    def check(self, images: int) -> None:
        """A ValueError unless the settings can fit on ``images`` images."""
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(
                "fitting a connector needs steps >= 1 and batch_size >= 1, "
                f"got {self.steps} and {self.batch_size}"
            )
        if images <= self.heldout:
            raise ValueError(
                f"fitting a connector needs more than {self.heldout} images (the held-out ones); got {images}"
            )


@dataclass
class TokenClasses:
    """What each target token says: ``labels`` ``[N, M]`` index ``words`` ``[K, d]``, the soft
    tokens a token may say (``FitSettings.contrast``)."""

    labels: torch.Tensor
    words: torch.Tensor


#: the share of a fit's steps over which its learning rate rises (one-cycle schedule)
_WARMUP = 0.05


def class_loss(
    tokens: torch.Tensor, labels: torch.Tensor, words: torch.Tensor, scale: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Cross-entropy of ``labels`` over ``words`` with logits the negative squared distances of
    ``tokens`` to each word, relative to ``scale`` (a word's mean squared size), over ``temperature``."""
    flat = tokens.reshape(-1, tokens.shape[-1])
    dist = (flat**2).sum(-1, keepdim=True) - 2 * flat @ words.T + (words**2).sum(-1)
    return torch.nn.functional.cross_entropy(-dist / (scale * temperature), labels.reshape(-1))


@dataclass
class SnapSettings(FitSettings):
    """How the student learns the teacher's tokens."""

    #: the student's connector: the teacher's spec under this name (its other options kept)
    connector: str = "swiglu"
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
    out, bf16 = [], use_bf16(s.bf16, device)
    for i in tqdm(range(0, len(features), s.batch_size), desc="teacher tokens", unit="batch", disable=None):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
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
) -> tuple[torch.Tensor, list[str]]:
    """The vision features ``[N, P, d_vis]`` of every image of a records file, from (and into) the
    feature cache that training keeps in ``cache_dir``, and each one's image file (an image that
    several records share once)."""
    from graft.data import LlavaDataset
    from graft.data.feature_cache import FeatureCache

    dataset = LlavaDataset(records, image_root, processor)
    cache = FeatureCache.for_model(cache_dir, model)
    filled = cache.fill(model, dataset)
    return cache.batch(filled["keys"]).float(), filled["files"]


def fit_connector(
    connector: torch.nn.Module,
    features: torch.Tensor,
    targets: torch.Tensor,
    table: torch.Tensor,
    settings: FitSettings | None = None,
    judge: Callable[[torch.Tensor, torch.Tensor], dict[str, float]] | None = None,
    classes: TokenClasses | None = None,
) -> dict[str, Any]:
    """Teach ``connector`` to write ``targets`` ``[N, M, d]`` (soft tokens) from ``features``
    ``[N, P, d_vis]`` (the chosen vision layer's, as a feature cache holds them), LLM-free: a
    squared error relative to the mean squared size of a word of ``table`` (the LLM's input
    embeddings, ``[V, d]``), plus ``settings.contrast`` times ``class_loss`` where the targets
    come from ``classes``. Its last linear layer is first scaled to the targets' size. Returns
    the fidelity on ``settings.heldout`` images it never trains on (with what ``judge`` says of
    their tokens and targets), the last loss and the time."""
    s = settings or FitSettings()
    s.check(len(features))
    if len(targets) != len(features):
        raise ValueError(f"{len(features)} images' features but {len(targets)} images' target tokens")
    if s.contrast and classes is None:
        raise ValueError("FitSettings.contrast needs the targets' classes (TokenClasses)")
    start, device = time.perf_counter(), PartialState().device
    features, targets, table = features.to(device), targets.to(device).float(), table.to(device).float()
    rng = torch.Generator().manual_seed(s.seed)
    order = torch.randperm(len(features), generator=rng).to(device)
    test, train = order[: s.heldout], order[s.heldout :]
    connector = connector.to(device).float().train()
    _match_size(connector, features[train[: s.batch_size]].float(), targets[train[: s.batch_size]])
    optimizer = torch.optim.AdamW(connector.parameters(), lr=s.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, s.lr, total_steps=s.steps, pct_start=_WARMUP if _WARMUP * s.steps != 1 else 2 / s.steps
    )  # (at 20 steps torch's warm-up would end at step 0, a ZeroDivisionError: it gets 2 steps)
    scale = (table**2).sum(-1).mean()
    if classes is not None:
        classes = TokenClasses(classes.labels.to(device), classes.words.to(device).float())
    for step in tqdm(range(s.steps), desc="fitting connector", unit="step", disable=None):
        pick = train[torch.randint(len(train), (s.batch_size,), generator=rng).to(device)]
        tokens = connector(features[pick].float())
        loss = ((tokens - targets[pick]) ** 2).sum(-1).mean() / scale
        if s.contrast and classes is not None:  # (checked above: contrast comes with classes)
            loss = loss + s.contrast * class_loss(
                tokens, classes.labels[pick], classes.words, scale, s.temperature
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % 50 == 0:
            logger.info("connector fit step %d: loss %.4f", step + 1, loss.item())
    connector.eval()
    with torch.no_grad():
        tokens = connector(features[test].float())
        result = _fidelity(tokens, targets[test], table) | (judge(tokens, targets[test]) if judge else {})
    result["final_loss"] = loss.item()
    result["seconds"] = round(time.perf_counter() - start, 2)
    return result


def save_fitted(
    model: GraftForConditionalGeneration, processor: Any, out: str | Path, record: dict[str, Any], name: str
) -> None:
    """Save a model whose connector was fitted into ``out``, with ``record`` (settings and
    fidelity) as ``out/{name}.json``."""
    from graft.train.checkpoint import save_final

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / f"{name}.json", json.dumps(record, indent=2))
    save_final(model.cpu(), processor, out)


#: a held-out cosine below this between the student's and the teacher's tokens is warned about
POOR_COSINE = 0.9


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
    s = settings or SnapSettings()
    s.check(len(features))
    start, device = time.perf_counter(), PartialState().device
    student = _student(teacher, s.connector)
    teacher.to(device).eval()
    table = teacher.get_input_embeddings().weight.detach().float()
    targets = _teacher_tokens(teacher, features, s, device)
    result = fit_connector(student.connector, features, targets, table, s)
    result["seconds"] = round(time.perf_counter() - start, 2)  # the teacher's tokens included
    save_fitted(student, processor, out, {"settings": asdict(s), "fidelity": result}, "snap")
    if result.get("cosine", 1.0) < POOR_COSINE:
        logger.warning(
            "%s: the snapped connector writes tokens far from the teacher's (held-out cosine %.3f, "
            "relative error %.3g): the model will answer differently; more --steps, or keep the teacher",
            out,
            result["cosine"],
            result.get("relative_error", float("nan")),
        )
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
    features, _ = cached_features(
        model, processor, records, image_root, cache_dir or Path(out) / "feature_cache"
    )
    return snap_connector(
        model, processor, features, out, replace(s, heldout=min(s.heldout, len(features) // 4))
    )
