"""Two CPU processes (torchrun, gloo) leave their process group together at exit, and one that
failed leaves at once: its peer, stuck in a collective, is stopped by the launcher, not waited for."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import graft.process_group as process_group

WORKER = """
import sys, time
from pathlib import Path
import torch
from graft.train.distributed import start
from graft.train.distributed_spec import DistributedSpec

state = start(DistributedSpec())
mode, out = sys.argv[1], Path(sys.argv[2])
rank = state.process_index
if mode == "fail":
    if rank == 0:
        raise ValueError("rank 0 failed")
    torch.distributed.all_reduce(torch.ones(1))  # waits for a rank that never comes
elif rank == 0:
    time.sleep(2)  # the other rank reaches its end first
(out / f"rank-{rank}").write_text("done")
"""


def _launch(tmp_path: Path, mode: str) -> tuple[subprocess.CompletedProcess, float]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    began = time.monotonic()
    # its own session, so that a hang is stopped whole: the launcher and both processes
    with subprocess.Popen(
        [*cmd, str(script), mode, str(tmp_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as popen:
        try:
            out, err = popen.communicate(timeout=150)
        except subprocess.TimeoutExpired:
            os.killpg(popen.pid, signal.SIGKILL)
            raise
    proc = subprocess.CompletedProcess(popen.args, popen.returncode, out, err)
    return proc, time.monotonic() - began


def test_processes_leave_together(tmp_path):
    proc, _ = _launch(tmp_path, "ok")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.glob("rank-*")) == ["rank-0", "rank-1"]


def test_a_failed_process_does_not_wait_for_the_others(tmp_path):
    proc, seconds = _launch(tmp_path, "fail")
    assert proc.returncode != 0
    assert "rank 0 failed" in proc.stderr
    assert seconds < process_group.EXIT_WAIT.total_seconds() / 3
    assert not list(tmp_path.glob("rank-*"))


def test_the_exit_is_registered_once(monkeypatch):
    registered = []
    monkeypatch.setattr(process_group, "_registered", [])
    monkeypatch.setattr(process_group.atexit, "register", registered.append)
    process_group.close_at_exit()
    process_group.close_at_exit()
    assert registered == [process_group._close]
