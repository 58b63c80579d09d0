"""One log format for graft's terminal output: the CLI and the benchmark scripts."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: int = logging.INFO) -> None:
    """Timestamped ``LEVEL logger: message`` lines on stderr (``logging.basicConfig``)."""
    logging.basicConfig(level=level, format=FORMAT, datefmt="%H:%M:%S")
