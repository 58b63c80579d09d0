"""What every benchmark reader returns: samples with a prompt, images, a target and metadata.

A reader turns one real benchmark layout into ``Sample`` rows. The prompt is the user turn with
one ``<image>`` marker per image, in the order of ``images`` (readers place them where the
benchmark puts them); the runner swaps the marker for the processor's own token. ``target`` is
the reference answer in the family's form (a string, a list of reference captions, an option
letter); ``meta`` holds what the scorer needs beyond it (split, subtask, choices, category).

Bad records raise ``RecordError`` naming file, line or record and field; with
``skip_bad=True`` a reader keeps going and returns the messages of the rows it skipped.

Every reader takes ``check_images``: on (the default) for answering, where a record naming a
missing image is bad; off for scoring, which needs the annotations only, so no image is looked
for or opened (``graft score`` reads this way).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graft.config import DEFAULT_IMAGE_TOKEN
from graft.record_files import RecordError, UniqueIds

logger = logging.getLogger(__name__)
#: the marker readers write; the runner swaps in the processor's own image token
IMAGE_MARKER = DEFAULT_IMAGE_TOKEN


@dataclass
class Sample:
    id: str | int
    prompt: str
    images: list[Path]
    target: Any
    meta: dict[str, Any] = field(default_factory=dict)
    where: str = ""


@dataclass
class ReadResult:
    """Samples read, and one message per record skipped as bad (only with ``skip_bad``)."""

    samples: list[Sample]
    bad: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self):  # noqa: ANN204
        return iter(self.samples)


def first_samples(
    samples: list[Sample], limit: int, group: str | None = None, unit: str | None = None
) -> list[Sample]:
    """The first ``limit`` samples. With ``group`` (a ``meta`` key: MME's subtask, DEMON's task)
    they are taken from every group in turn, a unit at a time (the samples of a group that share
    ``meta[unit]``, e.g. the two questions of an MME image, which its acc+ scores together), so
    that a limited run covers every group and not only the first; kept in the samples' order."""
    if group is None or len(samples) <= limit:
        return samples[:limit]
    groups: dict[Any, dict[Any, list[int]]] = {}
    for i, sample in enumerate(samples):
        key = sample.meta.get(unit, i) if unit else i
        groups.setdefault(sample.meta.get(group), {}).setdefault(key, []).append(i)
    queues = [list(units.values()) for units in groups.values()]
    chosen: list[int] = []
    for turn in range(max(len(q) for q in queues)):
        for queue in queues:
            if turn < len(queue) and len(chosen) < limit:
                chosen += queue[turn]
    return [samples[i] for i in sorted(chosen[:limit])]


class Collector:
    """Accumulates samples; a bad record raises, or is logged and counted when ``skip_bad``.
    ``image`` checks an image path unless ``check_images`` is off."""

    def __init__(self, skip_bad: bool, check_images: bool = True) -> None:
        self.skip_bad = skip_bad
        self.check_images = check_images
        self.result = ReadResult([])
        self._ids = UniqueIds()

    def add(self, sample: Sample) -> None:
        try:
            # ids key predictions and resumption: a repeated id would be scored twice or never
            self._ids.add(sample.id, sample.where)
        except RecordError as err:
            self.fail(str(err))
            return
        self.result.samples.append(sample)

    def collect(self, records: Iterable[tuple[Any, str]], make: Callable[[Any, str], Any]) -> ReadResult:
        """``make(record, where)`` for each record: a ``Sample`` it returns is added, anything
        else (None) passes the record over, a ``RecordError`` fails it."""
        for record, where in records:
            try:
                sample = make(record, where)
            except RecordError as err:
                self.fail(str(err))
                continue
            if isinstance(sample, Sample):
                self.add(sample)
        return self.result

    def skip(self, err: RecordError) -> None:
        """``fail`` for a record reading hands over (``on_bad`` of ``graft.record_files``)."""
        self.fail(str(err))

    def fail(self, message: str) -> None:
        if not self.skip_bad:
            raise RecordError(message)
        logger.warning("skipping bad record: %s", message)
        self.result.bad.append(message)

    def image(self, path: Path, where: str) -> Path:
        """``path``, checked to be a file unless reading to score (no image is looked for)."""
        if self.check_images and not path.is_file():
            raise RecordError(f"{where}: image not found: {path}")
        return path


def need(record: dict, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """``record[key]``, checked to be of ``kind``; the error names the place and the field."""
    if key not in record:
        raise RecordError(f"{where}: missing field {key!r}")
    value, kinds = record[key], kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds:
        names = "/".join(k.__name__ for k in kinds)
        raise RecordError(f"{where}: field {key!r} must be {names}, got {value!r:.80}")
    return value


def image_folder(beside: Path, image_root: str | os.PathLike | None) -> Path:
    """``image_root`` if given, else ``images/`` in ``beside`` when that exists, else ``beside``."""
    if image_root is not None:
        return Path(image_root)
    return beside / "images" if (beside / "images").is_dir() else beside
