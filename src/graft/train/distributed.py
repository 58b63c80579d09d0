"""How several processes train together: the recipe's ``distributed`` section.

    distributed:
      strategy: zero3        # ddp | zero2 | zero3 | zero3_offload | fsdp2
      config: my_zero3.json  # optional: used instead of graft/configs/distributed/<strategy>.json

- ``ddp``: accelerate's DistributedDataParallel (the default; one process is plain training).
- ``zero2`` / ``zero3`` / ``zero3_offload``: DeepSpeed ZeRO through accelerate (``pip install
  graft[deepspeed]``). DeepSpeed owns the gradient reduction, clipping and the optimizer step;
  graft keeps its loss, AdamW groups, schedule and data order, so the losses are DDP's. The
  config's ``"auto"`` values are filled from the recipe (micro-batch, accumulation, clipping,
  bf16) and the LLM's hidden size (bucket sizes); a value written out must agree with the recipe.
- ``fsdp2``: PyTorch's ``fully_shard``, applied by graft itself (``graft.train.fsdp``).

accelerate with an FSDP plugin on a machine without GPUs silently trains plain DDP; graft
refuses that (``accelerate launch --use_fsdp`` on CPU). DeepSpeed runs on CPU processes (gloo)
only when accelerate is not told ``cpu=True``, so graft gives it the gloo backend instead.

Sharded strategies gather a module's weights collectively inside its forward, so every process
must run the same modules: a micro-batch without images still runs the connector (and the vision
tower when it reads pixels) on a blank image whose soft tokens count zero times in the loss.
"""

from __future__ import annotations

import json
import os
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from graft.process_group import close_at_exit, multi_cpu, no_device
from graft.train.distributed_spec import ZERO_STAGES, DistributedSpec

if TYPE_CHECKING:
    from accelerate import Accelerator, PartialState

    from graft.train.recipe import Recipe


#: the DeepSpeed checkpoint's tag inside graft's ``checkpoints/step-N/``
ENGINE_TAG = "deepspeed"


class DistributedError(RuntimeError, ValueError):
    """A strategy that cannot run as asked (and would otherwise fail silently or hang); a ValueError
    too, so that ``graft train`` reports it as a one-line error, not a traceback."""


# --- the launch and the process group --------------------------------------------------------------
def _launched_with(flag: str) -> bool:
    return os.environ.get(flag, "false").lower() == "true"


def alone_under_accelerate() -> bool:
    """``accelerate launch --num_processes N`` (N > 1) ran its simple launcher, one process: it does
    so with ``--cpu``, and without ``--multi_gpu`` on a machine with fewer than two GPUs. It sets
    ``MASTER_ADDR`` for N > 1 but no ``WORLD_SIZE`` (torchrun's) nor an MPI size (``--mpirun_hostfile``)."""
    world = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
    return (
        "ACCELERATE_USE_CPU" in os.environ
        and "MASTER_ADDR" in os.environ
        and not any(name in os.environ for name in world)
    )


def check_launch(spec: DistributedSpec) -> None:
    """Refuse launcher settings that would train otherwise than the recipe says."""
    if alone_under_accelerate():
        raise DistributedError(
            "accelerate launch started one process although it was given several (--num_processes > 1): "
            "it does so with --cpu, and without --multi_gpu on a machine with fewer than two GPUs, and "
            "this process would train alone. Launch with accelerate launch --multi_gpu --num_processes N "
            "(on a machine without GPUs graft then trains on CPU over gloo) or torchrun --nproc_per_node N. "
            "(Seen as: MASTER_ADDR set, no WORLD_SIZE; a single process with MASTER_ADDR exported by the "
            "shell: unset it.)"
        )
    if _launched_with("ACCELERATE_USE_FSDP"):
        if no_device():
            raise DistributedError(
                "FSDP through accelerate (accelerate launch --use_fsdp, ACCELERATE_USE_FSDP=true) on a "
                "machine without GPUs: accelerate would silently train plain DDP instead. Launch without "
                "--use_fsdp; for FSDP2 set distributed.strategy: fsdp2 (graft applies fully_shard itself)"
            )
        raise DistributedError(
            "launched with accelerate's --use_fsdp: graft picks the strategy from the recipe and applies "
            "FSDP2 itself; launch without --use_fsdp and set distributed.strategy: fsdp2"
        )
    if (
        _launched_with("ACCELERATE_USE_DEEPSPEED")
        and not spec.deepspeed
        and "GRAFT_DEEPSPEED" not in os.environ
    ):
        raise DistributedError(
            f"launched with accelerate's --use_deepspeed but the recipe's distributed.strategy is "
            f"{spec.strategy!r}: set distributed.strategy to zero2, zero3 or zero3_offload "
            "(--set distributed.strategy=zero3), whose config graft fills from the recipe"
        )


