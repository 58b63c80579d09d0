"""A pipeline's run folder: one run per folder (``settings.json`` claims it, and a rerun with
other settings is refused) and the wall time of each step, kept so a rerun that reuses a
finished step still reports it. The demo and the ablation share it."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from graft.files import write_text_atomic


class StepClock:
    """Wall time per step, persisted so that a rerun that reuses a step still reports it; each
    step's start and end are told to ``echo`` (the terminal by default)."""

    def __init__(self, path: Path, echo: Callable[[str], Any] = print) -> None:
        self.path, self.echo = path, echo
        self.times: dict[str, float] = json.loads(path.read_text()) if path.exists() else {}
        self.reused: set[str] = set()

    def run(self, name: str, done: Callable[[], bool], work: Callable[[], Any]) -> None:
        """``work`` unless ``done()``. A step done by another run (the demo's world, which the
        ablation shares) is reused too, untimed: redoing it could rewrite that run's files."""
        if done():
            self.reused.add(name)
            when = f"{self.times[name]:.1f}s when it ran" if name in self.times else "made by another run"
            self.echo(f"[{name}] reused ({when})")
            return
        self.echo(f"[{name}] running ...")
        start = time.perf_counter()
        work()
        self.times[name] = round(time.perf_counter() - start, 2)
        write_text_atomic(self.path, json.dumps(self.times, indent=2))
        self.echo(f"[{name}] done in {self.times[name]:.1f}s")


SETTINGS_FILE = "settings.json"


class RunFolderError(ValueError):
    """A run folder made with other settings than the run asks for."""


def check_folder(out: Path, settings: Any) -> dict[str, Any]:
    """A run folder holds one run: a rerun that asks for other settings (a dataclass or a dict)
    than ``out/settings.json`` records is refused, naming them; otherwise its finished steps
    would be reused silently, e.g. a seed-0 model reported for ``--seed 1``. Returns the
    settings as recorded."""
    fields = settings if isinstance(settings, dict) else asdict(settings)
    now = json.loads(json.dumps(fields, default=str))
    path = out / SETTINGS_FILE
    before = json.loads(path.read_text()) if path.exists() else now
    changed = sorted(k for k in now.keys() | before.keys() if now.get(k) != before.get(k))
    if changed:
        was = ", ".join(f"{k}={before.get(k)!r}" for k in changed)
        asked = ", ".join(f"{k}={now.get(k)!r}" for k in changed)
        raise RunFolderError(
            f"{out} holds a run made with {was}; this run asks for {asked}. A rerun reuses the "
            f"finished steps, so give another output folder, or delete {out} to start over"
        )
    return now


def claim_folder(out: Path, settings: Any) -> None:
    """``check_folder``, then record the settings in a new run folder."""
    now = check_folder(out, settings)
    if not (out / SETTINGS_FILE).exists():
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / SETTINGS_FILE, json.dumps(now, indent=2) + "\n")
