"""Symbolic descriptions of a scene: reference captions and boxes, the context LLaVA fed GPT-4.

Every caption is true and mentions every object; several bind attributes to places
("a red circle on the left and a blue square on the right"), because a caption that only
lists colors and shapes lets a model get away with a bag of attributes.
"""

from __future__ import annotations

import random

from .scene import Obj, Scene

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Normalised coordinate thresholds for coarse position words.
LOW, HIGH = 0.38, 0.62


def number_word(n: int) -> str:
    return NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else str(n)


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def noun_phrase(obj: Obj, size: bool = True, det: bool = True) -> str:
    words = f"{obj.size} {obj.color} {obj.shape}" if size else f"{obj.color} {obj.shape}"
    return f"{article(words)} {words}" if det else words


def named(scene: Scene, obj: Obj) -> str:
    """``obj``'s size, colour and shape ("large red circle"), and its place too when another object
    of the scene has the same three ("large red circle on the left"): a difference description
    has to say which of two alike objects changed."""
    words = noun_phrase(obj, det=False)
    twins = sum(noun_phrase(o, det=False) == words for o in scene.objects)
    return f"{words} {where(obj)}" if twins > 1 else words


def where(obj: Obj) -> str:
    """Coarse absolute position: 'in the top left', 'on the right', 'in the center', ..."""
    col = "left" if obj.x < LOW else "right" if obj.x > HIGH else ""
    row = "top" if obj.y < LOW else "bottom" if obj.y > HIGH else ""
    if row and col:
        return f"in the {row} {col}"
    if row:
        return f"at the {row}"
    if col:
        return f"on the {col}"
    return "in the center"


def join(items: list[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def cap(s: str) -> str:
    return s[0].upper() + s[1:]


def captions(scene: Scene) -> list[str]:
    """Reference captions, fixed order, varied phrasing; all true, all mention every object."""
    objs = scene.objects
    n = len(objs)
    by_x = sorted(objs, key=lambda o: o.x)
    located = join([f"{noun_phrase(o)} {where(o)}" for o in by_x])
    out = [
        cap(join([noun_phrase(o, size=False) for o in objs])) + ".",
        cap(located) + ".",
    ]
    if n == 1:
        o = objs[0]
        out += [
            f"A single {noun_phrase(o, det=False)} {where(o)}.",
            f"There is one object in the image: {noun_phrase(o)}.",
            f"Only one shape, {noun_phrase(o, size=False)}, on a plain background.",
        ]
        return out
    out += [
        ordered_caption(scene, "x"),
        f"There are {number_word(n)} objects in the image: " + join([noun_phrase(o) for o in objs]) + ".",
        ordered_caption(scene, "y"),
    ]
    return out


def ordered_caption(scene: Scene, axis: str) -> str:
    """'From left to right: ...' (axis 'x') or 'From top to bottom: ...' (axis 'y')."""
    objs = sorted(scene.objects, key=(lambda o: o.x) if axis == "x" else (lambda o: o.y))
    head = "From left to right: " if axis == "x" else "From top to bottom: "
    # Sizes only when a category repeats: then they are what tells the two apart.
    sized = len({o.category for o in objs}) < len(objs)
    return head + join([noun_phrase(o, size=sized) for o in objs]) + "."


def boxes(scene: Scene) -> list[tuple[str, list[float]]]:
    """(category, [x1, y1, x2, y2]) per object, normalised to 0..1 with 3 decimals."""
    return [(o.category, [round(min(max(v, 0.0), 1.0), 3) for v in o.box()]) for o in scene.objects]


def box_lines(scene: Scene) -> list[str]:
    return [f"{cat}: [{', '.join(f'{v:.3f}' for v in box)}]" for cat, box in boxes(scene)]


def context_text(scene: Scene) -> str:
    """Captions, then one box line per object: the symbolic context LLaVA gave GPT-4."""
    return "\n".join(captions(scene) + box_lines(scene))


def detailed_description(scene: Scene, rng: random.Random) -> str:
    """A paragraph for 'describe in detail' requests: count, then each object with size and place."""
    objs = list(scene.objects)
    rng.shuffle(objs)
    n = len(objs)
    if n == 1:
        head = "The image shows a single object on a plain light gray background."
    else:
        head = f"The image shows {number_word(n)} objects on a plain light gray background."
    body = []
    for i, o in enumerate(objs):
        lead = "There is" if i == 0 else rng.choice(["There is also", "Next, there is", "It also contains"])
        body.append(f"{lead} {noun_phrase(o)} {where(o)}.")
    tail = []
    colors = sorted({o.color for o in objs})
    shapes = sorted({o.shape for o in objs})
    if n > 1:
        tail.append(
            f"Altogether the picture contains {number_word(len(colors))} "
            f"color{'s' if len(colors) > 1 else ''} ({join(colors)}) and {number_word(len(shapes))} "
            f"kind{'s' if len(shapes) > 1 else ''} of shape ({join([s + 's' for s in shapes])})."
        )
    return " ".join([head] + body + tail)
