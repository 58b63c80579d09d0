"""``graft <verb>``: one thin entry point. Each verb parses its options and calls the library.

Heavy imports (torch, transformers) happen inside the verbs so ``graft --help`` is instant.
"""

from graft.cli import ablation, blip2, demo, gguf, inference, inspect, models, pairs, report, score, world  # noqa: F401  (each registers its verbs)
from graft.cli.app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
