"""graft as a wheel: built from a copy of the sources, installed into a fresh virtual environment,
run from a folder outside the source tree: the smoke demo, then ``graft eval`` on its model.

Offline: the wheel is built without build isolation (setuptools from this environment) and
installed with ``--no-deps``; the fresh environment sees the dependencies through a ``.pth``
file naming this environment's site-packages folders (``.pth`` files inside those are not
read, so an editable graft there stays invisible)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tiny import SMOKE_DEMO

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str | Path], cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"{args}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def _build_wheel(tmp: Path) -> Path:
    source = tmp / "source"
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    _run([*pip, *"wheel -q --no-deps --no-build-isolation --no-index -w".split(), tmp / "dist", source], tmp)
    (wheel,) = (tmp / "dist").glob("graft-*.whl")
    return wheel


def _fresh_venv(tmp: Path, wheel: Path) -> Path:
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], tmp)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp).strip()
    deps = sorted({p for p in sys.path if Path(p).name in ("site-packages", "dist-packages")})
    Path(site, "graft_test_deps.pth").write_text("\n".join(deps) + "\n")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--python", python]
    _run([*pip, "install", "-q", "--no-deps", "--no-index", wheel], tmp)
    return python


def test_wheel_installs_and_runs_the_smoke_demo_outside_the_source_tree(tmp_path):
    wheel = _build_wheel(tmp_path)
    python = _fresh_venv(tmp_path, wheel)
    graft = python.with_name("graft.exe" if os.name == "nt" else "graft")
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")

    probe = (
        "import graft, graft.train.shipped as s, graft.world.pretrain as p; print(graft.__file__); "
        "print(s.recipe_names()); print(sorted(f.name for f in p.PACKAGED_VISION.iterdir()))"
    )
    where = _run([python, "-c", probe], work, env).splitlines()
    assert Path(where[0]).is_relative_to(tmp_path / "venv"), where  # the wheel's graft, not the checkout's
    assert "shapes-tiny-stage1" in where[1] and "llava-1.5-7b-stage1" in where[1]
    assert "model.safetensors" in where[2] and "config.json" in where[2]  # the packaged vision tower

    _run([graft, "-q", "demo", "--out", "demo", *SMOKE_DEMO], work, env)
    summary = json.loads((work / "demo" / "summary.json").read_text())
    assert 0.0 <= summary["binary/accuracy"] <= 1.0
    pope = work / "demo" / "world" / "bench" / "pope"
    _run(
        [graft, *"-q eval --model demo/stage2 --out eval --limit 4 --task".split(), f"pope={pope}"], work, env
    )
    results = json.loads((work / "eval" / "pope" / "results.json").read_text())
    assert results["metrics"]["counts"]["samples"] == 4
