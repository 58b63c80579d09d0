"""Prompt folders in LLaVA's layout, and the chat messages built from them.

One folder per response type (``conversation``, ``detail``, ``complex_reasoning``), each with
``system_message.txt`` and few-shot pairs ``000_caps.txt`` / ``000_conv.txt``, ``001_caps.txt`` /
``001_conv.txt`` ...: an example context and the answer wanted for it. The messages are the
system message, then per example a user turn (the ``_caps`` text) and an assistant turn (the
``_conv`` text), then the real context as the last user turn. graft ships its own folders
(``graft/instruct/prompts/``); ``--prompts-dir`` points at a folder holding a user's own, in the
same layout (LLaVA's originals from a local copy, for one).
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from graft.record_files import RecordError, decode_utf8

from .gen_contexts import Context
from .gen_settings import GenError

#: the types whose context has the box lines too (LLaVA gives conversation the captions only)
WITH_BOXES = {"conversation": False, "detail": True, "complex_reasoning": True}

#: the human turn of a detail record, one drawn (seeded) per record; graft's own wording
DETAIL_INSTRUCTIONS: tuple[str, ...] = (
    "Describe this image in detail.",
    "Give a thorough description of what the image shows.",
    "What is in this picture? Describe it in as much detail as you can.",
    "Write a detailed account of the contents of this image.",
    "Walk me through everything you can see in this image.",
    "Describe the scene in the image, covering every object and where it is.",
    "Provide a comprehensive description of the image.",
    "Tell me, in detail, what this image contains and how it is arranged.",
    "Explain in detail what can be seen in the picture.",
    "Describe the picture carefully: the objects, their appearance and their positions.",
    "Paint a detailed picture in words of what this image shows.",
    "Give an elaborate description of the image.",
)

_EXAMPLE = re.compile(r"^(\d+)_(caps|conv)\.txt$")


@dataclass(frozen=True)
class PromptSet:
    """One response type's prompts: the system message and the few-shot (context, answer) pairs."""

    type: str
    system: str
    examples: tuple[tuple[str, str], ...]
    source: str

    def messages(self, context: Context) -> list[dict[str, str]]:
        """System, the few-shot pairs as user / assistant turns, the real context as the last user turn."""
        out = [{"role": "system", "content": self.system}]
        for caps, conv in self.examples:
            out += [{"role": "user", "content": caps}, {"role": "assistant", "content": conv}]
        out.append({"role": "user", "content": context.render(WITH_BOXES[self.type])})
        return out


def _read(entry: Traversable, where: str) -> str:
    try:
        text = decode_utf8(entry.read_bytes(), where).strip()
    except RecordError as err:
        raise GenError(str(err)) from None
    if not text:
        raise GenError(f"{where}: the prompt file is empty")
    return text


def load_prompt_folder(folder: Traversable, response_type: str, label: str) -> PromptSet:
    """The prompts of one type from ``folder`` (``label`` names it in errors)."""
    if not folder.is_dir():
        raise GenError(f"{label}: missing prompt folder for response type {response_type!r}")
    entries = {e.name: e for e in folder.iterdir() if e.is_file()}
    if "system_message.txt" not in entries:
        raise GenError(f"{label}/system_message.txt: missing (every prompt folder needs one)")
    pairs: dict[str, dict[str, Traversable]] = {}
    for name, entry in entries.items():
        if m := _EXAMPLE.match(name):
            pairs.setdefault(m.group(1), {})[m.group(2)] = entry
    examples = []
    for number in sorted(pairs, key=int):
        found = pairs[number]
        for have, want in (("caps", "conv"), ("conv", "caps")):
            if have in found and want not in found:
                raise GenError(
                    f"{label}/{number}_{want}.txt: missing (its {number}_{have}.txt has no partner)"
                )
        examples.append(
            (
                _read(found["caps"], f"{label}/{number}_caps.txt"),
                _read(found["conv"], f"{label}/{number}_conv.txt"),
            )
        )
    system = _read(entries["system_message.txt"], f"{label}/system_message.txt")
    return PromptSet(response_type, system, tuple(examples), label)


def builtin_prompts_root() -> Traversable:
    return resources.files("graft.instruct") / "prompts"


def load_prompts(
    types: tuple[str, ...], prompts_dir: str | os.PathLike | None = None
) -> dict[str, PromptSet]:
    """The prompt set of every type: graft's own, or those under ``prompts_dir/<type>/``."""
    if prompts_dir is not None:
        root: Traversable = Path(prompts_dir)
        if not Path(prompts_dir).is_dir():
            raise GenError(f"prompts folder not found: {prompts_dir}")
        label = str(prompts_dir)
    else:
        root, label = builtin_prompts_root(), "graft/instruct/prompts"
    folders = {t: _folder(root, t) for t in types}
    return {t: load_prompt_folder(root / name, t, f"{label}/{name}") for t, name in folders.items()}


#: LLaVA's own prompt folders (``playground/data/prompts``) name the detail type this way
LLAVA_FOLDERS = {"detail": "detail_description"}


def _folder(root: Traversable, response_type: str) -> str:
    """The folder of a type under ``root``: its name, or LLaVA's name for it when only that exists."""
    llava = LLAVA_FOLDERS.get(response_type)
    if llava is not None and not (root / response_type).is_dir() and (root / llava).is_dir():
        return llava
    return response_type


def record_rng(seed: int, context_id: str, response_type: str) -> random.Random:
    """The generator of one record's random choices (the detail instruction, the <image> side):
    the same record gets the same choices whatever the order or the number of contexts."""
    return random.Random(f"gen-data-{seed}-{context_id}-{response_type}")
