"""DEMON (Cheetah's demonstrative-instruction benchmark): ``{task}/core/core.json`` + ``images/``.

``core.json`` = ``{"metadata": {"dataset", "split", "num_sample", "task_instruction": [...],
"question_type": "open-ended" | "multi-choice"}, "data": [{"sample_id", "task_instruction_id",
"task_instance": {"context", "images_path", "choice_list"?}, "response"}]}``. In the context,
``{image#k}`` and ``{table#k}`` (tables ship as pictures) stand for ``images_path[k-1]``; the
prompt is the task instruction, then the context with each placeholder replaced by an image
marker. A benchmark root holds task folders either directly (``root/{task}/core``) or under
category folders (``root/{category}/{task}/core``), as the public release does.

Sample ids are ``"{task}/{sample_id}"`` so predictions of many tasks can share one file.
"""

from __future__ import annotations

import ast
import logging
import os
import re
from pathlib import Path

from graft.eval.readers.base import IMAGE_MARKER, Collector, ReadResult, Sample, need
from graft.prompts import place_images
from graft.record_files import RecordError, iter_objects, load_json

logger = logging.getLogger(__name__)

# The 29 DEMON-Core tasks by category, as the benchmark's scripts list them (Cheetah, ICLR 2024).
CATEGORIES: dict[str, list[str]] = {
    "Multimodal Dialogue": ["MMCoQA", "ALFRED"],
    "Visual Storytelling": ["AESOP", "DiDeMoSV", "FlintstonesSV", "PororoSV", "VIST"],
    "Visual Relation Inference": ["IEdit", "Spot-the-Diff", "Birds-to-Words", "CLEVR-Change"],
    "Multimodal Cloze": ["COMICS_Dialogue", "COMICS_Panel", "RecipeQA_VisualCloze", "RecipeQA_TextCloze"],
    "Knowledge Grounded QA": ["WebQA", "TQA", "MultiModalQA"],
    "Text-Rich Images QA": ["SlideVQA", "OCR-VQA", "DocVQA"],
    "Multi-Image Reasoning": [
        "Fashion200K", "NLVR2", "nuScenes", "VizWiz", "MIT-States_StateCoherence",
        "MIT-States_PropertyCoherence", "VISION", "RecipeQA_ImageCoherence",
    ],
}  # fmt: skip
TASK_CATEGORY = {task: cat for cat, tasks in CATEGORIES.items() for task in tasks}
# categories scored by ROUGE-L; the other four by accuracy
OPEN_ENDED_CATEGORIES = {"Multimodal Dialogue", "Visual Storytelling", "Visual Relation Inference"}
# tasks whose options are images, answered by naming "Image X" (also any task whose options all
# read "Image X")
IMAGE_CHOICE_TASKS = {"RecipeQA_VisualCloze", "RecipeQA_ImageCoherence", "COMICS_Panel"}
QUESTION_TYPES = ("open-ended", "multi-choice")
_CHOICE_LIST = re.compile(r"Choice List:\s*(\[.*?\])", re.S)
_IMAGE_OPTION = re.compile(r"^\s*image [a-z]\s*$", re.I)


def canonical_task(name: str) -> str:
    """The benchmark's spelling of a task name (folders differ in case: ``nuscenes``)."""
    lowered = {t.lower(): t for t in TASK_CATEGORY}
    return lowered.get(name.lower(), name)


def find_tasks(root: str | os.PathLike) -> dict[str, Path]:
    """Task name -> task folder, for ``root`` itself or the task folders one or two levels below."""
    root = Path(root)
    if (root / "core" / "core.json").is_file():
        return {canonical_task(root.name): root}
    found: dict[str, Path] = {}
    for core in sorted([*root.glob("*/core/core.json"), *root.glob("*/*/core/core.json")]):
        task_dir = core.parent.parent
        name = canonical_task(task_dir.name)
        if name in found:
            raise RecordError(f"{root}: task {name!r} found twice: {found[name]} and {task_dir}")
        found[name] = task_dir
    if not found:
        raise FileNotFoundError(f"{root}: no DEMON task (no {{task}}/core/core.json below it)")
    return found


def task_kind(task: str, metadata: dict, data: list, where: str) -> str:
    """open-ended | multi-choice | image-choice. An empty question_type (ALFRED ships one) is
    inferred from the task's category, else from whether samples carry a choice list."""
    qtype = metadata.get("question_type") or ""
    if qtype and qtype not in QUESTION_TYPES:
        raise RecordError(f"{where}: metadata.question_type {qtype!r} is not one of {QUESTION_TYPES}")
    if not qtype:
        if task in TASK_CATEGORY:
            qtype = "open-ended" if TASK_CATEGORY[task] in OPEN_ENDED_CATEGORIES else "multi-choice"
        else:
            with_choices = [isinstance(d, dict) and "choice_list" in d.get("task_instance", {}) for d in data]
            qtype = "multi-choice" if with_choices and all(with_choices) else "open-ended"
        logger.warning("%s: empty metadata.question_type; treating task %s as %s", where, task, qtype)
    if qtype == "multi-choice" and (task in IMAGE_CHOICE_TASKS or _all_image_options(data)):
        return "image-choice"
    return qtype


