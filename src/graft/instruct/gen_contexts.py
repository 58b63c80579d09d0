"""Image contexts in LLaVA's schema: what the text-only model is told about each image.

One JSON object per line (a JSON list works too)::

    {"id": "000123", "image": "images/train/000123.png",
     "captions": ["A red circle on the left and a blue square on the right.", ...],
     "boxes": [{"category": "red circle", "bbox": [0.1, 0.2, 0.3, 0.4]}, ...]}

``boxes`` is optional; a box is ``[x1, y1, x2, y2]`` in 0..1 (top left, bottom right). Rendered
as LLaVA renders it: the captions one per line, then (for the types that see boxes) one line per
box ``category: [x1, y1, x2, y2]`` with three decimals.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from graft.record_files import RecordError, UniqueIds, check_id, iter_records

from .gen_settings import GenError


@dataclass(frozen=True)
class Box:
    category: str
    bbox: tuple[float, float, float, float]

    def line(self) -> str:
        return f"{self.category}: [{', '.join(f'{v:.3f}' for v in self.bbox)}]"


@dataclass(frozen=True)
class Context:
    id: str
    image: str
    captions: tuple[str, ...]
    boxes: tuple[Box, ...] = ()
    #: "file.jsonl:12"
    where: str = ""

    def render(self, with_boxes: bool) -> str:
        """The text the model is given: captions, then box lines when ``with_boxes``."""
        lines = list(self.captions)
        if with_boxes:
            lines += [b.line() for b in self.boxes]
        return "\n".join(lines)


@dataclass
class LoadedContexts:
    contexts: list[Context]
    #: bad lines skipped (with ``skip_bad``), by reason
    skipped: Counter[str] = field(default_factory=Counter)


def _bad(where: str, message: str, reason: str) -> RecordError:
    return RecordError(f"{where}: {message}", reason)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _box(raw: Any, here: str, k: int) -> Box:
    name = f"field boxes[{k}]"
    if not isinstance(raw, dict):
        raise _bad(here, f"{name} must be an object {{category, bbox}}, got {raw!r:.80}", "bad_box")
    category = raw.get("category")
    if not isinstance(category, str) or not category.strip():
        raise _bad(here, f"{name}.category must be a non-empty string, got {category!r:.80}", "bad_box")
    bbox = raw.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(_number(v) for v in bbox):
        raise _bad(here, f"{name}.bbox must be 4 numbers [x1, y1, x2, y2], got {bbox!r:.80}", "bad_box")
    if not all(0.0 <= v <= 1.0 for v in bbox):
        raise _bad(here, f"{name}.bbox {bbox} lies outside 0..1 (boxes are normalised)", "box_outside")
    x1, y1, x2, y2 = (float(v) for v in bbox)
    if x1 > x2 or y1 > y2:
        raise _bad(here, f"{name}.bbox {bbox} has x1 > x2 or y1 > y2 (want [x1, y1, x2, y2])", "box_inverted")
    return Box(category.strip(), (x1, y1, x2, y2))


def parse_context(raw: dict, where: str) -> Context:
    """Check one context object; a problem is a ``RecordError`` naming the place and the field."""
    try:
        rid = str(check_id(raw.get("id"), where)) if "id" in raw else None
    except RecordError as err:
        raise RecordError(str(err), "bad_id") from None
    if rid is None or not rid.strip():
        raise _bad(where, "field 'id' is missing or empty", "bad_id")
    here = f"{where} (id {rid!r})"
    image = raw.get("image")
    if not isinstance(image, str) or not image:
        raise _bad(here, f"field 'image' must be a non-empty string, got {image!r:.80}", "bad_image")
    captions = raw.get("captions")
    if not isinstance(captions, list) or not captions:
        raise _bad(here, "field 'captions' is missing or empty (at least one caption)", "no_captions")
    for k, c in enumerate(captions):
        if not isinstance(c, str) or not c.strip():
            raise _bad(here, f"field captions[{k}] must be a non-empty string, got {c!r:.80}", "bad_caption")
    boxes = raw.get("boxes", [])
    if not isinstance(boxes, list):
        raise _bad(here, f"field 'boxes' must be a list, got {type(boxes).__name__}", "bad_box")
    parsed = tuple(_box(b, here, k) for k, b in enumerate(boxes))
    # one caption per line: a newline inside one would read as two
    clean = tuple(" ".join(c.split()) for c in captions)
    return Context(rid, image, clean, parsed, where)


def load_contexts(
    path: str | os.PathLike, skip_bad: bool = False, limit: int | None = None
) -> LoadedContexts:
    """Every context of a JSONL file (or JSON list). A bad one is a ``GenError`` naming file:line and
    field, or, with ``skip_bad``, skipped and counted by reason. Ids must be unique."""
    path = Path(path)
    if not path.is_file():
        raise GenError(f"contexts file not found: {path}")
    out = LoadedContexts([])
    ids = UniqueIds("used")

    def bad(err: RecordError) -> None:
        if not skip_bad:
            raise GenError(str(err)) from None
        out.skipped[err.reason] += 1

    try:
        for raw, where in tqdm(iter_records(path, on_bad=bad), desc="read contexts", unit="ctx"):
            try:
                ctx = parse_context(raw, where)
                try:
                    ids.add(ctx.id, where)
                except RecordError as err:
                    raise RecordError(str(err), "duplicate_id") from None
            except RecordError as err:
                bad(err)
                continue
            out.contexts.append(ctx)
            if limit is not None and len(out.contexts) >= limit:
                break
    except RecordError as err:  # a JSON list that does not parse
        raise GenError(str(err)) from None
    if not out.contexts:
        raise GenError(f"{path}: no usable context")
    return out
