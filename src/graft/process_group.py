"""The process group that training and evaluation share when several processes run together
(``torchrun`` or ``accelerate launch``): which backend they talk over, and how they leave it.

Without an accelerator the processes talk over gloo, and a process that exits while its peer
still holds the gloo connection can abort ("terminate called without an active exception"),
which torchrun reports as a failed run although every result was written. ``close_at_exit``
makes the processes leave together: a barrier (gloo's, with a timeout), then the group closed,
before the interpreter tears down.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
from datetime import timedelta

import torch

logger = logging.getLogger(__name__)


def no_device() -> bool:
    """No GPU (or other accelerator) here: processes run on CPU and talk over gloo."""
    current = getattr(torch, "accelerator", None)
    if current is not None and hasattr(current, "current_accelerator"):
        return current.current_accelerator() is None
    return not torch.cuda.is_available()


def multi_cpu() -> bool:
    """Several processes and no accelerator: accelerate runs them together (gloo) only when told
    ``cpu=True``; without it, torchrun's processes would each run alone."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and no_device()


#: how long a process that ended normally waits at exit for the others to end too
EXIT_WAIT = timedelta(minutes=5)
_registered: list[bool] = []


def close_at_exit() -> None:
    """Close the process group when this process exits, after every process has reached its end
    (once per process, however often it is asked)."""
    if not _registered:
        _registered.append(True)
        atexit.register(_close)


def _close() -> None:
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    # only a process that ends normally waits for the others, and never longer than EXIT_WAIT: one
    # that failed (an exception printed, sys.last_value) leaves at once so that the launcher stops
    # the rest, and a peer stuck elsewhere (in a collective the failed one never joins) cannot hang it
    if torch.distributed.get_backend() == "gloo" and getattr(sys, "last_value", None) is None:
        try:
            torch.distributed.monitored_barrier(timeout=EXIT_WAIT)
        except RuntimeError as err:  # a peer gone or late: nothing more to wait for
            logger.debug("no exit barrier: %s", err)
    torch.distributed.destroy_process_group()
