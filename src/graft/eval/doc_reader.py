"""Prompts of task files, and the generic ``jsonl`` reader for a user's own question files.

Templates are Jinja (as in lmms-eval / lm-eval-harness: ``"{{question}}\\nAnswer yes or no."``),
rendered in a sandbox with strict undefined variables, so a record lacking a field the template
uses is an error naming the record's file and line. A prompt places its images by graft's one rule
(``graft.prompts.place_images``: ``{image#k}`` placeholders, else ``<image>`` markers, else the
images first); ``pre_prompt`` goes after the leading images, ``post_prompt`` at the end.

The ``jsonl`` reader reads LLaVA-style question files (a ``.jsonl`` file, or a JSON list; see
``graft.record_files``) whose field names a task file gives: ``doc_to_id``, ``doc_to_visual``,
``doc_to_text``, ``doc_to_target``, ``doc_to_choice``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from graft.eval.readers.base import IMAGE_MARKER, Collector, ReadResult, Sample
from graft.prompts import OPTION_LETTERS, place_images
from graft.record_files import RecordError, check_id, iter_records


@lru_cache(maxsize=1)
def _env() -> Any:
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    # a task file may come from anywhere: its templates cannot reach Python internals
    return ImmutableSandboxedEnvironment(
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False
    )


def compile_template(text: str) -> Any:
    """A Jinja template; raises ``jinja2.TemplateSyntaxError`` on bad syntax (at load time)."""
    return _env().from_string(text)


def render(template: Any, fields: dict[str, Any], where: str, what: str) -> str:
    import jinja2

    try:
        return template.render(**fields)
    except jinja2.UndefinedError as err:
        raise RecordError(
            f"{where}: {what} uses a field the record lacks ({err}); its fields: {sorted(fields)}"
        ) from None
    except jinja2.TemplateError as err:
        raise RecordError(f"{where}: {what} failed: {err}") from None


@dataclass(frozen=True)
class JsonlFields:
    """Where a question file keeps each part of a sample (from a task file)."""

    source: str  # the task file, for messages
    text: Any  # compiled doc_to_text
    target: str | Any  # a field name, or a compiled template
    visual: tuple[str, ...] = ()
    id: str | None = None  # None: "id", else "question_id"
    choices: str | None = None
    image_root: str | None = None
    pre_prompt: str = ""
    post_prompt: str = ""


def _field(record: dict, key: str, where: str, source: str) -> Any:
    if key not in record:
        raise RecordError(f"{where}: missing field {key!r} (named in {source}); its fields: {sorted(record)}")
    return record[key]


def _sample(record: dict, where: str, f: JsonlFields, root: Path, out: Collector) -> Sample:
    id_key = f.id or ("id" if "id" in record else "question_id")
    rid = check_id(_field(record, id_key, where, f.source if f.id else "doc_to_id's default"), where, id_key)
    where = f"{where} (id {rid!r})"
    images: list[Path] = []
    for key in f.visual:
        value = _field(record, key, where, f.source)
        names = [value] if isinstance(value, str) else value
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise RecordError(f"{where}: field {key!r} must be an image path or a list of them")
        images += [out.image(root / name, f"{where}: field {key!r}") for name in names]
    text = render(f.text, record, where, f"doc_to_text of {f.source}")
    prompt, order = place_images(text, len(images), where, IMAGE_MARKER, f.pre_prompt, f.post_prompt)
    if isinstance(f.target, str):
        target = _field(record, f.target, where, f.source)
    else:
        target = render(f.target, record, where, f"doc_to_target of {f.source}")
    meta: dict[str, Any] = {}
    if f.choices is not None:
        choices = _field(record, f.choices, where, f.source)
        if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
            raise RecordError(f"{where}: field {f.choices!r} must be a list of option strings")
        meta["choices"] = choices
        # an option's text as target means its letter
        texts = [c.strip().casefold() for c in choices]
        if isinstance(target, str) and target.strip().casefold() in texts and len(target.strip()) > 1:
            target = OPTION_LETTERS[texts.index(target.strip().casefold())]
        elif isinstance(target, str):
            target = target.strip().upper()
    return Sample(rid, prompt, [images[k] for k in order], target, meta, where)


def read_jsonl_task(
    path: str | os.PathLike, fields: JsonlFields, skip_bad: bool = False, check_images: bool = True
) -> ReadResult:
    """Every record of a question file as a ``Sample``. Image paths are relative to
    ``fields.image_root`` (itself relative to the file's folder; default: that folder); they must
    exist unless ``check_images`` is off (reading to score)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"question file not found: {path}")
    root = path.parent / fields.image_root if fields.image_root else path.parent
    out = Collector(skip_bad, check_images)
    return out.collect(iter_records(path), lambda record, where: _sample(record, where, fields, root, out))
