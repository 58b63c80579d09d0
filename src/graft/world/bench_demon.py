"""Multi-image tasks of the shapes world in DEMON's own layout (``{task}/core/core.json`` +
``core/images/``). Task names are our own, so DEMON's scorer files them under "Other"; their
kind follows from ``question_type`` and the options, as the DEMON reader infers it:

- ``Shapes_WhichImage`` (image choice): which of 2-3 test scenes shows a category.
- ``Shapes_Difference`` (open-ended, ROUGE-L): what changed between a scene and its re-render
  with one object recoloured.
- ``Shapes_SequenceCloze`` (image choice): a sequence of renders of a test scene that follows a
  rule (one more object per step, or one object's colour cycling through three colours), then
  four candidates; the answer names the one that continues it ("Image C"). The wrong
  candidates break the rule: nothing added, an earlier object gone or recoloured; a colour
  out of turn or out of the cycle.
- ``Shapes_InContext`` (multi-choice, TF-IDF match to the options): 1-3 demonstration images
  each followed by its answer, then a query image. No question is asked: the demonstrations
  show what is wanted (how many objects, which colours, which shapes) and how to say it.

Rendered images are named ``{test id}_{k}.png``, so a file name says nothing of the answer.
"""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

from graft.files import write_text_atomic

from .bench_files import place_image, save_render
from .describe import join, named, number_word
from .scene import COLORS, SHAPES, Scene

SEQUENCE_SAMPLES = 200  # ~5 renders of ~1 ms each per sample: keeps the task under a second
IN_CONTEXT_RULES = ("count", "colors", "shapes")
CHOICE_LETTERS = "ABCD"

WHICH_INSTRUCTION = "Look at the images and answer with the image's letter, e.g. 'Image A'.\n"
DIFF_INSTRUCTION = "Describe the difference between the two images.\n"
SEQUENCE_INSTRUCTION = (
    "The first images form a sequence that changes by the same rule at every step: one more "
    "object each time, or one object's color cycling in a fixed order. Which candidate image "
    "comes next? Answer with the image's letter, e.g. 'Image A'.\n"
)
IN_CONTEXT_INSTRUCTION = (
    "Each image is followed by its answer. Work out from these examples what is asked, then "
    "answer the same way for the last image.\n"
)


def _task(out: Path, name: str, qtype: str, instruction: str, data: list[dict]) -> None:
    meta = {"dataset": name, "split": "test", "num_sample": len(data), "task_instruction": [instruction]}
    doc = {"metadata": meta | {"question_type": qtype}, "data": data}
    write_text_atomic(out / name / "core" / "core.json", json.dumps(doc, indent=1))


def _sample(
    sample_id: int, context: str, images: list[str], response: str, choices: list[str] | None = None
) -> dict:
    instance: dict = {"context": context, "images_path": images}
    if choices is not None:
        instance["choice_list"] = choices
    return {
        "sample_id": sample_id,
        "task_instruction_id": 0,
        "task_instance": instance,
        "response": response,
    }


def _which_image(world: Path, rows: list[dict], row: dict, rng: random.Random, out: Path) -> dict | None:
    """This scene and 1-2 other test scenes; the asked category is in this one only."""
    others = [r for r in rows if r is not row]
    group = [row, *rng.sample(others, min(len(others), rng.randint(1, 2)))]
    cats = [{f"{o['color']} {o['shape']}" for o in r["scene"]["objects"]} for r in group]
    only = sorted(cats[0] - set().union(*cats[1:]))
    if len(group) < 2 or not only:
        return None
    cat = rng.choice(only)
    order = list(range(len(group)))
    rng.shuffle(order)
    names = [f"{group[j]['id']}.png" for j in order]
    letters = "ABC"[: len(group)]
    context = "".join(f"Image {letters[i]}: {{image#{i + 1}}}\n" for i in range(len(group)))
    for j in order:
        place_image(world / group[j]["image"], out / "core" / "images" / names[order.index(j)])
    return _sample(
        0,
        context + f"Which image shows a {cat}?",
        names,
        f"Image {letters[order.index(0)]}",
        [f"Image {c}" for c in letters],
    )


