"""``EvalSettings``: what an evaluation run does, chosen once (``graft eval``, ``graft predict``)
and passed whole through ``run_bench`` -> ``run_task`` -> ``predict_jsonl``, which turns it and a
task's ``generation_kwargs`` into the ``GenerationSettings`` of ``generate_answers``."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from graft.generate import GenerationSettings


@dataclass(frozen=True)
class EvalSettings:
    #: only the first N samples of each task (None: all of them)
    limit: int | None = None
    #: prompts per generation batch
    batch_size: int = 16
    #: longest answer, in tokens (None: the task's ``generation_kwargs``, else
    #: ``GenerationSettings``' default)
    max_new_tokens: int | None = None
    #: skip (and count) bad records instead of stopping at the first
    skip_bad: bool = False
    #: every image replaced by a blank one of the same size in the image processor's mean colour:
    #: the gap to a seeing run is how much the model uses the images
    blind: bool = False
    #: show progress bars
    progress: bool = True
    #: answer the longest prompts first, in batches of like length (``graft.generate.length_order``);
    #: predictions are written in that order, matched to questions by id
    by_length: bool = True

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1 (or None for every sample), got {self.limit}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")

    def replace(self, **changes: Any) -> EvalSettings:
        """A copy with ``changes`` (field names; an unknown one is a TypeError)."""
        return dataclasses.replace(self, **changes)

    def generation_kwargs(self, task: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """A task's ``generation_kwargs`` with this run's ``max_new_tokens`` (when given) on top,
        as a run's results record them."""
        kwargs = dict(task or {})
        if self.max_new_tokens is not None:
            kwargs["max_new_tokens"] = self.max_new_tokens
        return kwargs

    def generation(self, task: Mapping[str, Any] | None = None) -> GenerationSettings:
        """The settings ``generate_answers`` gets for a task with these ``generation_kwargs``."""
        return GenerationSettings(
            batch_size=self.batch_size, by_length=self.by_length, **self.generation_kwargs(task)
        )
