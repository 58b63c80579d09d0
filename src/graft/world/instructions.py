"""The offline instruction writer: a scene's symbolic description -> LLaVA-format records.

It plays the part GPT-4 played for LLaVA (answer as if looking at the image, never mention
captions or boxes), with exact answers instead of sampled ones. Three response types as in
LLaVA-Instruct (conversation, detailed description, complex reasoning) plus single-question
records (yes/no, multiple choice, short answer) in LLaVA-1.5's formats.
"""

from __future__ import annotations

import random

from graft.prompts import CAPTION_PROMPT

from .describe import cap, detailed_description, join, noun_phrase, number_word, where
from .questions import QA, refer, sample_qa
from .scene import Obj, Scene

IMAGE = "<image>"
SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
BRIEF_PROMPTS = (
    "Give a brief description of the image.",
    "Describe the image concisely.",
    "Provide a brief description of the given image.",
    "Summarize the visual content of the image.",
    "Write a terse but informative summary of the picture.",
    "Share a concise interpretation of the image provided.",
)
DETAIL_PROMPTS = (
    "Describe the following image in detail.",
    "Provide a detailed description of the given image.",
    "Give an elaborate explanation of the image you see.",
    "Explain the various aspects of the image before you.",
    "Walk through the important details of the image.",
    "Examine the image closely and share its details.",
)


def _there_are(n: int, noun: str) -> str:
    if n == 0:
        return f"There are no {noun}s in the image."
    if n == 1:
        return f"There is one {noun} in the image."
    return f"There are {number_word(n)} {noun}s in the image."


# ---------------------------------------------------------------- conversation


def _conv_turn(scene: Scene, rng: random.Random) -> tuple[str, str]:
    objs = scene.objects
    kind = rng.choice(["list", "count", "exists", "color", "where", "shape"])
    if kind == "list":
        return "What objects can you see in the image?", (
            f"I can see {number_word(len(objs))} object{'s' if len(objs) > 1 else ''}: "
            + join([f"{noun_phrase(o)} {where(o)}" for o in objs])
            + "."
        )
    if kind == "count":
        shape = rng.choice([o.shape for o in objs])
        return f"How many {shape}s are in the image?", _there_are(sum(o.shape == shape for o in objs), shape)
    if kind == "exists":
        o = rng.choice(objs)
        color = (
            o.color if rng.random() < 0.5 else rng.choice(sorted({p.color for p in objs} | {"blue", "red"}))
        )
        q = f"Is there a {color} {o.shape} in the image?"
        match = [p for p in objs if p.color == color and p.shape == o.shape]
        if match:
            return q, f"Yes, there is {noun_phrase(match[0])} {where(match[0])}."
        same = [p for p in objs if p.shape == o.shape]
        return (
            q,
            f"No, there is no {color} {o.shape}. The {o.shape} in the image "
            + ("is " if len(same) == 1 else "are ")
            + join(sorted({p.color for p in same}))
            + ".",
        )
    o = rng.choice(objs)
    ref = refer(scene, o)
    if ref is None:
        return (
            _conv_turn(scene, rng) if len(objs) > 1 else ("What is in the image?", cap(noun_phrase(o)) + ".")
        )
    if kind == "color":
        return f"What color is the {ref}?", f"The {ref} is {o.color}."
    if kind == "shape":
        return f"What shape is the {ref}?", f"It is {noun_phrase(o)}."
    return f"Where is the {ref}?", f"The {ref} is {where(o)} of the image."


def conversation(scene: Scene, rng: random.Random) -> list[tuple[str, str]]:
    turns: list[tuple[str, str]] = []
    for _ in range(rng.randint(2, 4)):
        q, a = _conv_turn(scene, rng)
        if all(q != t[0] for t in turns):
            turns.append((q, a))
    return turns


# ---------------------------------------------------------------- complex reasoning


def _pick_two(objs: list[Obj], rng: random.Random) -> tuple[Obj, Obj]:
    a, b = rng.sample(objs, 2)
    return a, b


def reasoning(scene: Scene, rng: random.Random) -> tuple[str, str]:
    objs = scene.objects
    n = len(objs)
    options = ["uniform_color", "edge"] + (["remove", "common", "bigger"] if n > 1 else [])
    kind = rng.choice(options)
    if kind == "remove":
        o = rng.choice(objs)
        rest = [p for p in objs if p is not o]
        return (
            f"If the {refer(scene, o) or o.category} were taken out of the picture, what would be left?",
            f"Removing {noun_phrase(o)} would leave {number_word(len(rest))} "
            + ("objects: " if len(rest) > 1 else "object: ")
            + join([noun_phrase(p) for p in rest])
            + ".",
        )
    if kind == "edge":
        side = rng.choice(["left", "right", "top", "bottom"])
        # by the shape's own edge (each shape touches all four sides of its box), not its centre:
        # a large shape further in can reach nearer the edge than a small one
        key = {
            "left": lambda o: o.x - o.half,
            "right": lambda o: -(o.x + o.half),
            "top": lambda o: o.y - o.half,
            "bottom": lambda o: -(o.y + o.half),
        }[side]
        o = min(objs, key=key)
        return (
            f"Which object is closest to the {side} edge of the image, and how can you tell?",
            f"The {o.category} is closest to the {side} edge: it sits {where(o)}, "
            + (
                "and it is the only object in the image."
                if n == 1
                else "nearer that edge than any other shape."
            ),
        )
    if kind == "uniform_color":
        colors = sorted({o.color for o in objs})
        q = "Do all the shapes in the image have the same color? Explain."
        if len(colors) == 1:
            return q, f"Yes. Every object in the image is {colors[0]}: " + join(
                [noun_phrase(o) for o in objs]
            ) + "."
        return q, "No. " + " ".join(f"The {refer(scene, o) or o.category} is {o.color}." for o in objs)
    a, b = _pick_two(objs, rng)
    ra, rb = refer(scene, a) or a.category, refer(scene, b) or b.category
    if kind == "bigger":
        q = f"Which is bigger, the {ra} or the {rb}?"
        if a.size == b.size:
            return q, f"Neither: they are the same size, both {a.size}."
        big, small = (a, b) if a.size == "large" else (b, a)
        rbig, rsmall = refer(scene, big) or big.category, refer(scene, small) or small.category
        return q, f"The {rbig} is bigger; the {rsmall} is small."
    shared = [
        w
        for w, same in (
            ("color", a.color == b.color),
            ("shape", a.shape == b.shape),
            ("size", a.size == b.size),
        )
        if same
    ]
    q = f"What do the {ra} and the {rb} have in common?"
    if not shared:
        return q, f"Not much: they differ in color ({a.color} and {b.color}), shape and size."
    vals = {"color": a.color, "shape": a.shape, "size": a.size}
    return q, "They share the same " + join([f"{w} ({vals[w]})" for w in shared]) + "."


