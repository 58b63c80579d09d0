"""The LLM's text corpus: the world's language, and question answering over a caption context.

A tiny LLM trained on instruction data alone never learned to compare the words of a
question with what the image shows. So the text pretraining already teaches that skill, in
the exact chat format stage 2 uses, with the image replaced by a caption ("Context: ...").
Stage 1 then only has to map images into caption space.
"""

from __future__ import annotations

import random

from .describe import context_text, detailed_description, ordered_caption
from .instructions import conversation, reasoning, single_questions, vicuna
from .scene import Scene

DOC_SEP = "\n\n"  # documents never contain a blank line, so this splits the file back into them
# The system prompt is a third of a QA document's tokens and carries nothing to learn after the
# first few hundred copies: keep it on a share of documents (so the model knows the full format)
# and spend the rest of a tiny compute budget on the questions.
SYSTEM_SHARE = 0.3


def context_for(scene: Scene, caps: list[str], rng: random.Random, axis: str | None = None) -> str:
    """Mostly one caption (what stage 1 teaches an image to stand for), sometimes the full description.

    A position question gets the caption that orders objects along its axis: an image always
    holds the answer, so the text stand-in must too, or the model learns to guess.
    """
    if axis is not None:
        return ordered_caption(scene, axis)
    return context_text(scene) if rng.random() < 0.1 else rng.choice(caps)


def corpus_docs(scene: Scene, caps: list[str], rng: random.Random, qa_per_image: int = 6) -> list[str]:
    docs = [rng.choice(caps)]
    if rng.random() < 0.3:
        docs.append(detailed_description(scene, rng))
    # Questions come one to four per context (a multi-turn chat): the context and system prompt
    # cost most of a document's tokens, so sharing them puts more answers in the same compute.
    qas = single_questions(scene, rng, qa_per_image)
    while qas:
        group = [qas.pop()]
        for _ in range(rng.choice([0, 1, 2, 3])):
            if qas and qas[-1].axis in (None, group[0].axis):
                group.append(qas.pop())
        axis = next((qa.axis for qa in group if qa.axis), None)
        turns = [(qa.question, qa.answer) for qa in group]
        turns[0] = (f"Context: {context_for(scene, caps, rng, axis)}\n{turns[0][0]}", turns[0][1])
        docs.append(vicuna(turns, rng.random() < SYSTEM_SHARE))
    # Some sentence-length answers too, so the model can still talk after learning one-word replies.
    if rng.random() < 0.5:
        turns = conversation(scene, rng) if rng.random() < 0.6 else [reasoning(scene, rng)]
        q0, a0 = turns[0]
        turns[0] = (f"Context: {context_for(scene, caps, rng)}\n{q0}", a0)
        docs.append(vicuna(turns, rng.random() < SYSTEM_SHARE))
    return docs
