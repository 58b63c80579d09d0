"""MME: one folder per subtask, two yes/no questions per image; and the official result files.

Release layout, per subtask folder, either
  flat:  ``{subtask}/{stem}.jpg|png`` beside ``{stem}.txt``, or
  split: ``{subtask}/images/{stem}.*`` and ``{subtask}/questions_answers_YN/{stem}.txt``;
each ``.txt`` holds ``question<TAB>Yes|No`` lines (two per image). Sample ids are
``"{subtask}/{image file}/{k}"`` (k = the question's line, 0 or 1). Read for scoring
(``check_images=False``) no image is looked for, so an id names the image by its stem
(``"{subtask}/{stem}/{k}"``); ``match_ids`` lets predictions name it either way.

The official ``eval_tool/calculation.py`` reads ``{results_dir}/{subtask}.txt`` with lines
``image<TAB>question<TAB>ground truth<TAB>prediction`` where an image's two questions are
adjacent; ``write_results`` / ``read_results`` speak that layout.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from graft.eval.readers.base import IMAGE_MARKER, Collector, ReadResult, Sample
from graft.record_files import RecordError

PERCEPTION = "existence count position color posters celebrity scene landmark artwork OCR".split()
COGNITION = ["commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning"]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")


@dataclass
class MMEResult:
    """One answered MME question: a line of an official result file."""

    subtask: str
    image: str
    question: str
    answer: str  # ground truth, yes|no
    prediction: str
    where: str = ""


def _tab_lines(path: Path, columns: tuple[str, ...]) -> list[tuple[str, list[str]]]:
    """``("file:line", fields)`` of each non-blank line of ``path``, fields being ``columns``
    split at tabs; the ``answer`` column must be Yes or No and comes lower-cased."""
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields, k = line.split("\t"), columns.index("answer")
        if len(fields) != len(columns):
            raise RecordError(f"{path}:{n}: expected {'<TAB>'.join(columns)}, got {line!r:.80}")
        if fields[k].strip().lower() not in ("yes", "no"):
            raise RecordError(f"{path}:{n}: answer must be Yes or No, got {fields[k]!r}")
        fields[k] = fields[k].strip().lower()
        rows.append((f"{path}:{n}", fields))
    return rows


def _question_files(sub: Path) -> tuple[list[Path], Path]:
    """The question files of a subtask folder and the folder its images are in."""
    if (sub / "questions_answers_YN").is_dir():
        images = sub / "images" if (sub / "images").is_dir() else sub
        return sorted((sub / "questions_answers_YN").glob("*.txt")), images
    return sorted(sub.glob("*.txt")), sub


def subtask_dirs(root: Path) -> list[Path]:
    """Subtask folders under ``root`` in the official order, then any others by name."""
    dirs = {p.name: p for p in root.iterdir() if p.is_dir() and _question_files(p)[0]}
    order = [n for n in PERCEPTION + COGNITION if n in dirs] + sorted(set(dirs) - set(PERCEPTION + COGNITION))
    return [dirs[n] for n in order]


def read_mme(root: str | os.PathLike, skip_bad: bool = False, check_images: bool = True) -> ReadResult:
    """Every question of an MME release folder (or of one subtask folder); without
    ``check_images`` the images are not looked for (their question files suffice)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"MME folder not found: {root}")
    subs = [root] if _question_files(root)[0] else subtask_dirs(root)
    if not subs:
        raise FileNotFoundError(f"{root}: no MME subtask folder (no question .txt files)")
    out = Collector(skip_bad)
    for sub in subs:
        files, image_dir = _question_files(sub)
        for qfile in files:
            try:
                candidates = [image_dir / f"{qfile.stem}{suffix}" for suffix in IMAGE_SUFFIXES]
                image = (
                    next((p for p in candidates if p.is_file()), None)
                    if check_images
                    else image_dir / qfile.stem
                )
                if image is None:
                    raise RecordError(f"{qfile}: no image {qfile.stem}.jpg/.png in {image_dir}")
                rows = _tab_lines(qfile, ("question", "answer"))
                if len(rows) != 2:
                    raise RecordError(f"{qfile}: expected 2 question lines (MME pairs), found {len(rows)}")
            except RecordError as err:
                out.fail(str(err))
                continue
            for k, (where, (question, answer)) in enumerate(rows):
                meta = {"subtask": sub.name, "image_name": image.name, "question": question.strip()}
                prompt = f"{IMAGE_MARKER}\n{question.strip()}"
                out.add(Sample(f"{sub.name}/{image.name}/{k}", prompt, [image], answer, meta, where))
    return out.result


def _without_suffix(sample_id: str) -> str:
    parts = sample_id.rsplit("/", 2)
    if len(parts) == 3 and Path(parts[1]).suffix in IMAGE_SUFFIXES:
        parts[1] = Path(parts[1]).stem
    return "/".join(parts)


def match_ids(preds: Mapping[str, str], sample_ids: Iterable[str]) -> dict[str, str]:
    """Predictions keyed by the samples' own ids, where a prediction names the image with its
    suffix and the sample without (``existence/1.png/0`` -> ``existence/1/0``) or the other way
    round; other ids are kept as they are. Two predictions for one question are an error."""
    ids = set(sample_ids)
    by_stem = {_without_suffix(i): i for i in ids}
    out: dict[str, str] = {}
    source: dict[str, str] = {}
    for key, text in preds.items():
        target = key if key in ids else by_stem.get(_without_suffix(key), key)
        if target in out:
            raise RecordError(
                f"MME: predictions {source[target]!r} and {key!r} answer one question ({target!r})"
            )
        out[target], source[target] = text, key
    return out


def write_results(results_dir: str | os.PathLike, rows: list[MMEResult]) -> list[Path]:
    """Write ``{subtask}.txt`` files the official ``calculation.py`` reads; returns their paths."""
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    by_subtask: dict[str, list[MMEResult]] = {}
    for r in rows:
        by_subtask.setdefault(r.subtask, []).append(r)
    paths = []
    for subtask, items in by_subtask.items():
        # the official tool pairs adjacent lines: keep an image's two questions together
        items = sorted(items, key=lambda r: r.image)
        # tabs and newlines inside a field would shift the columns the tool splits on
        clean = [
            [" ".join(f.split()) for f in (r.image, r.question, r.answer.capitalize(), r.prediction)]
            for r in items
        ]
        path = results_dir / f"{subtask}.txt"
        path.write_text("".join("\t".join(c) + "\n" for c in clean), encoding="utf-8")
        paths.append(path)
    return paths


def read_results(results_dir: str | os.PathLike) -> list[MMEResult]:
    """Rows of every ``{subtask}.txt`` result file in ``results_dir``."""
    results_dir = Path(results_dir)
    files = sorted(results_dir.glob("*.txt"))
    if not files:
        raise FileNotFoundError(f"{results_dir}: no MME result files ({{subtask}}.txt)")
    columns = ("image", "question", "answer", "prediction")
    return [
        MMEResult(path.stem, *fields, where) for path in files for where, fields in _tab_lines(path, columns)
    ]
