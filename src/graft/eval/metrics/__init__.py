"""Scorers equal to the benchmarks' reference tools, one file per family."""

from graft.eval.metrics.caption import caption_scores
from graft.eval.metrics.choice import ChoiceRow, choice_scores, extract_choice
from graft.eval.metrics.demon import category_scores, rouge_l, score_tasks
from graft.eval.metrics.judge import ChatClient, JudgeConfig, LLMChoiceMatcher, judge_scores, parse_scores
from graft.eval.metrics.mme import mme_scores
from graft.eval.metrics.pope import pope_scores

__all__ = [
    "ChatClient",
    "ChoiceRow",
    "JudgeConfig",
    "LLMChoiceMatcher",
    "caption_scores",
    "category_scores",
    "choice_scores",
    "extract_choice",
    "judge_scores",
    "mme_scores",
    "parse_scores",
    "pope_scores",
    "rouge_l",
    "score_tasks",
]
