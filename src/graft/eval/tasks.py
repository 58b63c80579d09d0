"""Tasks declared in YAML, in lmms-eval's spirit: a reader of records, a prompt, generation
settings and scorers. See docs/tasks.md for the format and a worked example.

The built-in tasks are the files in ``graft/eval/task_files/`` (one per benchmark family); a
user passes the path of their own file wherever a task name goes. A file is checked whole when
it is loaded (unknown keys, readers, metrics, bad templates or generation settings raise
``TaskFileError`` naming the file and the key), so a run never fails half-way on its task file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from graft.eval.doc_reader import JsonlFields, read_jsonl_task, render
from graft.eval.families import FAMILIES, METRICS, Options, answers, check_sample
from graft.eval.readers import IMAGE_MARKER, ReadResult, Sample
from graft.eval.readers.base import Collector, first_samples
from graft.eval.task_keys import TaskFileError, task_fields
from graft.prompts import place_images

__all__ = ["TaskFileError", "TaskSpec", "builtin_tasks", "get_task", "load_task_file", "parse_task"]


@dataclass(frozen=True)
class TaskSpec:
    """One task, as loaded from its file."""

    name: str
    reader: str  # a family name (graft.eval.families) or "jsonl"
    source: str  # the task file, for messages
    metrics: tuple[str, ...]  # simple metrics (graft.eval.families.METRICS)
    family: str | None = None  # the family scorer, when the metric list names one
    aliases: tuple[str, ...] = ()
    dataset_path: Path | None = None
    reader_kwargs: Mapping[str, Any] = field(default_factory=dict)
    text: Any = None  # compiled doc_to_text; None keeps the reader's prompt
    pre_prompt: str = ""
    post_prompt: str = ""
    fields: JsonlFields | None = None  # the jsonl reader's field names
    generation: Mapping[str, Any] = field(default_factory=dict)
    file: Path | None = None  # the user's task file (absolute); None for a packaged one

    @property
    def needs_judge(self) -> bool:
        return self.family is not None and FAMILIES[self.family].needs_judge

    def data_path(self, data: str | os.PathLike | None) -> Path:
        if data is not None:
            return Path(data)
        if self.dataset_path is None:
            raise ValueError(f"task {self.name!r} has no dataset_path ({self.source}): give the data path")
        return self.dataset_path

    def read(
        self, data: str | os.PathLike | None = None, skip_bad: bool = False, check_images: bool = True
    ) -> ReadResult:
        """The task's samples with their final prompts; bad records raise ``RecordError``, or
        with ``skip_bad`` are counted in ``ReadResult.bad``. ``check_images=False`` reads for
        scoring: no image is looked for, a missing one is no error."""
        path = self.data_path(data)
        if self.fields is not None:  # a jsonl task: its prompts are rendered as it reads
            read = read_jsonl_task(path, self.fields, skip_bad, check_images)
        else:
            reader = FAMILIES[self.reader].read
            read = reader(path, skip_bad=skip_bad, check_images=check_images, **self.reader_kwargs)
        reprompt = self.text is not None or self.pre_prompt or self.post_prompt
        if not reprompt and not self.metrics:
            return read
        out = Collector(skip_bad)
        out.result.bad = list(read.bad)

        def checked(s: Sample, where: str) -> Sample:
            s = self._reprompt(s) if reprompt else s
            check_sample(list(self.metrics), s)
            return s

        return out.collect(((s, s.where) for s in read.samples), checked)

    def first(self, read: ReadResult, limit: int) -> ReadResult:
        """The first ``limit`` samples of ``read``: from every subtask in turn where the family
        has them (``Family.limit_by``: MME's subtasks, DEMON's tasks), else in the data's order."""
        family = FAMILIES.get(self.reader) if self.fields is None else None
        group, unit = (family and family.limit_by) or (None, None)
        return ReadResult(first_samples(read.samples, limit, group, unit), read.bad)

    def _reprompt(self, s: Sample) -> Sample:
        text = s.prompt
        if self.text is not None:
            fields = {**s.meta, "prompt": s.prompt, "id": s.id}
            text = render(self.text, fields, s.where, f"doc_to_text of {self.source}")
        prompt, order = place_images(
            text, len(s.images), s.where, IMAGE_MARKER, self.pre_prompt, self.post_prompt
        )
        return Sample(s.id, prompt, [s.images[k] for k in order], s.target, s.meta, s.where)

    def score(
        self, data: ReadResult, preds: Mapping[str, str], opts: Options, counts: dict
    ) -> dict[str, Any]:
        """Metrics of ``preds`` (id as a string -> answer) on samples this task read."""
        family = FAMILIES.get(self.reader)
        if family is not None and family.match_ids is not None:
            preds = family.match_ids(preds, [str(s.id) for s in data.samples])
        got = answers(data.samples, preds, counts)
        out = FAMILIES[self.family].score(data.samples, got, opts) if self.family is not None else {}
        for name in self.metrics:
            out[name] = METRICS[name].score(data.samples, got, opts)
        return out


def parse_task(raw: Any, source: str, folder: Path | None = None) -> TaskSpec:
    """A task from a YAML document's contents; ``folder`` resolves a relative ``dataset_path``."""
    return TaskSpec(**task_fields(raw, source, folder))


def _load(text: str, source: str, folder: Path | None = None) -> TaskSpec:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise TaskFileError(f"{source}: not valid YAML ({err})") from None
    return parse_task(raw, source, folder)


def load_task_file(path: str | os.PathLike) -> TaskSpec:
    """A user's task file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"task file not found: {path}")
    return replace(
        _load(path.read_text(encoding="utf-8"), str(path), path.parent.resolve()), file=path.resolve()
    )


@lru_cache(maxsize=1)
def builtin_tasks() -> tuple[dict[str, TaskSpec], dict[str, str]]:
    """The packaged task files: name -> task, and alias -> name."""
    tasks: dict[str, TaskSpec] = {}
    aliases: dict[str, str] = {}
    folder = resources.files("graft.eval") / "task_files"
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith((".yaml", ".yml")):
            continue
        source = f"graft/eval/task_files/{entry.name}"
        spec = _load(entry.read_text(encoding="utf-8"), source)
        for name in (spec.name, *spec.aliases):
            if name in tasks or name in aliases:
                raise TaskFileError(f"{source}: task name or alias {name!r} is used twice")
        tasks[spec.name] = spec
        aliases.update({a: spec.name for a in spec.aliases})
    return tasks, aliases


def get_task(task: str | os.PathLike | TaskSpec, base: str | os.PathLike | None = None) -> TaskSpec:
    """A built-in task by name or alias, or a task file by path (relative to ``base`` if given)."""
    if isinstance(task, TaskSpec):
        return task
    if isinstance(task, os.PathLike) or task.endswith((".yaml", ".yml")):
        path = Path(task).expanduser()
        return load_task_file(Path(base) / path if base is not None and not path.is_absolute() else path)
    tasks, aliases = builtin_tasks()
    name = aliases.get(task, task)
    if name not in tasks:
        raise ValueError(
            f"unknown task {task!r}; known: {sorted(tasks)} (aliases {sorted(aliases)}), "
            "or a task file (.yaml)"
        )
    return tasks[name]