def _difference(world: Path, row: dict, rng: random.Random, out: Path) -> dict:
    """Recolour one object and render again."""
    scene = Scene.from_dict(row["scene"])
    i = rng.randrange(len(scene.objects))
    obj = scene.objects[i]
    new = rng.choice([c for c in COLORS if c != obj.color])
    edited = scene.with_objects([replace(o, color=new) if j == i else o for j, o in enumerate(scene.objects)])
    before, after = f"{row['id']}.png", f"{row['id']}_edit.png"
    place_image(world / row["image"], out / "core" / "images" / before)
    save_render(edited, out / "core" / "images" / after)
    return _sample(
        0, "{image#1} {image#2}", [before, after], f"The {named(scene, obj)} is {new} in the second image."
    )


def _sequence(scene: Scene, rng: random.Random) -> tuple[list[Scene], Scene, list[Scene]]:
    """(steps shown, the right next step, three wrong ones) for one of the two rules."""
    objs = list(scene.objects)
    if len(objs) >= 3 and rng.random() < 0.5:
        # one more object per step; the whole scene is the next step
        order = rng.sample(objs, len(objs))
        steps = [scene.with_objects(order[:m]) for m in range(1, len(order))]
        gone, changed = rng.choice(order[:-1]), rng.choice(order[:-1])
        color = rng.choice([c for c in COLORS if c != changed.color])
        wrong = [
            steps[-1],  # nothing added
            scene.with_objects([o for o in order if o is not gone]),  # one added, an earlier one gone
            scene.with_objects([replace(o, color=color) if o is changed else o for o in order]),
        ]
        return steps, scene, wrong
    # one object's colour cycles through three colours; the cycle ends on its true colour
    k = rng.randrange(len(objs))
    true = objs[k].color
    a, b = rng.sample([c for c in COLORS if c != true], 2)
    length = rng.choice((4, 5))
    cycle = [""] * 3
    for i, c in enumerate((true, a, b)):
        cycle[(length + i) % 3] = c
    outside = rng.choice([c for c in COLORS if c not in cycle])

    def recolor(c: str) -> Scene:
        return scene.with_objects([replace(o, color=c) if j == k else o for j, o in enumerate(objs)])

    steps = [recolor(cycle[t % 3]) for t in range(length)]
    return steps, scene, [recolor(a), recolor(b), recolor(outside)]


def _sequence_cloze(world: Path, row: dict, rng: random.Random, out: Path) -> dict:
    scene = Scene.from_dict(row["scene"])
    steps, right, wrong = _sequence(scene, rng)
    candidates = [right, *wrong]
    order = rng.sample(range(len(candidates)), len(candidates))  # order[i]: candidate shown as letter i
    shown = steps + [candidates[j] for j in order]
    img_dir = out / "core" / "images"
    names, first = [], {}
    for n, s in enumerate(shown):
        key = frozenset(s.objects)
        name = f"{row['id']}_{n}.png"
        if key == frozenset(scene.objects):
            place_image(world / row["image"], img_dir / name)  # the test image itself: no render
        elif key in first:
            place_image(img_dir / first[key], img_dir / name)  # a repeat of an image already drawn
        else:
            save_render(s, img_dir / name)
        first.setdefault(key, name)
        names.append(name)
    context = "".join(f"{{image#{t + 1}}}" for t in range(len(steps))) + "\nWhich image comes next?\n"
    context += "\n".join(
        f"Image {CHOICE_LETTERS[i]}: {{image#{len(steps) + i + 1}}}" for i in range(len(order))
    )
    letters = CHOICE_LETTERS[: len(order)]
    return _sample(0, context, names, f"Image {letters[order.index(0)]}", [f"Image {c}" for c in letters])


def _in_context_answer(rule: str, scene: Scene) -> str:
    if rule == "count":
        n = len(scene.objects)
        return f"{number_word(n)} object{'s' if n != 1 else ''}"
    values = {o.color if rule == "colors" else o.shape for o in scene.objects}
    return join(sorted(values))


def _one_off(values: frozenset[str], pool: list[str]) -> list[frozenset[str]]:
    """The non-empty sets one value more or one value fewer than ``values``, in a fixed order (a set
    of strings iterates in an order that varies across processes)."""
    more = [values | {v} for v in pool if v not in values]
    return more + [values - {v} for v in sorted(values) if len(values) > 1]