def start(spec: DistributedSpec) -> PartialState:
    """Set up the process group for ``spec`` (before anything asks which process is the main one);
    several processes leave it together at exit (``close_at_exit``)."""
    from accelerate import PartialState
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType

    check_launch(spec)
    if spec.deepspeed:
        try:
            import deepspeed  # noqa: F401
        except ImportError as err:
            raise DistributedError(
                f"distributed.strategy {spec.strategy} needs DeepSpeed: "
                f"pip install 'graft[deepspeed]' ({err})"
            ) from None
    current = PartialState._shared_state.get("distributed_type")
    if current is not None and (current == DistributedType.DEEPSPEED) != spec.deepspeed:
        # an earlier run of this process used the other kind: accelerate keeps it in a singleton
        AcceleratorState._reset_state(reset_partial_state=True)
    if spec.deepspeed:
        # what `accelerate launch --use_deepspeed` sets: accelerate then starts through DeepSpeed
        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
        os.environ["GRAFT_DEEPSPEED"] = "1"  # set by graft, not by a launcher (check_launch)
        launched = int(os.environ.get("LOCAL_RANK", "-1")) != -1
        state = PartialState(backend="gloo") if launched and no_device() else PartialState()
    else:
        if os.environ.pop("GRAFT_DEEPSPEED", None):
            os.environ.pop("ACCELERATE_USE_DEEPSPEED", None)
        state = PartialState(cpu=multi_cpu())
    if state.num_processes > 1:
        close_at_exit()
    return state


def accelerator_for(
    recipe: Recipe, find_unused_parameters: bool, grad_accum: int, hidden_size: int
) -> Accelerator:
    """The run's ``Accelerator``: DDP, or DeepSpeed with the recipe's config (FSDP2 uses a plain one)."""
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.state import AcceleratorState
    from accelerate.utils import DeepSpeedPlugin, DistributedType

    spec = recipe.distributed
    mixed = "bf16" if recipe.precision == "bf16" else "no"
    previous = AcceleratorState._shared_state
    if previous and (
        previous.get("_mixed_precision") != mixed or spec.deepspeed or previous.get("deepspeed_plugins")
    ):
        # a second run in one process (a notebook, the demo) with another precision or plugin:
        # accelerate keeps its state in a singleton that refuses the change unless reset
        AcceleratorState._reset_state()
    if spec.deepspeed:
        from accelerate import PartialState

        config = deepspeed_config(recipe, grad_accum, PartialState().num_processes, hidden_size)
        accelerator = Accelerator(
            mixed_precision=mixed, deepspeed_plugin=DeepSpeedPlugin(hf_ds_config=config)
        )
        if accelerator.distributed_type != DistributedType.DEEPSPEED:
            raise DistributedError(
                f"distributed.strategy {spec.strategy} needs a launcher (torchrun or accelerate launch, "
                "even for one process): accelerate did not start DeepSpeed"
            )
        return accelerator
    if spec.strategy == "fsdp2":
        return Accelerator(mixed_precision=mixed, cpu=multi_cpu())
    ddp = DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)
    return Accelerator(mixed_precision=mixed, cpu=multi_cpu(), kwargs_handlers=[ddp])


