"""Evaluation: question files, prediction files, and (elsewhere in this package) benchmark tasks."""

from graft.eval.answers import score_answer
from graft.eval.predict import predict_jsonl
from graft.eval.questions import evaluate_question_files
from graft.eval.readers.questions import read_questions

__all__ = ["evaluate_question_files", "predict_jsonl", "read_questions", "score_answer"]
