"""Distributed strategies on two CPU processes (torchrun, gloo): DeepSpeed ZeRO-2 / ZeRO-3 and FSDP2
train as DDP does, resume exactly, survive a micro-batch without images on one process, and export
whole weights; FSDP through accelerate on CPU is refused. One launch runs every two-process job
(tests/distributed_worker.py), the other tests run in this process."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from graft.cli import app
from graft.modeling import GraftForConditionalGeneration
from graft.train import load_recipe, recipe_from_dict, train
from graft.train.distributed import DistributedError, check_launch, deepspeed_config, no_device
from graft.train.distributed_spec import DistributedSpec
from graft.train.fsdp import load_settings
from graft.train.recipe import RecipeError

from tiny import tiny_recipe, tiny_world

WORKER = Path(__file__).parent / "distributed_worker.py"
HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
needs_deepspeed = pytest.mark.skipif(
    not HAS_DEEPSPEED, reason="DeepSpeed is not installed (graft[deepspeed])"
)
needs_cpu = pytest.mark.skipif(not no_device(), reason="the refusal is for machines without GPUs")

# name: (strategy, extra recipe keys); resumed runs continue the straight run's step-2 checkpoint
JOBS: dict[str, tuple[str, dict]] = {"ddp": ("ddp", {}), "fsdp2": ("fsdp2", {})}
if HAS_DEEPSPEED:
    JOBS |= {"zero2": ("zero2", {}), "zero3": ("zero3", {})}
    # cached vision features: a text-only micro-batch feeds the connector blank features
    JOBS["zero3-cached"] = ("zero3", {"feature_cache.enabled": True})
if HAS_DEEPSPEED and os.environ.get("GRAFT_TEST_OFFLOAD"):
    # opt-in: DeepSpeedCPUAdam compiles on first use (about 3 minutes on 2 cores, once per machine)
    JOBS["zero3_offload"] = ("zero3_offload", {})
RESUMED = [name for name in ("fsdp2", "zero2", "zero3") if name in JOBS]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, dict[str, list[dict]]]:
    """Every job on the same two processes, one after another: each rank's report per job."""
    root = tmp_path_factory.mktemp("distributed")
    world = tiny_world(root / "world")
    jobs = []
    plan = {name: (strategy, extra) for name, (strategy, extra) in JOBS.items()}
    plan |= {
        f"{n}-resumed": (JOBS[n][0], {"resume": str(root / n / "checkpoints" / "step-2")}) for n in RESUMED
    }
    for name, (strategy, extra) in plan.items():
        raw = tiny_recipe(world, root / name, max_steps=4, save_every=2, grad_accum=1, **extra)
        raw["distributed"] = {"strategy": strategy}
        (root / f"{name}.yaml").write_text(yaml.safe_dump(raw))
        jobs.append({"recipe": str(root / f"{name}.yaml"), "report": str(root / f"{name}-report")})
    (root / "jobs.json").write_text(json.dumps(jobs))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    # a process left waiting in a collective (a hang) fails the test instead of blocking it
    proc = subprocess.run(
        [*cmd, str(WORKER), str(root / "jobs.json")], env=env, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    reports = {
        name: [json.loads((root / f"{name}-report.rank-{r}.json").read_text()) for r in (0, 1)]
        for name in plan
    }
    return root, reports


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def _check_like_ddp(root: Path, reports: dict[str, list[dict]], name: str) -> None:
    ranks, ddp = reports[name], reports["ddp"]
    assert [r["processes"] for r in ranks] == [2, 2]
    # the logged loss is the global one: the same on both ranks, and DDP's
    assert ranks[0]["losses"] == ranks[1]["losses"]
    assert ranks[0]["losses"] == pytest.approx(ddp[0]["losses"], rel=1e-5)
    # a step where one rank had a micro-batch without images and the other had images
    assert any(a != b for a, b in zip(ranks[0]["images"], ranks[1]["images"], strict=True))
    # the exported folder holds whole weights, DDP's up to rounding, and loads as a plain model
    mine, reference = _weights(root / name), _weights(root / "ddp")
    assert mine.keys() == reference.keys()
    assert max((mine[k].float() - reference[k].float()).abs().max().item() for k in mine) < 1e-5
    model = GraftForConditionalGeneration.from_pretrained(root / name)
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for p in GraftForConditionalGeneration.from_pretrained(root / "ddp").parameters()
    )


def _check_exact_resume(reports: dict[str, list[dict]], name: str) -> None:
    straight, resumed = reports[name][0], reports[f"{name}-resumed"][0]
    assert resumed["losses"] == straight["losses"][2:]
    assert resumed["weights_sha256"] == straight["weights_sha256"]


@needs_deepspeed
@pytest.mark.parametrize("name", ["zero2", "zero3", "zero3-cached"])
def test_zero_trains_as_ddp_does(runs, name):
    root, reports = runs
    _check_like_ddp(root, reports, name)


@pytest.mark.skipif("zero3_offload" not in JOBS, reason="opt-in: GRAFT_TEST_OFFLOAD=1 (compiles CPU Adam)")
def test_zero3_offload_trains_as_ddp_does(runs):
    root, reports = runs
    _check_like_ddp(root, reports, "zero3_offload")


@needs_deepspeed
@pytest.mark.parametrize("name", ["zero2", "zero3"])
def test_zero_resumes_exactly_from_its_sharded_checkpoint(runs, name):
    root, reports = runs
    _check_exact_resume(reports, name)
    shards = root / name / "checkpoints" / "step-2" / "deepspeed"
    assert {p.name for p in shards.glob("*optim_states.pt")} == {
        f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)
    }
    if name == "zero3":  # gathered onto the main process only
        assert "weights_sha256" not in reports[name][1]


