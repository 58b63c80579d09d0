"""The perception warm-up's data on the shapes world: the demo's ``perceive`` step, between the
word alignment (or stage 1) and stage 2.

After the word alignment an image's soft tokens are the LLM's own colour words, yet the answer
position still has to learn to read them: from one bit per yes/no question, stage 2's mixture
of formats does not teach it in 80 steps. Questions that the image alone decides and that need
no binding ("Is there a red object in the image?", "Which of these colors is in the image?")
teach it first, in both answer formats the held-out evaluation asks (measured:
docs/demo-history.md).
"""

from __future__ import annotations

import os
import random
from typing import Any

from graft.world.diagnostics import presence_questions, question_training_records


def perception_records(world_dir: str | os.PathLike, seed: int = 0) -> list[dict[str, Any]]:
    """One yes/no colour-presence record per training image (its reply lists every object, then
    the verdict: ``questions.presence``) and one letter-answer record per training image that
    leaves three colours out, shuffled."""
    rows = presence_questions(world_dir, "train", "color", seed)
    rows += presence_questions(world_dir, "train", "color", seed, choice=True)
    records = question_training_records(rows)
    random.Random(f"perceive-{seed}").shuffle(records)
    return records
