"""The LLM's text corpus: the world's language, and question answering over a caption context.

A tiny LLM trained on instruction data alone never learned to compare the words of a
question with what the image shows. So the text pretraining already teaches that skill, in
the exact chat format stage 2 uses, with the image replaced by a caption ("Context: ...").
Stage 1 then only has to map images into caption space.

The answers are the scarce signal (one token in a question of ~25), so QA documents are
drills: one short context, then several questions about it. Multiple choice is taught in two
steps as well as in one: a short question ("What color is the circle?" -> "red") followed by
the same question with lettered options, so the model can learn "find the option that says
red" apart from "find the circle's colour" before it has to chain them.
"""

from __future__ import annotations

import random

from .describe import context_text, detailed_description, ordered_caption
from .instructions import conversation, reasoning, vicuna
from .questions import LETTERS, QA, mcq, sample_qa, short
from .scene import Scene

DOC_SEP = "\n\n"  # documents never contain a blank line, so this splits the file back into them
# The system prompt costs more tokens than a question and carries nothing to learn after the
# first few hundred copies: keep it on a share of documents (so the model knows the full format)
# and spend the rest of a tiny compute budget on questions.
SYSTEM_SHARE = 0.2
DRILL_QUESTIONS = (3, 6)  # questions per context in a QA drill (inclusive range)


def context_for(scene: Scene, caps: list[str], rng: random.Random, axis: str | None = None) -> str:
    """Mostly one caption (what stage 1 teaches an image to stand for), sometimes the full description.

    A position question gets the caption that orders objects along its axis: an image always
    holds the answer, so the text stand-in must too, or the model learns to guess.
    """
    if axis is not None:
        return ordered_caption(scene, axis)
    return context_text(scene) if rng.random() < 0.1 else rng.choice(caps)


def _drill_question(scene: Scene, rng: random.Random) -> list[QA]:
    """One question (half yes/no, a third MCQ, the rest short), or a short -> MCQ scaffold pair."""
    u = rng.random()
    if u < 0.5:
        return [sample_qa(scene, rng, "yesno")]
    if u < 0.72:
        return [sample_qa(scene, rng, "mcq")]
    if u < 0.85:
        return [sample_qa(scene, rng, "short")]
    # Scaffold: the short answer first, then the same question as lettered options.
    fams = ["color", "shape", "count", "existence"]
    rng.shuffle(fams)
    for fam in fams:
        s = short(scene, rng, fam)
        m = mcq(scene, rng, fam)
        if s is None or m is None or fam == "existence":
            continue
        stem = m.question.split("\n")[0]
        if s.question.startswith(stem.rstrip("?")):  # same question asked both ways
            answer = m.choices[LETTERS.index(m.answer)]
            if answer == s.answer:
                return [s, m]
    return [sample_qa(scene, rng, "mcq")]


def qa_drill(scene: Scene, caps: list[str], rng: random.Random) -> str:
    """A context and several questions about it, as one vicuna_v1 chat."""
    n = rng.randint(*DRILL_QUESTIONS)
    qas: list[QA] = []
    while len(qas) < n:
        qas += _drill_question(scene, rng)
    # Questions whose answer depends on order along an axis need the caption ordered that way.
    axis = next((qa.axis for qa in qas if qa.axis), None)
    seen: set[str] = set()
    qas = [qa for qa in qas if qa.axis in (None, axis) and not (qa.question in seen or seen.add(qa.question))]
    turns = [(qa.question, qa.answer) for qa in qas]
    turns[0] = (f"Context: {context_for(scene, caps, rng, axis)}\n{turns[0][0]}", turns[0][1])
    return vicuna(turns, rng.random() < SYSTEM_SHARE)


def corpus_docs(scene: Scene, caps: list[str], rng: random.Random, qa_per_image: int = 6) -> list[str]:
    """Documents for one training scene: a caption, sometimes a description, QA drills holding about
    `qa_per_image` questions in all, and sometimes a conversation with sentence-length answers."""
    docs = [rng.choice(caps)]
    if rng.random() < 0.3:
        docs.append(detailed_description(scene, rng))
    per_drill = sum(DRILL_QUESTIONS) / 2
    for _ in range(max(1, round(qa_per_image / per_drill))):
        docs.append(qa_drill(scene, caps, rng))
    # Some sentence-length answers too, so the model can still talk after learning one-word replies.
    if rng.random() < 0.4:
        turns = conversation(scene, rng) if rng.random() < 0.6 else [reasoning(scene, rng)]
        q0, a0 = turns[0]
        turns[0] = (f"Context: {context_for(scene, caps, rng)}\n{q0}", a0)
        docs.append(vicuna(turns, rng.random() < SYSTEM_SHARE))
    return docs
