"""Training metrics to the console (logging), ``<output_dir>/log.jsonl`` and, when the
``tensorboard`` package is installed, TensorBoard (``<output_dir>/tensorboard``).

Only the main process writes; the others get a logger that does nothing.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from graft.files import write_text_atomic

logger = logging.getLogger(__name__)

LOG_FILE = "log.jsonl"


def _tensorboard_writer(directory: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(log_dir=str(directory))


def _cut_after(path: Path, step: int) -> None:
    """Keep the log's lines up to ``step`` (and any line without a step); a torn line goes too."""
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict) or not isinstance(record.get("step"), int) or record["step"] <= step:
            kept.append(line + "\n")
    write_text_atomic(path, "".join(kept))


class MetricsLogger:
    def __init__(
        self,
        output_dir: str | os.PathLike,
        enabled: bool = True,
        tensorboard: bool = True,
        after_step: int | None = None,
    ) -> None:
        """``after_step``: a run resumed from that step's checkpoint; the log's lines of later
        steps (logged before the run stopped, and about to be run again) are cut."""
        self.enabled = enabled
        self.path = Path(output_dir) / LOG_FILE
        self._file = None
        self._tb = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if after_step is not None and self.path.is_file():
                _cut_after(self.path, after_step)
            # append: a resumed run continues the same log
            self._file = self.path.open("a", encoding="utf-8")
            if tensorboard:
                self._tb = _tensorboard_writer(Path(output_dir) / "tensorboard")

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **metrics}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        logger.info("step %d  %s", step, "  ".join(f"{k} {_fmt(v)}" for k, v in metrics.items()))
        if self._tb is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


class StepWindow:
    """Sums step statistics between two log lines and turns them into one record:
    mean loss, learning rates, samples/s and tokens/s over the window."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.steps, self.loss, self.samples, self.tokens = 0, 0.0, 0.0, 0.0
        self.start = time.perf_counter()

    def add(self, stats: dict[str, Any]) -> None:
        self.steps += 1
        self.loss += stats["loss"]
        self.samples += stats["samples"]
        self.tokens += stats["tokens"]
        self.last = stats

    def record(self, **extra: Any) -> dict[str, Any]:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        lrs = self.last["lrs"]
        out = {
            "loss": self.loss / max(self.steps, 1),
            "lr": next(iter(lrs.values())),
            "samples_per_s": self.samples / elapsed,
            "tokens_per_s": self.tokens / elapsed,
            **extra,
        }
        out.update({f"lr/{name}": lr for name, lr in lrs.items()})
        if "grad_norm" in self.last:
            out["grad_norm"] = self.last["grad_norm"]
        self.reset()
        return out


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def read_log(output_dir: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(output_dir) / LOG_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