# ---------------------------------------------------------------- records


def record(rid: str, image: str, turns: list[tuple[str, str]], **extra) -> dict:
    """LLaVA record; the image marker appears once, at the start of the first human turn."""
    conv = []
    for i, (q, a) in enumerate(turns):
        conv.append({"from": "human", "value": f"{IMAGE}\n{q}" if i == 0 else q})
        conv.append({"from": "gpt", "value": a})
    return {"id": rid, "image": image, "conversations": conv, **extra}


def rich_record(rid: str, image: str, scene: Scene, rng: random.Random) -> dict:
    """One of LLaVA's three response types, with LLaVA-Instruct's rough mix."""
    u = rng.random()
    if u < 0.4:
        return record(rid, image, conversation(scene, rng), qtype="conversation")
    if u < 0.7:
        turns = [(rng.choice(DETAIL_PROMPTS), detailed_description(scene, rng))]
        return record(rid, image, turns, qtype="detail")
    return record(rid, image, [reasoning(scene, rng)], qtype="reasoning")


def qa_record(rid: str, image: str, questions: list[QA]) -> dict:
    """Several questions about one image as one multi-turn conversation (as LLaVA's data packs
    them); a question asked twice keeps its first turn only."""
    turns: dict[str, str] = {}
    for qa in questions:
        turns.setdefault(qa.question, qa.reply)
    return record(rid, image, list(turns.items()), qtype="questions")


def stage1_record(rid: str, image: str, caption: str, rng: random.Random) -> dict:
    return record(rid, image, [(rng.choice(BRIEF_PROMPTS), caption)])


def caption_record(rid: str, image: str, caption: str) -> dict:
    """A one-sentence caption asked as the COCO caption task asks it (``CAPTION_PROMPT``)."""
    return record(rid, image, [(CAPTION_PROMPT, caption)], qtype="caption")


# A yes/no reply names what the image shows before its verdict ("square, so no": ``reply``).
# Answered yes half the time, SmolLM2 learnt to name the value the question asks about instead
# (copying it is right whenever the answer is yes): binary shape 0.591. Answered yes a third of
# the time, copying pays less than looking: binary shape 0.818 (docs/demo-history.md). The
# verdict itself follows from the named value, so the share sets no prior on it.
YES_SHARE = 1 / 3
# A share of the yes/no and multiple-choice turns is asked with LLaVA's instructions
# (``SHORT_ANSWER``, ``MC_ANSWER``) and answered as benchmarks' rules read an answer ("No"; "red.
# The answer is B."), the rest for the world's own replies (``QA.as_llava``,
# ``questions.SEEN_SUFFIX``): asked as a benchmark asks, the model answers in a form its rule reads.
LLAVA_SHARE = 1 / 4
# A bare yes/no reply ("No") names nothing its verdict could follow from, so ``YES_SHARE`` would be
# a prior: answered yes a third of the time, the demo's models answered "No" to 49, 42 and 26 of
# the 50 POPE questions (seeds 2, 1, 0; POPE and MME ask yes and no equally often). Asked as LLaVA
# asks, a yes/no question is answered yes half the time.
LLAVA_YES_SHARE = 1 / 2


def single_questions(
    scene: Scene, rng: random.Random, k: int, llava: random.Random | None = None
) -> list[QA]:
    """k questions: half yes/no (answered yes with odds ``YES_SHARE``), a quarter MCQ, a quarter
    short; with ``llava`` (its own generator, so ``rng`` draws as many numbers as without it) each
    is asked as LLaVA asks with odds ``LLAVA_SHARE``, a yes/no one then answered yes with odds
    ``LLAVA_YES_SHARE``."""
    out = []
    for _ in range(k):
        as_llava = llava is not None and llava.random() < LLAVA_SHARE
        u = rng.random()
        if u < 0.5:
            yes = rng.random() < (LLAVA_YES_SHARE if as_llava else YES_SHARE)
            qa = sample_qa(scene, rng, "yesno", yes)
        else:
            qa = sample_qa(scene, rng, "mcq" if u < 0.75 else "short")
        out.append(qa.as_llava() if as_llava else qa)
    return out


def vicuna(turns: list[tuple[str, str]], system: bool = True) -> str:
    """vicuna_v1 rendering (system, ' USER: q ASSISTANT: a</s>' per turn), used for the text corpus."""
    out = SYSTEM + " " if system else ""
    for q, a in turns:
        out += f"USER: {q} ASSISTANT: {a}</s>"
    return out