def _in_context_options(rule: str, scene: Scene, rng: random.Random) -> list[str]:
    """The right answer and three wrong ones of the same kind, shuffled."""
    right = _in_context_answer(rule, scene)
    if rule == "count":
        n = len(scene.objects)
        wrong_n = rng.sample([k for k in range(1, max(5, n + 2)) if k != n], 3)
        wrong = [f"{number_word(k)} object{'s' if k != 1 else ''}" for k in wrong_n]
    else:
        pool = list(COLORS) if rule == "colors" else list(SHAPES)
        have = frozenset(o.color if rule == "colors" else o.shape for o in scene.objects)
        # Wrong sets that stay close to the right one, yet none closer than the others: a pivot one
        # value more or fewer than the right set, then three other sets one value off the pivot.
        # Wrong sets one step off the right set make it the centre of the options (one step from
        # each, the others two apart): a blind reader picking the centre scored 0.42, not 0.25.
        pivots = [p for p in _one_off(have, pool) if len(_one_off(p, pool)) >= 4]
        pivot = rng.choice(pivots)
        wrong = [join(sorted(s)) for s in rng.sample([s for s in _one_off(pivot, pool) if s != have], 3)]
    options = [right, *wrong]
    rng.shuffle(options)
    return options


def _in_context(world: Path, rows: list[dict], row: dict, rng: random.Random, out: Path) -> dict | None:
    others = [r for r in rows if r is not row]
    k = min(rng.choice((2, 3)), len(others))
    if k == 0:
        return None
    rule = rng.choice(IN_CONTEXT_RULES)
    demos = rng.sample(others, k)
    context = ""
    for i, demo in enumerate(demos):
        answer = _in_context_answer(rule, Scene.from_dict(demo["scene"]))
        context += f"{{image#{i + 1}}}\nAnswer: {answer}\n"
    context += f"{{image#{k + 1}}}\nAnswer:"
    names = [f"{r['id']}.png" for r in [*demos, row]]
    for r, name in zip([*demos, row], names, strict=True):
        place_image(world / r["image"], out / "core" / "images" / name)
    scene = Scene.from_dict(row["scene"])
    options = _in_context_options(rule, scene, rng)
    return _sample(0, context, names, _in_context_answer(rule, scene), options)


#: the "which image shows ..." task
WHICH_IMAGE = "Shapes_WhichImage"


def write_demon(world: Path, rows: list[dict], out: Path, seed: int) -> tuple[Path, dict[str, int]]:
    """The four tasks under ``out``; a task with no sample (too few test scenes) is left out.
    Returns (out, samples per task)."""
    tasks: dict[str, list[dict]] = {
        WHICH_IMAGE: [],
        "Shapes_Difference": [],
        "Shapes_SequenceCloze": [],
        "Shapes_InContext": [],
    }
    for n, row in enumerate(rows):
        # one generator per scene and task: adding a task never changes another one's samples
        rng = random.Random(f"demon-{seed}-{row['id']}")
        made = {
            WHICH_IMAGE: _which_image(world, rows, row, rng, out / WHICH_IMAGE),
            "Shapes_Difference": _difference(world, row, rng, out / "Shapes_Difference"),
        }
        if n < SEQUENCE_SAMPLES:
            rng = random.Random(f"demon-seq-{seed}-{row['id']}")
            made["Shapes_SequenceCloze"] = _sequence_cloze(world, row, rng, out / "Shapes_SequenceCloze")
        rng = random.Random(f"demon-icl-{seed}-{row['id']}")
        made["Shapes_InContext"] = _in_context(world, rows, row, rng, out / "Shapes_InContext")
        for name, sample in made.items():
            if sample is not None:
                tasks[name].append(sample | {"sample_id": len(tasks[name])})
    kinds = {
        "Shapes_WhichImage": ("multi-choice", WHICH_INSTRUCTION),
        "Shapes_Difference": ("open-ended", DIFF_INSTRUCTION),
        "Shapes_SequenceCloze": ("multi-choice", SEQUENCE_INSTRUCTION),
        "Shapes_InContext": ("multi-choice", IN_CONTEXT_INSTRUCTION),
    }
    for name, data in tasks.items():
        if data:
            _task(out, name, *kinds[name], data)
    return out, {name: len(data) for name, data in tasks.items()}
