"""Two processes (torchrun, gloo on CPU) through the same ``train()``: the ranks stay in step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tiny import tiny_recipe, tiny_world

WORKER = Path(__file__).parent / "ddp_worker.py"


def _two_processes(tmp_path: Path, name: str, **overrides) -> tuple[Path, list[dict]]:
    """Train the tiny recipe (``overrides`` applied) on two processes; each rank's report."""
    world = tiny_world(tmp_path / "world")
    out = tmp_path / name
    raw = tiny_recipe(world, out, max_steps=3, save_every=3, grad_accum=1, **overrides)
    recipe = tmp_path / f"{name}.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    reports = tmp_path / f"{name}-reports"
    reports.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run(
        [*cmd, str(WORKER), str(recipe), str(reports)], env=env, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, [json.loads((reports / f"rank-{r}.json").read_text()) for r in (0, 1)]


def test_two_processes_end_with_the_same_weights(tmp_path):
    # the cache warm-up is split between the ranks
    out, ranks = _two_processes(tmp_path, "run", **{"feature_cache.enabled": True})
    assert [(r["world_size"], r["processes"]) for r in ranks] == [(2, 2), (2, 2)]
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    # the logged loss is the global one, the same on both ranks, and training moves it
    assert ranks[0]["losses"] == ranks[1]["losses"] and len(set(ranks[0]["losses"])) == 3
    ckpt = out / "checkpoints" / "step-3"
    assert (ckpt / "rank-0.pt").exists() and (ckpt / "rank-1.pt").exists()
    assert (out / "config.json").exists()

    # padding-free batches: the same global losses, the ranks still in step
    _, packed = _two_processes(tmp_path, "packed", **{"feature_cache.enabled": True, "data.packing": True})
    assert packed[0]["weights_sha256"] == packed[1]["weights_sha256"]
    assert packed[0]["losses"] == pytest.approx(ranks[0]["losses"], rel=1e-4)
