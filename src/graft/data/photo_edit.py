"""Classical edits of real photos for synthetic pairs (OpenCV), behind the ``Editor`` interface.

Boxes are all a photo source has (no masks), so each edit works on the box:

- delete: inpaint the box (Telea's method) from its surroundings;
- modify: turn the box's hues to a named colour (HSV), keeping light and shade;
- swap: exchange the contents of two boxes, each resized to the other's box;
- add: paste a copy of the object into free background (a place no box overlaps).

A diffusion inpainter would be one more class with the same ``edit`` method, registered with
``register_editor``. OpenCV is an optional dependency (``pip install 'graft[photos]'``; ``make``
installs it): without it, building the ``opencv`` editor is an error that says so.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from types import ModuleType

import numpy as np
from PIL import Image

from graft.data.pairs import Editor, EditResult, PairError, Source, position_phrase

#: OpenCV hue (0..179) of each colour name a modify edit may give
HUES = {
    "red": 0,
    "orange": 12,
    "yellow": 28,
    "green": 60,
    "cyan": 90,
    "blue": 115,
    "purple": 140,
    "pink": 165,
}
EDITORS: dict[str, Callable[[], Editor]] = {}


def register_editor(name: str) -> Callable[[type], type]:
    def add(cls: type) -> type:
        if name in EDITORS:
            raise ValueError(f"editor {name!r} is already registered")
        EDITORS[name] = cls
        return cls

    return add


def build_editor(name: str) -> Editor:
    if name not in EDITORS:
        raise PairError(f"unknown editor {name!r}; registered: {', '.join(sorted(EDITORS))}")
    return EDITORS[name]()


def _opencv() -> ModuleType:
    """The cv2 module, or a clear error naming the extra that installs it."""
    try:
        import cv2
    except ImportError:
        raise PairError(
            "the opencv editor needs OpenCV, an optional dependency of graft: "
            "pip install 'graft[photos]' (or opencv-python-headless)"
        ) from None
    return cv2


def _pixels(box: tuple[float, ...], width: int, height: int) -> tuple[int, int, int, int]:
    x1, y1 = int(box[0] * width), int(box[1] * height)
    x2, y2 = max(x1 + 1, round(box[2] * width)), max(y1 + 1, round(box[3] * height))
    return x1, y1, min(x2, width), min(y2, height)


def _overlaps(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return not (a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1])


@register_editor("opencv")
class OpenCVEditor:
    name = "opencv"

    def __init__(self, inpaint_radius: int = 7, tries: int = 100) -> None:
        self.inpaint_radius = inpaint_radius
        self.tries = tries
        self.cv2 = _opencv()

    def edit(
        self, image: Image.Image, source: Source, target: int, kind: str, rng: random.Random
    ) -> EditResult | None:
        cv2 = self.cv2
        arr = np.asarray(image.convert("RGB")).copy()
        h, w = arr.shape[:2]
        boxes = [_pixels(r.box, w, h) for r in source.regions]
        label = source.regions[target].label
        place = position_phrase(source.regions[target].box)
        if kind == "delete":
            mask = np.zeros((h, w), np.uint8)
            x1, y1, x2, y2 = boxes[target]
            mask[max(0, y1 - 2) : y2 + 2, max(0, x1 - 2) : x2 + 2] = 255  # a margin takes the edge too
            out = cv2.inpaint(arr, mask, self.inpaint_radius, cv2.INPAINT_TELEA)
            return EditResult(Image.fromarray(out), f"The {label} {place} has been removed.")
        if kind == "modify":
            return self._recolour(arr, boxes[target], label, place, rng)
        if kind == "swap":
            others = [j for j in range(len(boxes)) if j != target]
            if not others:
                return None
            j = rng.choice(others)
            (ax1, ay1, ax2, ay2), (bx1, by1, bx2, by2) = boxes[target], boxes[j]
            a, b = arr[ay1:ay2, ax1:ax2].copy(), arr[by1:by2, bx1:bx2].copy()
            arr[by1:by2, bx1:bx2] = cv2.resize(a, (bx2 - bx1, by2 - by1), interpolation=cv2.INTER_AREA)
            arr[ay1:ay2, ax1:ax2] = cv2.resize(b, (ax2 - ax1, ay2 - ay1), interpolation=cv2.INTER_AREA)
            other = source.regions[j].label
            return EditResult(Image.fromarray(arr), f"The {label} and the {other} have swapped places.")
        if kind == "add":
            x1, y1, x2, y2 = boxes[target]
            bw, bh = x2 - x1, y2 - y1
            for _ in range(self.tries):
                nx, ny = rng.randint(0, w - bw), rng.randint(0, h - bh)
                spot = (nx, ny, nx + bw, ny + bh)
                if not any(_overlaps(spot, b) for b in boxes):
                    arr[ny : ny + bh, nx : nx + bw] = arr[y1:y2, x1:x2]
                    where = position_phrase((nx / w, ny / h, (nx + bw) / w, (ny + bh) / h))
                    return EditResult(Image.fromarray(arr), f"Another {label} has been added {where}.")
            return None  # no free background big enough
        raise PairError(f"editor {self.name!r}: unknown edit kind {kind!r}")

    def _recolour(
        self, arr: np.ndarray, box: tuple[int, int, int, int], label: str, place: str, rng: random.Random
    ) -> EditResult:
        cv2 = self.cv2
        x1, y1, x2, y2 = box
        hsv = cv2.cvtColor(arr[y1:y2, x1:x2], cv2.COLOR_RGB2HSV)
        # the box's dominant hue among its coloured pixels names what it is now; pick another
        coloured = hsv[..., 1] > 60
        current = int(np.median(hsv[..., 0][coloured])) if coloured.any() else -100
        choices = [c for c, hue in HUES.items() if min(abs(hue - current), 180 - abs(hue - current)) > 20]
        colour = rng.choice(choices)
        hsv[..., 0] = HUES[colour]
        hsv[..., 1] = np.maximum(hsv[..., 1], 140)  # so a greyish object shows its new colour too
        arr[y1:y2, x1:x2] = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        return EditResult(Image.fromarray(arr), f"The {label} {place} has turned {colour}.")
