"""``graft <verb>``: one thin entry point. Each verb parses its options and calls the library.

Heavy imports (torch, transformers) happen inside the verbs so ``graft --help`` is instant.
"""

from graft.cli import (  # noqa: F401  (each registers its verbs)
    ablation,
    adapt,
    blip2,
    demo,
    expert,
    gen_data,
    gguf,
    inference,
    inspect,
    mix,
    models,
    pairs,
    plan,
    report,
    score,
    serve,
    world,
)
from graft.cli.app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
