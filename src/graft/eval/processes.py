"""What the runner needs to split a task's samples across processes (``accelerate launch`` or
``torchrun``): steps that fail on every process when they fail on one, and the merge of the
per-process prediction files.

Each process answers its share into ``predictions.rank-{r}.jsonl``; the main process appends
their rows to ``predictions.jsonl`` (ids it already holds are skipped) and only then removes
them, so a run killed at any moment, with any number of processes, resumes without losing or
repeating an answer.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from accelerate import PartialState
from accelerate.utils import gather_object

from graft.eval.predict import done_ids
from graft.process_group import close_at_exit, multi_cpu
from graft.record_files import RecordError

logger = logging.getLogger(__name__)
T = TypeVar("T")
# errors of the data or the setup; any other exception ends the process (and the launcher the rest)
EXPECTED = (RecordError, FileNotFoundError, ValueError, KeyError)


def process_state() -> PartialState:
    """accelerate's view of the processes. Several processes and no accelerator run together
    (gloo) only when accelerate is told ``cpu=True``; without it, torchrun's processes would each
    answer everything alone. Several processes leave together at exit (``close_at_exit``)."""
    state = PartialState(cpu=multi_cpu())
    if state.num_processes > 1:
        close_at_exit()
    return state


class OtherProcessError(ValueError):
    """Another process failed a step this one passed; the message is that process's error."""


def step(state: PartialState, fn: Callable[[], T], who: str = "all") -> T | None:
    """``fn()`` on the processes ``who`` names (all | main | others); a failure on any of them is
    raised on every process, so they stay in step when the caller carries on (``run_bench``)."""
    runs = who == "all" or (who == "main") == state.is_main_process
    value, error = None, None
    if runs:
        try:
            value = fn()
        except EXPECTED as err:
            error = err
    if state.num_processes > 1:
        said = gather_object([None if error is None else f"{type(error).__name__}: {error}"])
        failed = [(rank, message) for rank, message in enumerate(said) if message is not None]
        if failed and error is None:
            raise OtherProcessError(f"process {failed[0][0]}: {failed[0][1]}")
    if error is not None:
        raise error
    return value


def from_main(state: PartialState, value: Any) -> Any:
    """The main process's ``value`` on every process."""
    return value if state.num_processes == 1 else gather_object([value])[0]


def shard_path(predictions: Path, rank: int) -> Path:
    return predictions.with_name(f"{predictions.stem}.rank-{rank}{predictions.suffix}")


def merge_shards(predictions: Path) -> int:
    """Append the rows of the per-process files that ``predictions`` lacks, then remove those
    files; returns how many rows were added."""
    shards = sorted(predictions.parent.glob(f"{predictions.stem}.rank-*{predictions.suffix}"))
    if not shards:
        return 0
    have = done_ids(predictions)  # also cuts a half-written last line
    lines = []
    for shard in shards:
        done_ids(shard)  # cuts a half-written last line
        for line in shard.read_text(encoding="utf-8").splitlines():
            if line.strip() and (rid := json.loads(line)["id"]) not in have:
                have.add(rid)
                lines.append(line + "\n")
    with predictions.open("a", encoding="utf-8") as out:
        out.write("".join(lines))
        out.flush()
        os.fsync(out.fileno())
    for shard in shards:  # only once their rows are safely in the merged file
        shard.unlink()
    if lines:
        logger.info("%s: merged %d answers from %d process file(s)", predictions, len(lines), len(shards))
    return len(lines)
