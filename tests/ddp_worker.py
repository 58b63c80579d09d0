"""Run by tests/test_ddp.py under ``torchrun --nproc_per_node 2``: train a recipe through the same
``train()`` and dump what this rank ended with (a hash of every weight, the losses) to a file."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

from graft.train import load_recipe, train


def main(recipe_path: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    result = train(load_recipe(recipe_path))
    digest = hashlib.sha256()
    for name, tensor in sorted(result.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    report = {
        "rank": rank,
        "world_size": world,
        "processes": result.processes,  # as train() saw them
        "weights_sha256": digest.hexdigest(),
        "losses": result.losses,
    }
    (Path(out_dir) / f"rank-{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(*sys.argv[1:3])
