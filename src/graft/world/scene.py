"""Scenes of the shapes world: a few coloured shapes on a plain background, rendered with PIL.

Geometry is stored normalised (0..1) so one scene renders at any image size, and a scene
round-trips through a plain dict so it can be re-rendered exactly later (edits for
discriminative pairs: modify / swap / delete / add an object, then `render()` again).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field, replace

from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
# Far apart in RGB so no colour is ever a matter of taste, and none close to the background.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (40, 70, 230),
    "yellow": (240, 210, 20),
    "purple": (150, 40, 190),
}
# Half side of an object's square box, as a fraction of the image side.
SIZES: dict[str, float] = {"small": 0.10, "large": 0.17}
BACKGROUND: tuple[int, int, int] = (235, 235, 235)
GAP = 0.03  # minimum clear space between two objects' boxes (fraction of the side)


@dataclass(frozen=True)
class Obj:
    """One object; (x, y) is its centre, normalised, y pointing down like image rows."""

    shape: str
    color: str
    size: str
    x: float
    y: float

    @property
    def category(self) -> str:
        return f"{self.color} {self.shape}"

    @property
    def half(self) -> float:
        return SIZES[self.size]

    def box(self) -> tuple[float, float, float, float]:
        """[x1, y1, x2, y2] normalised: the square the shape is inscribed in (it touches all four sides)."""
        h = self.half
        return (self.x - h, self.y - h, self.x + h, self.y + h)

    def overlaps(self, other: Obj, gap: float = GAP) -> bool:
        a, b = self.box(), other.box()
        return not (a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1])


@dataclass
class Scene:
    objects: list[Obj]
    image_size: int = 64
    background: tuple[int, int, int] = field(default=BACKGROUND)

    def pixel_box(self, obj: Obj) -> tuple[int, int, int, int]:
        """Inclusive pixel box the renderer fills for `obj` (x0, y0, x1, y1)."""
        s = self.image_size
        x1, y1, x2, y2 = obj.box()
        return (round(x1 * s), round(y1 * s), round(x2 * s) - 1, round(y2 * s) - 1)

    def _draw(self, image: Image.Image, fill_of) -> Image.Image:
        draw = ImageDraw.Draw(image)
        for i, obj in enumerate(self.objects):
            x0, y0, x1, y1 = self.pixel_box(obj)
            fill = fill_of(i, obj)
            if obj.shape == "circle":
                draw.ellipse((x0, y0, x1, y1), fill=fill)
            elif obj.shape == "square":
                draw.rectangle((x0, y0, x1, y1), fill=fill)
            elif obj.shape == "triangle":
                draw.polygon([((x0 + x1) / 2, y0), (x0, y1), (x1, y1)], fill=fill)
            elif obj.shape == "diamond":
                cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
                draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)
            else:
                raise ValueError(f"unknown shape {obj.shape!r}")
        return image

    def render(self) -> Image.Image:
        image = Image.new("RGB", (self.image_size, self.image_size), self.background)
        return self._draw(image, lambda i, obj: COLORS[obj.color])

    def label_map(self) -> Image.Image:
        """Per-pixel object index ("L" image): 0 is background, i + 1 is ``objects[i]``; the
        exact pixels ``render`` paints, for dense (per-patch) supervision."""
        return self._draw(Image.new("L", (self.image_size, self.image_size), 0), lambda i, obj: i + 1)

    def fits(self, obj: Obj, ignore: int | None = None) -> bool:
        """True if `obj` lies inside the image and clear of every object (except index `ignore`)."""
        x1, y1, x2, y2 = obj.box()
        if min(x1, y1) < GAP or max(x2, y2) > 1 - GAP:
            return False
        return all(not obj.overlaps(o) for i, o in enumerate(self.objects) if i != ignore)

    @property
    def categories(self) -> frozenset[str]:
        """The "colour shape" categories the scene shows."""
        return frozenset(o.category for o in self.objects)

    def with_objects(self, objects: list[Obj]) -> Scene:
        return replace(self, objects=list(objects))

    def to_dict(self) -> dict:
        return {
            "image_size": self.image_size,
            "background": list(self.background),
            "objects": [asdict(o) for o in self.objects],
        }

    @classmethod
    def from_dict(cls, d: dict) -> Scene:
        return cls(
            objects=[Obj(**o) for o in d["objects"]],
            image_size=int(d["image_size"]),
            background=tuple(d.get("background", BACKGROUND)),
        )


def place_object(
    rng: random.Random, scene: Scene, shape: str, color: str, size: str, tries: int = 200
) -> Obj | None:
    """A position for a new object that keeps the scene non-overlapping, or None if there is no room."""
    h = SIZES[size]
    lo, hi = GAP + h, 1 - GAP - h
    for _ in range(tries):
        obj = Obj(shape, color, size, round(rng.uniform(lo, hi), 4), round(rng.uniform(lo, hi), 4))
        if scene.fits(obj):
            return obj
    return None


def sample_scene(
    rng: random.Random,
    min_objects: int = 1,
    max_objects: int = 4,
    image_size: int = 64,
) -> Scene:
    """A random scene with min..max objects; attributes drawn independently, so the same
    colour or shape may repeat (which is what makes 'red circle' differ from 'red' + 'circle')."""
    n = rng.randint(min_objects, max_objects)
    while True:
        scene = Scene(objects=[], image_size=image_size)
        for _ in range(n):
            obj = place_object(
                rng, scene, rng.choice(SHAPES), rng.choice(list(COLORS)), rng.choice(list(SIZES))
            )
            if obj is None:
                break
            scene.objects.append(obj)
        if len(scene.objects) == n:
            return scene
