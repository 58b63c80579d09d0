"""FSDP2 (``distributed.strategy: fsdp2``): PyTorch's ``fully_shard``, applied by graft itself.

Each decoder layer of the LLM is one unit, the connector another, the vision tower a third (or,
``vision_tower: ignore``, left whole on every process: frozen, it needs no sharded gradients),
and the rest (embeddings, head, final norm) the root. Under ``precision: bf16`` the units compute
in bf16 and reduce gradients in ``reduce_dtype``; the weights AdamW updates stay fp32.

accelerate only supplies the process group and the device here: its FSDP plugin on a machine
without GPUs silently trains plain DDP, so graft does not use it. Checkpoints are sharded
(``torch.distributed.checkpoint``: each process writes its shard of the trainable weights and of
AdamW's state); the final model is gathered whole onto the main process.

The settings live in ``graft/configs/distributed/fsdp2.yaml`` (or ``distributed.config``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml
from torch import nn

if TYPE_CHECKING:
    from graft.train.recipe import Recipe

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
FOLDER = "fsdp2"  # inside graft's checkpoints/step-N/


@dataclass
class Fsdp2Settings:
    #: free each unit's gathered weights after its forward (gather again for backward): less memory
    reshard_after_forward: bool = True
    #: the vision tower: ``unit`` (sharded as one unit) or ``ignore`` (whole on every process;
    #: only when it is frozen)
    vision_tower: str = "unit"
    #: gradients are reduced in this dtype under ``precision: bf16`` (fp32 | bf16)
    reduce_dtype: str = "fp32"


def load_settings(path: Path) -> Fsdp2Settings:
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    known = {f.name for f in dataclasses.fields(Fsdp2Settings)}
    if not isinstance(raw, dict) or set(raw) - known:
        unknown = sorted(set(raw) - known) if isinstance(raw, dict) else raw
        raise ValueError(f"{path}: unknown FSDP2 settings {unknown}; valid keys: {', '.join(sorted(known))}")
    settings = Fsdp2Settings(**raw)
    if settings.vision_tower not in ("unit", "ignore") or settings.reduce_dtype not in DTYPES:
        raise ValueError(f"{path}: vision_tower must be unit or ignore, reduce_dtype one of {list(DTYPES)}")
    return settings


def shard(model: nn.Module, recipe: Recipe, device: torch.device) -> None:
    """``fully_shard`` the model in place (before its optimizer is built: the parameters become
    DTensors)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from graft.connectors.vpgc import decoder_layers

    path = recipe.distributed.config_file()
    assert path is not None
    settings = load_settings(path)
    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    mixed = MixedPrecisionPolicy()
    if recipe.precision == "bf16":
        mixed = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=DTYPES[settings.reduce_dtype])
    options = {"mesh": mesh, "reshard_after_forward": settings.reshard_after_forward, "mp_policy": mixed}
    for layer in decoder_layers(model.language_model):
        fully_shard(layer, **options)
    fully_shard(model.connector, **options)
    ignored: set[nn.Parameter] = set()
    if settings.vision_tower == "ignore":
        if recipe.vision.mode != "frozen":
            raise ValueError(
                f"{path}: vision_tower: ignore needs a frozen vision tower (vision.mode: frozen)"
            )
        ignored = set(model.vision_tower.parameters())
    else:
        fully_shard(model.vision_tower, **options)
    fully_shard(model, ignored_params=ignored or None, **options)
    _keep_output_capture(model)


def _keep_output_capture(model: nn.Module) -> None:
    """transformers 5 finds what a model can record (``output_hidden_states``) by its class name,
    which ``fully_shard`` changes (``FSDPCLIPVisionModel``): register the new names too, or the
    vision tower returns no hidden states."""
    try:
        from transformers import PreTrainedModel
        from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY
    except ImportError:  # another transformers: nothing keyed on class names
        return
    for module in model.modules():
        if isinstance(module, PreTrainedModel) and hasattr(module, "_can_record_outputs"):
            _CAN_RECORD_REGISTRY[module] = module._can_record_outputs


@contextmanager
def no_gradient_sync(model: Any) -> Iterator[None]:
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` over sharded gradients; the whole norm, the same on every process."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


class ShardedState:
    """A step's trainable weights and AdamW state, each process its shard (torch.distributed.checkpoint)."""

    kind = "fsdp2"

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model, self.optimizer = model, optimizer

    def _state(self) -> tuple[dict[str, Any], Any]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        options = StateDictOptions(ignore_frozen_params=True)
        model, optim = get_state_dict(self.model, self.optimizer, options=options)
        return {"model": model, "optimizer": optim}, options

    def save(self, folder: Path) -> None:
        import torch.distributed.checkpoint as dcp

        state, _ = self._state()
        dcp.save(state, checkpoint_id=str(folder / FOLDER))

    def load(self, folder: Path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_state_dict

        state, options = self._state()
        dcp.load(state, checkpoint_id=str(folder / FOLDER))
        options = dataclasses.replace(options, strict=False)  # the frozen weights are the recipe's
        set_state_dict(
            self.model,
            self.optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optimizer"],
            options=options,
        )


def gather_full_model(model: nn.Module, recipe: Recipe, is_main: bool) -> nn.Module | None:
    """The trained model, whole and plain, on CPU in the main process (``None`` elsewhere): the
    weights are gathered there and loaded into the recipe's model built afresh."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from graft.train.stages import apply_stage, build_model

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    full = get_model_state_dict(model, options=options)  # every process takes part
    if not is_main:
        return None
    fresh, _ = build_model(recipe)
    apply_stage(fresh, recipe)
    fresh.load_state_dict(full)
    return fresh
