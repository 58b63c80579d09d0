"""Two processes (torchrun, gloo on CPU) through the same ``train()``: the ranks stay in step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from tiny import tiny_recipe, tiny_world

WORKER = Path(__file__).parent / "ddp_worker.py"


def test_two_processes_end_with_the_same_weights(tmp_path):
    world = tiny_world(tmp_path / "world")
    out = tmp_path / "run"
    raw = tiny_recipe(
        world,
        out,
        max_steps=3,
        save_every=3,
        grad_accum=1,
        **{"feature_cache.enabled": True},  # the cache warm-up is split between the ranks
    )
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    reports = tmp_path / "reports"
    reports.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run(
        [*cmd, str(WORKER), str(recipe), str(reports)], env=env, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-4000:]

    ranks = [json.loads((reports / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [(r["world_size"], r["processes"]) for r in ranks] == [(2, 2), (2, 2)]
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    # the logged loss is the global one, the same on both ranks, and training moves it
    assert ranks[0]["losses"] == ranks[1]["losses"] and len(set(ranks[0]["losses"])) == 3
    ckpt = out / "checkpoints" / "step-3"
    assert (ckpt / "rank-0.pt").exists() and (ckpt / "rank-1.pt").exists()
    assert (out / "config.json").exists()