def _all_image_options(data: list) -> bool:
    """Whether every sample's options are "Image X" (a task of one's own naming images)."""
    lists = [d.get("task_instance", {}).get("choice_list") if isinstance(d, dict) else None for d in data]
    return bool(lists) and all(
        isinstance(options, list)
        and options
        and all(isinstance(o, str) and _IMAGE_OPTION.match(o) for o in options)
        for options in lists
    )


def _choices(instance: dict, context: str, where: str) -> list[str]:
    if "choice_list" in instance:
        choices = instance["choice_list"]
    else:
        # some releases keep the options only inside the context: "Choice List:['a', 'b']"
        m = _CHOICE_LIST.search(context)
        if not m:
            raise RecordError(f"{where}: multi-choice sample without task_instance.choice_list")
        try:
            choices = ast.literal_eval(m.group(1))
        except (ValueError, SyntaxError):
            raise RecordError(f"{where}: unreadable Choice List in the context: {m.group(1)!r:.80}") from None
    if not isinstance(choices, list) or not choices or not all(isinstance(c, str) for c in choices):
        raise RecordError(f"{where}: choice_list must be a non-empty list of strings")
    return choices


def read_demon_task(
    task_dir: str | os.PathLike, skip_bad: bool = False, check_images: bool = True
) -> ReadResult:
    """Every sample of one DEMON task folder (the one that holds ``core/``)."""
    task_dir = Path(task_dir)
    core = task_dir / "core" / "core.json"
    doc = load_json(core)
    if not isinstance(doc, dict) or not isinstance(doc.get("metadata"), dict):
        raise RecordError(f"{core}: expected an object with 'metadata' and 'data'")
    metadata, data = doc["metadata"], doc.get("data")
    if not isinstance(data, list):
        raise RecordError(f"{core}: field 'data' must be a list of samples")
    task = canonical_task(task_dir.name)
    kind = task_kind(task, metadata, data, f"{core}: metadata")
    instructions = metadata.get("task_instruction") or []
    if not isinstance(instructions, list) or not all(isinstance(t, str) for t in instructions):
        raise RecordError(f"{core}: metadata.task_instruction must be a list of strings")
    out = Collector(skip_bad, check_images)

    def sample(record: dict, where: str) -> Sample:
        sample_id = need(record, "sample_id", (int, str), where)
        where = f"{where} (sample_id {sample_id})"
        instance = need(record, "task_instance", dict, where)
        context = need(instance, "context", str, f"{where} task_instance")
        images_path = need(instance, "images_path", list, f"{where} task_instance")
        if not all(isinstance(p, str) for p in images_path):
            raise RecordError(f"{where}: task_instance.images_path must be a list of file names")
        response = need(record, "response", str, where)
        if not response.strip():
            raise RecordError(f"{where}: empty response (nothing to score against)")
        instruction = ""
        if instructions:
            k = need(record, "task_instruction_id", int, where)
            if not 0 <= k < len(instructions):
                raise RecordError(f"{where}: task_instruction_id {k} out of range 0..{len(instructions) - 1}")
            instruction = instructions[k]
        # one image marker per placeholder; a context without placeholders gets its images first
        text, order = place_images(context, len(images_path), where, IMAGE_MARKER, what="the context")
        images = [
            out.image(core.parent / "images" / images_path[k], f"{where} image #{k + 1}") for k in order
        ]
        meta = {"task": task, "category": TASK_CATEGORY.get(task), "kind": kind}
        if kind != "open-ended":
            meta["choices"] = _choices(instance, context, where)
        prompt = (
            f"{instruction}{text}" if instruction.endswith((" ", "\n")) else f"{instruction} {text}".strip()
        )
        return Sample(f"{task}/{sample_id}", prompt, images, response, meta, where)

    return out.collect(iter_objects(data, f"{core}: data", out.skip), sample)


def read_demon(
    root: str | os.PathLike,
    tasks: list[str] | None = None,
    skip_bad: bool = False,
    check_images: bool = True,
) -> ReadResult:
    """Samples of every task under ``root`` (or the named ones), task by task."""
    found = find_tasks(root)
    if tasks is not None:
        wanted = [canonical_task(t) for t in tasks]
        unknown = [t for t in wanted if t not in found]
        if unknown:
            raise FileNotFoundError(f"{root}: no task folder for {unknown}; found {sorted(found)}")
        found = {t: found[t] for t in wanted}
    result = ReadResult([])
    for task_dir in found.values():
        part = read_demon_task(task_dir, skip_bad, check_images)
        result.samples.extend(part.samples)
        result.bad.extend(part.bad)
    return result
