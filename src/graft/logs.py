"""One log format for graft's terminal output: the CLI and the benchmark scripts."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: int = logging.INFO) -> None:
    """Timestamped ``LEVEL logger: message`` lines on stderr (``logging.basicConfig``): graft's
    own at ``level``, other libraries' (matplotlib's font cache, HTTP clients' requests) only from
    warnings up unless ``level`` is DEBUG."""
    logging.basicConfig(
        level=level if level <= logging.DEBUG else max(level, logging.WARNING),
        format=FORMAT,
        datefmt="%H:%M:%S",
    )
    logging.getLogger("graft").setLevel(level)
