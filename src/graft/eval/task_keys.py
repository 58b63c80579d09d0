"""The keys of a task file, each read and checked on its own and put together by ``task_fields``
(``graft.eval.tasks`` makes them a ``TaskSpec``). Every error is a ``TaskFileError`` naming the
file and the key."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

from graft.eval.doc_reader import JsonlFields, compile_template
from graft.eval.families import FAMILIES, METRICS
from graft.generate import GenerationSettings

KEYS = {
    "task", "aliases", "dataset_path", "reader", "reader_kwargs", "doc_to_id", "doc_to_visual",
    "doc_to_text", "doc_to_target", "doc_to_choice", "image_root", "pre_prompt", "post_prompt",
    "lmms_eval_specific_kwargs", "generation_kwargs", "metric_list", "metadata",
}  # fmt: skip
JSONL_ONLY = ("doc_to_id", "doc_to_visual", "doc_to_target", "doc_to_choice", "image_root")
#: the ``GenerationSettings`` fields a task file may set, and their types
GENERATION = {"max_new_tokens": int, "do_sample": bool, "temperature": float, "top_p": float, "seed": int}
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class TaskFileError(ValueError):
    """A task file that cannot work; the message names the file and the key."""


def key_error(source: str, key: str, message: str) -> TaskFileError:
    return TaskFileError(f"{source}: {key}: {message}")


def get_str(raw: dict, key: str, source: str, default: str | None = None) -> str | None:
    value = raw.get(key, default)
    if value is not None and not isinstance(value, str):
        raise key_error(source, key, f"must be a string, got {value!r:.80}")
    return value


def get_template(raw: dict, key: str, source: str) -> Any:
    import jinja2

    text = get_str(raw, key, source)
    if text is None:
        return None
    try:
        return compile_template(text)
    except jinja2.TemplateSyntaxError as err:
        raise key_error(source, key, f"bad template ({err.message}, line {err.lineno})") from None


def get_metrics(raw: dict, reader: str, source: str) -> tuple[str | None, tuple[str, ...]]:
    entries = raw.get("metric_list")
    if not isinstance(entries, list) or not entries:
        raise key_error(source, "metric_list", "must be a non-empty list of {metric: NAME}")
    family, simple = None, []
    for i, entry in enumerate(entries):
        where = f"metric_list[{i}]"
        if isinstance(entry, dict):
            unknown = set(entry) - {"metric"}
            if unknown:
                raise key_error(
                    source, where, f"unknown key(s) {sorted(unknown)}; an entry is {{metric: NAME}}"
                )
            entry = entry.get("metric")
        if not isinstance(entry, str):
            raise key_error(source, where, "must be a metric name or {metric: NAME}")
        if entry in FAMILIES:
            if entry != reader:
                raise key_error(
                    source,
                    where,
                    f"{entry!r} is the scorer of the {entry} benchmark and needs reader: {entry} "
                    f"(this file has reader: {reader}); simple metrics: {sorted(METRICS)}",
                )
            if family is not None:
                raise key_error(source, where, f"a second family scorer ({family!r} is listed already)")
            family = entry
        elif entry in METRICS:
            if entry in simple:
                raise key_error(source, where, f"metric {entry!r} listed twice")
            simple.append(entry)
        else:
            raise key_error(
                source,
                where,
                f"unknown metric {entry!r}; simple: {sorted(METRICS)}, family: {sorted(FAMILIES)}",
            )
    return family, tuple(simple)


def get_generation(raw: dict, source: str) -> dict[str, Any]:
    gen = raw.get("generation_kwargs") or {}
    if not isinstance(gen, dict):
        raise key_error(source, "generation_kwargs", "must be a mapping")
    out: dict[str, Any] = {}
    for key, value in gen.items():
        where = f"generation_kwargs.{key}"
        if key == "num_beams":
            # graft generates greedily or by sampling, batched; beam search is not offered
            if value != 1:
                raise key_error(source, where, "only 1 is supported (greedy or sampled generation)")
            continue
        if key == "until":
            raise key_error(source, where, "not supported: answers end at EOS or the template's stop string")
        if key not in GENERATION:
            raise key_error(source, where, f"unknown setting; known: {sorted([*GENERATION, 'num_beams'])}")
        kind = GENERATION[key]
        ok = isinstance(value, (int, float)) if kind is float else isinstance(value, kind)
        if not ok or (kind is not bool and isinstance(value, bool)):
            raise key_error(source, where, f"must be {kind.__name__}, got {value!r}")
        if key == "max_new_tokens" and value < 1:
            raise key_error(source, where, "must be at least 1")
        out[key] = float(value) if kind is float else value
    out.setdefault("max_new_tokens", GenerationSettings.max_new_tokens)  # one home: GenerationSettings
    return out


def get_prompts(raw: dict, source: str) -> tuple[str, str]:
    pre, post = get_str(raw, "pre_prompt", source, ""), get_str(raw, "post_prompt", source, "")
    lmms = raw.get("lmms_eval_specific_kwargs")
    if lmms is not None:
        key = "lmms_eval_specific_kwargs"
        if "pre_prompt" in raw or "post_prompt" in raw:
            raise key_error(source, key, "give pre_prompt/post_prompt here or at the top, not both")
        if not isinstance(lmms, dict) or set(lmms) != {"default"} or not isinstance(lmms["default"], dict):
            raise key_error(source, key, "must be {default: {pre_prompt: ..., post_prompt: ...}}")
        unknown = set(lmms["default"]) - {"pre_prompt", "post_prompt"}
        if unknown:
            raise key_error(source, f"{key}.default", f"unknown key(s) {sorted(unknown)}")
        pre = get_str(lmms["default"], "pre_prompt", f"{source}: {key}.default", "")
        post = get_str(lmms["default"], "post_prompt", f"{source}: {key}.default", "")
    return pre or "", post or ""


def get_reader_kwargs(raw: dict, reader: str, source: str) -> dict[str, Any]:
    kwargs = raw.get("reader_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise key_error(source, "reader_kwargs", "must be a mapping")
    if kwargs and reader == "jsonl":
        raise key_error(
            source, "reader_kwargs", "the jsonl reader takes doc_to_* keys and image_root instead"
        )
    params = list(inspect.signature(FAMILIES[reader].read).parameters)[1:] if reader != "jsonl" else []
    allowed = [p for p in params if p not in ("skip_bad", "check_images")]  # the caller's, not the file's
    for key in kwargs:
        if key not in allowed:
            raise key_error(source, f"reader_kwargs.{key}", f"reader {reader} takes {allowed}")
    return dict(kwargs)


def get_jsonl_fields(raw: dict, source: str, text: Any, pre: str, post: str) -> JsonlFields:
    if text is None:
        raise key_error(
            source, "doc_to_text", "the jsonl reader needs a prompt template, e.g. '{{question}}'"
        )
    target = get_str(raw, "doc_to_target", source)
    if target is None:
        raise key_error(source, "doc_to_target", "the jsonl reader needs the field holding the answer")
    visual = raw.get("doc_to_visual", [])
    visual = [visual] if isinstance(visual, str) else visual
    if not isinstance(visual, list) or not all(isinstance(v, str) for v in visual):
        raise key_error(source, "doc_to_visual", "must be a field name or a list of field names")
    return JsonlFields(
        source=source,
        text=text,
        # a template (Jinja syntax) or else the name of the field holding the answer
        target=get_template(raw, "doc_to_target", source) if "{{" in target or "{%" in target else target,
        visual=tuple(visual),
        id=get_str(raw, "doc_to_id", source),
        choices=get_str(raw, "doc_to_choice", source),
        image_root=get_str(raw, "image_root", source),
        pre_prompt=pre,
        post_prompt=post,
    )


def task_fields(raw: Any, source: str, folder: Path | None) -> dict[str, Any]:
    """``TaskSpec``'s fields from a YAML document's contents; ``folder`` resolves a relative
    ``dataset_path``."""
    if not isinstance(raw, dict):
        raise TaskFileError(f"{source}: expected a mapping of task keys, got {type(raw).__name__}")
    unknown = sorted(set(raw) - KEYS)
    if unknown:
        raise key_error(source, unknown[0], f"unknown key; known keys: {sorted(KEYS)}")
    name = get_str(raw, "task", source)
    if not name or not NAME.match(name):
        raise key_error(
            source, "task", "needs a name of letters, digits, '_', '-' or '.' (it names the run folder)"
        )
    reader = get_str(raw, "reader", source)
    if reader not in (*FAMILIES, "jsonl"):
        raise key_error(source, "reader", f"unknown reader {reader!r}; one of {sorted([*FAMILIES, 'jsonl'])}")
    jsonl = reader == "jsonl"
    misplaced = [] if jsonl else [k for k in JSONL_ONLY if k in raw]
    if misplaced:
        raise key_error(
            source, misplaced[0], f"only for reader: jsonl (reader {reader} finds its own fields)"
        )
    aliases = raw.get("aliases") or []
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise key_error(source, "aliases", "must be a list of names")
    dataset = get_str(raw, "dataset_path", source)
    dataset_path = Path(dataset).expanduser() if dataset is not None else None
    if dataset_path is not None and not dataset_path.is_absolute() and folder is not None:
        dataset_path = folder / dataset_path
    family, metrics = get_metrics(raw, reader, source)
    text = get_template(raw, "doc_to_text", source)
    pre, post = get_prompts(raw, source)
    return dict(
        name=name,
        reader=reader,
        source=source,
        metrics=metrics,
        family=family,
        aliases=tuple(aliases),
        dataset_path=dataset_path,
        reader_kwargs=get_reader_kwargs(raw, reader, source),
        text=None if jsonl else text,
        pre_prompt="" if jsonl else pre,
        post_prompt="" if jsonl else post,
        fields=get_jsonl_fields(raw, source, text, pre, post) if jsonl else None,
        generation=get_generation(raw, source),
    )