# --- DeepSpeed's config --------------------------------------------------------------------------------
def _autos(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        return [k for key, value in node.items() for k in _autos(value, f"{prefix}{key}.")]
    return [prefix.rstrip(".")] if node == "auto" else []


def deepspeed_config(recipe: Recipe, grad_accum: int, num_processes: int, hidden_size: int) -> dict[str, Any]:
    """The strategy's DeepSpeed config with every ``"auto"`` filled from the recipe; values written
    out that contradict the recipe (graft's sampler and loss use the recipe's) are refused."""
    spec = recipe.distributed
    path = spec.config_file()
    assert path is not None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DistributedError(
            f"distributed.config {path}: cannot read a DeepSpeed JSON config ({err})"
        ) from None
    zero = config.setdefault("zero_optimization", {})
    if zero.get("stage") != ZERO_STAGES[spec.strategy]:
        raise DistributedError(
            f"{path}: zero_optimization.stage is {zero.get('stage')!r} but distributed.strategy "
            f"{spec.strategy} is stage {ZERO_STAGES[spec.strategy]}"
        )
    bf16 = recipe.precision == "bf16"
    batch, clip = recipe.batch_size, float(recipe.optim.max_grad_norm)
    # key: (value, must it agree with the recipe, written in when absent)
    values: dict[str, tuple[Any, bool, bool]] = {
        "train_micro_batch_size_per_gpu": (batch, True, True),
        "gradient_accumulation_steps": (grad_accum, True, True),
        "train_batch_size": (batch * grad_accum * num_processes, True, False),
        "gradient_clipping": (clip, True, True),
        "bf16.enabled": (bf16, True, False),
        "fp16.enabled": (False, True, False),
        "zero_optimization.reduce_bucket_size": (hidden_size * hidden_size, False, False),
        "zero_optimization.stage3_prefetch_bucket_size": (int(0.9 * hidden_size * hidden_size), False, False),
        "zero_optimization.stage3_param_persistence_threshold": (10 * hidden_size, False, False),
    }
    for key, (value, must_agree, add) in values.items():
        *sections, name = key.split(".")
        node = config
        for section in sections:
            node = node.get(section) if isinstance(node, dict) else None
        if not isinstance(node, dict) or (name not in node and not add):
            continue
        if node.get(name, "auto") == "auto":
            node[name] = value
        elif must_agree and node[name] != value:
            raise DistributedError(
                f'{path}: {key} is {node[name]!r} but the recipe gives {value!r}; write "auto" or '
                "change the recipe (batch_size, grad_accum / global_batch_size, optim.max_grad_norm, "
                "precision)"
            )
    left = _autos(config)
    if left:
        raise DistributedError(f'{path}: graft cannot fill "auto" for {", ".join(left)}; give values')
    return config


# --- one step: what differs under DeepSpeed ----------------------------------------------------------------
def _engine(accelerator: Accelerator, model: Any) -> Any:
    from accelerate.utils import DistributedType

    return model if accelerator.distributed_type == DistributedType.DEEPSPEED else None


def no_sync(accelerator: Accelerator, model: Any, last: bool) -> AbstractContextManager:
    """Skip the gradient exchange on all but a step's last micro-batch (DDP, FSDP2); ZeRO reduces
    as it goes."""
    if last or _engine(accelerator, model) is not None:
        return nullcontext()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        from graft.train.fsdp import no_gradient_sync

        return no_gradient_sync(model)
    return accelerator.no_sync(model)


def backward(accelerator: Accelerator, model: Any, loss: torch.Tensor, last: bool) -> None:
    """``loss`` is already the micro-batch's share of the step's loss: DeepSpeed must not divide it
    by the accumulation again; it steps (clips, updates) after the last micro-batch."""
    engine = _engine(accelerator, model)
    if engine is None:
        accelerator.backward(loss)
        return
    engine.set_gradient_accumulation_boundary(is_boundary=last)
    engine.backward(loss, scale_wrt_gas=False)
    engine.step()  # a real step only at the boundary


def clip(accelerator: Accelerator, model: Any, trainable: list[torch.nn.Parameter], max_norm: float) -> Any:
    """Clip the step's gradients (DeepSpeed did it in its step); the norm before clipping."""
    engine = _engine(accelerator, model)
    if engine is not None:
        return engine.get_global_grad_norm() if max_norm > 0 else None
    if max_norm <= 0:
        return None
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2: DTensor gradients
        from graft.train.fsdp import clip_grad_norm

        return clip_grad_norm(trainable, max_norm)
    return accelerator.clip_grad_norm_(trainable, max_norm)


def unused_image_input(spec: DistributedSpec, cached_features: bool) -> str | None:
    """What a micro-batch without images feeds the connector under a sharded strategy: a blank
    image's cached-style features, or its pixels (then the vision tower runs too)."""
    if spec.strategy == "ddp":
        return None
    return "features" if cached_features else "pixels"


def may_share_prefix(spec: DistributedSpec) -> bool:
    """Whether a recipe's ``share_prefix`` may act: only under DDP (or one process). A micro-batch
    of one sample, or one without a shared opening, runs the layers once where another runs them
    twice: ZeRO-3 and FSDP2 gather a layer's weights at every call, and ZeRO-2 reduces gradients
    in the order they become ready, so both need every process to run alike (measured: ZeRO-2's
    losses drifted from DDP's by 3e-4 from the third step). DDP reduces its buckets in a fixed order.
    """
    return spec.strategy == "ddp"


# --- preparing, checkpoints and the final model ------------------------------------------------------------
def shard(model: torch.nn.Module, recipe: Recipe, device: torch.device) -> None:
    """FSDP2: ``fully_shard`` the model in place, before its optimizer is built (others: nothing)."""
    if recipe.distributed.strategy == "fsdp2":
        from graft.train.fsdp import shard as fully_shard

        fully_shard(model, recipe, device)


def prepare(accelerator: Accelerator, spec: DistributedSpec, model: Any, optimizer: Any) -> tuple[Any, Any]:
    """accelerate's ``prepare`` (DDP wrapper, DeepSpeed engine); an FSDP2 model is already sharded."""
    if spec.strategy == "fsdp2":
        return model, optimizer
    return accelerator.prepare(model, optimizer)


class DeepSpeedState:
    """DeepSpeed's own checkpoint (every process writes its shard of the optimizer), trainable
    weights only: the frozen ones come from the recipe's model, as in graft's format."""

    kind = "deepspeed"

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def save(self, folder: Path) -> None:
        self.engine.save_checkpoint(
            str(folder), tag=ENGINE_TAG, save_latest=False, exclude_frozen_parameters=True
        )

    def load(self, folder: Path) -> None:
        load_path, _ = self.engine.load_checkpoint(
            str(folder), tag=ENGINE_TAG, load_module_strict=False, load_lr_scheduler_states=False
        )
        if load_path is None:
            raise FileNotFoundError(f"{folder}: no DeepSpeed checkpoint ({ENGINE_TAG}) to resume from")


def sharded_state(spec: DistributedSpec, prepared: Any, optimizer: Any) -> Any:
    """What writes and reads a checkpoint's weights and optimizer state when each process holds a
    shard of them (DeepSpeed, FSDP2); ``None`` under DDP (graft's own files)."""
    if spec.deepspeed:
        return DeepSpeedState(prepared)
    if spec.strategy == "fsdp2":
        from graft.train.fsdp import ShardedState

        return ShardedState(prepared, optimizer)
    return None


def release_model(accelerator: Accelerator, recipe: Recipe, prepared: Any) -> torch.nn.Module | None:
    """The trained model as a plain module with whole weights. Under ZeRO-3 and FSDP2 the weights
    are gathered onto the main process, on CPU; the other processes get ``None``."""
    engine = _engine(accelerator, prepared)
    if engine is None:
        if recipe.distributed.strategy == "fsdp2":
            from graft.train.fsdp import gather_full_model

            return gather_full_model(prepared, recipe, accelerator.is_main_process)
        return accelerator.unwrap_model(prepared, keep_fp32_wrapper=False)
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    module = engine.module
    if engine.zero_optimization_partition_weights():
        full = engine._zero3_consolidated_16bit_state_dict()  # every process must call it
        engine.destroy()  # the partitioning hooks go; the parameters become plain tensors again
        if full is None:
            module = None
        else:
            with torch.no_grad():
                for name, tensor in (*module.named_parameters(), *module.named_buffers()):
                    if name in full:
                        tensor.data = full[name]
            module.to("cpu")
    unset_hf_deepspeed_config()  # transformers would otherwise build later models under ZeRO-3
    return module
