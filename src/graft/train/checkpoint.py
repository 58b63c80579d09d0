"""Resumable training checkpoints, written atomically.

``<output_dir>/checkpoints/step-N/`` holds:

- ``trainable.safetensors``: every parameter that learns (base weights come from the model
  the recipe starts from, so a 7B stage-1 checkpoint is a few MB);
- ``optimizer.pt``, ``scheduler.pt``: their ``state_dict``;
- ``rank-R.pt``: process R's RNG states (python, numpy, torch, CUDA) and data position
  (epoch, batches of that epoch consumed);
- ``state.json``: the step and the process count, written last.

Under DeepSpeed and FSDP2 (``distributed.strategy``) the trainable weights and the optimizer are
sharded instead: DeepSpeed's own checkpoint (``deepspeed/``) or ``torch.distributed.checkpoint``'s
(``fsdp2/``), each process writing its shard; resume then needs the same strategy and process count.

Everything is written into ``step-N.tmp`` and renamed, so a folder named ``step-N`` is whole;
a run killed mid-write leaves a ``.tmp`` folder that resume ignores and the next save removes.
The newest ``keep`` checkpoints are kept.

``save_final`` writes the trained model and its processor into the run folder itself.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from graft.files import umask_modes
from graft.train.stages import trainable_state_dict

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STATE_FILE = "state.json"
WEIGHTS_FILE = "trainable.safetensors"


@dataclass
class TrainState:
    #: optimizer steps done
    step: int = 0
    #: data position of this process: the epoch, and how many of its batches were consumed
    epoch: int = 0
    batch: int = 0


# --- RNG ---------------------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        # numpy's state as plain values, so torch.load(weights_only=True) can read it back
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- finding ------------------------------------------------------------------------------------------
def _step_of(path: Path) -> int:
    return int(path.name.removeprefix("step-"))


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(output_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    done = [
        d
        for d in root.glob("step-*")
        if d.is_dir() and d.name.removeprefix("step-").isdigit() and (d / STATE_FILE).exists()
    ]
    return sorted(done, key=_step_of)


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def resolve_resume(resume: bool | str, output_dir: str | os.PathLike) -> Path | None:
    """What ``resume`` means: ``False`` nothing; ``True`` the newest checkpoint of ``output_dir``
    (none yet: start from the beginning); a path, that checkpoint or a run folder's newest."""
    if resume is False:
        return None
    if resume is True:
        found = latest_checkpoint(output_dir)
        if found is None:
            logger.info("resume: no checkpoint in %s yet; starting from the beginning", output_dir)
        return found
    path = Path(resume)
    if not path.exists():
        raise FileNotFoundError(f"resume: {path} does not exist")
    if (path / CHECKPOINTS).is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"resume: no complete checkpoint in {path / CHECKPOINTS}")
        return found
    return path


# --- saving -------------------------------------------------------------------------------------------
def save_checkpoint(
    output_dir: str | os.PathLike,
    state: TrainState,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    accelerator: Any,
    keep: int = 2,
    sharded: Any = None,
) -> Path:
    """Write ``step-N`` (every process calls this; ``model`` is the unwrapped model; ``sharded``,
    under DeepSpeed / FSDP2, writes the weights and optimizer: ``graft.train.distributed``)."""
    root = Path(output_dir) / CHECKPOINTS
    final = root / f"step-{state.step}"
    tmp = root / f"step-{state.step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    position = {"epoch": state.epoch, "batch": state.batch}
    torch.save({"rng": rng_state(), **position}, tmp / f"rank-{accelerator.process_index}.pt")
    if sharded is not None:
        sharded.save(tmp)
    if accelerator.is_main_process:
        if sharded is None:
            weights = {k: v.contiguous().cpu() for k, v in trainable_state_dict(model).items()}
            save_file(weights, str(tmp / WEIGHTS_FILE))
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        info = {
            "step": state.step,
            "world_size": accelerator.num_processes,
            "sharded": getattr(sharded, "kind", None),
        }
        (tmp / STATE_FILE).write_text(json.dumps(info, indent=2))
        if final.exists():  # the same step written by an earlier, abandoned attempt
            shutil.rmtree(final)
        os.replace(tmp, final)
        _prune(root, keep)
        logger.info("saved checkpoint %s", final)
    accelerator.wait_for_everyone()
    return final


def _prune(root: Path, keep: int) -> None:
    for leftover in root.glob("step-*.tmp"):
        shutil.rmtree(leftover, ignore_errors=True)
    for old in list_checkpoints(root.parent)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


# --- loading ------------------------------------------------------------------------------------------
def load_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    rank: int = 0,
    world_size: int = 1,
    sharded: Any = None,
) -> TrainState:
    """Restore weights, optimizer, scheduler and this process's RNG; return the position. Under
    DeepSpeed / FSDP2, ``sharded`` (made after ``prepare``) restores the weights and optimizer."""
    path = Path(path)
    if not (path / STATE_FILE).exists():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {STATE_FILE})")
    info = json.loads((path / STATE_FILE).read_text())
    if info["world_size"] != world_size:
        raise ValueError(
            f"{path} was written by {info['world_size']} process(es) but this run has {world_size}; "
            "the data order and RNG streams would not continue exactly"
        )
    kind = getattr(sharded, "kind", None)
    if info.get("sharded") != kind:
        raise ValueError(
            f"{path} holds {info.get('sharded') or 'unsharded'} weights but this run's distributed.strategy "
            f"needs {kind or 'unsharded'} ones: resume with the strategy that wrote it"
        )
    if sharded is not None:
        sharded.load(path)
    else:
        _load_weights(path, model, optimizer)
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    mine = torch.load(path / f"rank-{rank}.pt", weights_only=True)
    set_rng_state(mine["rng"])
    if rank == 0:  # once, not once per process
        logger.info("resumed from %s (step %d)", path, info["step"])
    return TrainState(step=info["step"], epoch=mine["epoch"], batch=mine["batch"])


def _load_weights(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    weights = load_file(str(path / WEIGHTS_FILE))
    expected = trainable_state_dict(model)
    if set(weights) != set(expected):
        missing, extra = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
        raise ValueError(
            f"{path}: trainable weights do not match the recipe's stage "
            f"(missing: {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected: {extra[:5]}{'...' if len(extra) > 5 else ''})"
        )
    with torch.no_grad():
        for name, param in expected.items():
            param.copy_(weights[name])
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))


# --- the final model -------------------------------------------------------------------------------------
def save_final(model: Any, processor: Any, output_dir: str | os.PathLike) -> None:
    """``save_pretrained`` of model and processor into ``output_dir``, which also holds the logs
    and checkpoints: everything is written to ``.final.tmp`` first and moved in file by file,
    ``config.json`` last (and removed first), so a folder with a ``config.json`` holds a whole model.
    """
    output_dir = Path(output_dir)
    tmp = output_dir / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    umask_modes(tmp)
    (output_dir / "config.json").unlink(missing_ok=True)
    new = {p.name for p in tmp.iterdir()}
    for old in output_dir.glob("model*.safetensors*"):  # shards of an earlier save, if any
        if old.name not in new:
            old.unlink()
    for src in sorted(tmp.iterdir(), key=lambda p: p.name == "config.json"):
        dst = output_dir / src.name
        if dst.is_dir():
            shutil.rmtree(dst)
        os.replace(src, dst)
    tmp.rmdir()
