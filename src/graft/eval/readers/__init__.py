"""Readers of real benchmark layouts, one file per format; each returns ``ReadResult`` of ``Sample``."""

from graft.eval.readers.base import IMAGE_MARKER, ReadResult, Sample
from graft.eval.readers.coco import read_coco_captions
from graft.eval.readers.demon import read_demon, read_demon_task
from graft.eval.readers.llava_bench import read_llava_bench
from graft.eval.readers.mmbench import read_mmbench
from graft.eval.readers.mme import read_mme
from graft.eval.readers.pope import read_pope
from graft.eval.readers.questions import read_questions
from graft.eval.readers.scienceqa import read_scienceqa

__all__ = [
    "IMAGE_MARKER",
    "ReadResult",
    "Sample",
    "read_coco_captions",
    "read_demon",
    "read_demon_task",
    "read_llava_bench",
    "read_mmbench",
    "read_mme",
    "read_pope",
    "read_questions",
    "read_scienceqa",
]
