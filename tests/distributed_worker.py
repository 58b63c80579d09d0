"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node 2``: train several recipes one
after the other in the same processes (a DDP reference, ZeRO-2, ZeRO-3, FSDP2, resumed runs) and
write what each rank saw: the losses, whether each micro-batch held images, a hash of the weights."""

from __future__ import annotations

import hashlib
import importlib
import json
import sys
from pathlib import Path

import torch

import graft.train.loop as loop
from graft.train import load_recipe, train


def _skip_deepspeed_shm_build() -> None:
    """DeepSpeed's CPU backend compiles a shared-memory all-reduce at start-up (about 40 s and a C++
    compiler, once per machine); only its inference all-reduce uses it, never training."""
    try:
        ds_torch = importlib.import_module("deepspeed.comm.torch")  # not `import as`: that finds torch
    except ImportError:
        return
    ds_torch.build_shm_op = lambda: None


def main(jobs_file: str) -> None:
    torch.set_num_threads(1)
    _skip_deepspeed_shm_build()
    seen: list[bool] = []
    model_inputs = loop.model_inputs

    def recording(batch, cache, device):  # which micro-batches held images, on this rank
        inputs = model_inputs(batch, cache, device)
        if inputs is not None:
            seen.append("pixel_values" in inputs or "vision_features" in inputs)
        return inputs

    loop.model_inputs = recording
    for job in json.loads(Path(jobs_file).read_text()):
        seen.clear()
        result = train(load_recipe(job["recipe"]))
        rank = torch.distributed.get_rank()
        report = {"losses": result.losses, "images": list(seen), "processes": result.processes}
        if result.model is not None:
            digest = hashlib.sha256()
            for name, tensor in sorted(result.model.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
            report["weights_sha256"] = digest.hexdigest()
        Path(job["report"] + f".rank-{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