def test_fsdp2_trains_as_ddp_does_and_resumes_exactly(runs):
    root, reports = runs
    _check_like_ddp(root, reports, "fsdp2")
    _check_exact_resume(reports, "fsdp2")
    shards = root / "fsdp2" / "checkpoints" / "step-2" / "fsdp2"
    assert len(list(shards.glob("*.distcp"))) == 2  # one shard per process


# --- in this process ------------------------------------------------------------------------------------
@needs_cpu
def test_fsdp_through_accelerate_on_cpu_is_refused(tmp_path, monkeypatch):
    # what `accelerate launch --use_fsdp` sets: on CPU accelerate would quietly train plain DDP
    world = tiny_world(tmp_path / "world")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(DistributedError, match="silently train plain DDP"):
        train(recipe_from_dict(tiny_recipe(world, tmp_path / "out")))
    assert not (tmp_path / "out").exists()


def test_a_deepspeed_launch_with_a_ddp_recipe_is_refused(tmp_path, monkeypatch):
    world = tiny_world(tmp_path / "world")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.delenv("GRAFT_DEEPSPEED", raising=False)
    with pytest.raises(DistributedError, match="distributed.strategy"):
        train(recipe_from_dict(tiny_recipe(world, tmp_path / "out")))


def test_an_accelerate_launch_that_started_one_process_of_several_is_refused(tmp_path, monkeypatch):
    # `accelerate launch --cpu --num_processes 2` (or without --multi_gpu on a machine with fewer
    # than two GPUs) runs its simple launcher: one process, MASTER_ADDR set, no WORLD_SIZE
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tiny_world(tmp_path / "world"), tmp_path / "out")))
    result = CliRunner().invoke(app, ["train", str(recipe)])
    assert result.exit_code != 0 and "accelerate launch --multi_gpu" in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()
    monkeypatch.delenv("MASTER_ADDR")  # `accelerate launch` of one process: nothing to refuse
    check_launch(DistributedSpec())


def _recipe(tmp_path: Path, **overrides):
    world = {"vision": "v", "llm": "l", "data": str(tmp_path / "d.json"), "root": str(tmp_path)}
    return recipe_from_dict(tiny_recipe(world, tmp_path / "out", **overrides))


@pytest.mark.parametrize("strategy", ["zero2", "zero3", "zero3_offload"])
def test_the_shipped_deepspeed_configs_are_filled_from_the_recipe(tmp_path, strategy):
    recipe = _recipe(tmp_path, **{"distributed.strategy": strategy, "optim.max_grad_norm": 0.5})
    config = deepspeed_config(recipe, grad_accum=3, num_processes=2, hidden_size=64)
    assert "auto" not in json.dumps(config)
    assert (config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"]) == (2, 3)
    assert config["train_batch_size"] == 2 * 3 * 2
    assert config["gradient_clipping"] == 0.5
    assert config["bf16"]["enabled"] is False and config["fp16"]["enabled"] is False
    zero = config["zero_optimization"]
    assert zero["stage"] == (2 if strategy == "zero2" else 3) and zero["reduce_bucket_size"] == 64 * 64
    if strategy != "zero2":
        assert zero["stage3_gather_16bit_weights_on_model_save"] is True
    offload = {zero.get(k, {}).get("device") for k in ("offload_optimizer", "offload_param")}
    assert offload == ({"cpu"} if strategy == "zero3_offload" else {None})
    bf16 = _recipe(tmp_path, precision="bf16", **{"distributed.strategy": strategy})
    assert deepspeed_config(bf16, 1, 1, 64)["bf16"]["enabled"] is True


def test_a_deepspeed_config_that_contradicts_the_recipe_is_refused(tmp_path):
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps({"train_micro_batch_size_per_gpu": 8, "zero_optimization": {"stage": 2}}))
    recipe = _recipe(tmp_path, **{"distributed.strategy": "zero2", "distributed.config": str(mine)})
    with pytest.raises(DistributedError, match="train_micro_batch_size_per_gpu is 8 but the recipe gives 2"):
        deepspeed_config(recipe, 1, 2, 64)
    mine.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    with pytest.raises(DistributedError, match="stage is 3 but distributed.strategy zero2 is stage 2"):
        deepspeed_config(recipe, 1, 2, 64)
    mine.write_text(json.dumps({"zero_optimization": {"stage": 2, "sub_group_size": "auto"}}))
    with pytest.raises(DistributedError, match="cannot fill"):
        deepspeed_config(recipe, 1, 2, 64)


def test_the_recipe_section_picks_a_strategy(tmp_path):
    assert _recipe(tmp_path).distributed.strategy == "ddp"
    with pytest.raises(RecipeError, match="distributed.strategy must be one of"):
        _recipe(tmp_path, **{"distributed.strategy": "zero4"})
    path = tmp_path / "r.yaml"
    raw = tiny_recipe({"vision": "v", "llm": "l", "data": "d.json", "root": "."}, tmp_path / "out")
    raw["distributed"] = {"strategy": "zero3", "config": "my.json"}
    path.write_text(yaml.safe_dump(raw))
    recipe = load_recipe(path, {"distributed.strategy": "zero2"})
    assert recipe.distributed.strategy == "zero2"
    assert recipe.distributed.config_file() == tmp_path / "my.json"  # relative to the recipe file
    shipped = load_settings(_recipe(tmp_path, **{"distributed.strategy": "fsdp2"}).distributed.config_file())
    assert shipped.vision_tower == "unit" and shipped.reshard_after_forward is True
    (tmp_path / "bad.yaml").write_text("wrap: everything\n")
    with pytest.raises(ValueError, match="unknown FSDP2 settings"):
        load_settings(tmp_path / "bad.yaml")
