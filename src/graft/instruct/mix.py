"""``graft mix``: one instruction-tuning file mixed from visual and text-only instruction data.

Parsing is ``mix_spec`` (the YAML), reading ``mix_sources`` (records checked by ``parse_record``),
the lock ``mix_lock``; here the records are chosen, given unique ids and portable image paths,
ordered, and written. ``build_mix`` chooses from a ``MixSpec``; ``rebuild_mix`` takes the choice
from a ``Lock`` instead, so the same lock always gives the same bytes. How many records and which
are chosen is ``mix_select``.

Output ids are unique: a record taken twice is ``id#2`` the second time; an id met in more than
one dataset becomes ``name:id`` in each of them. Image paths of a dataset with an ``image_root``
are rewritten relative to the output's folder (or absolute); others are left as written.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from graft.data.records import Record
from graft.files import write_text_atomic
from graft.instruct.mix_lock import Lock, LockedDataset, read_lock, write_lock
from graft.instruct.mix_select import choose, plan_counts
from graft.instruct.mix_sources import check_images as check_record_images
from graft.instruct.mix_sources import file_sha256, read_source
from graft.instruct.mix_spec import MixError, MixSpec, load_mix_spec
from graft.record_files import RecordError

__all__ = [
    "DatasetReport",
    "Lock",
    "MixError",
    "MixResult",
    "MixSpec",
    "build_mix",
    "format_summary",
    "load_mix_spec",
    "plan_counts",
    "read_lock",
    "rebuild_mix",
    "write_lock",
    "write_mix",
]
Chosen = list[tuple[Record, dict]]


@dataclass
class DatasetReport:
    name: str
    path: Path
    strategy: str
    available: int
    chosen: int
    with_images: int
    bad: int = 0


@dataclass
class MixResult:
    #: the output records, in the order written
    records: list[dict]
    lock: Lock
    reports: list[DatasetReport]
    #: what was done that the user should know: ids renamed, records repeated
    notes: list[str] = field(default_factory=list)


def _output_ids(names: list[str], chosen: list[list[str]], where: str) -> tuple[list[list[str]], list[str]]:
    """Unique output ids: a record's second copy is ``id#2``; an id met in more than one dataset
    becomes ``name:id`` in every one of them. Returns the ids and notes on what was renamed."""
    out, notes = [], []
    for ids in chosen:
        seen: Counter = Counter()
        renamed = []
        for rid in ids:
            seen[rid] += 1
            renamed.append(rid if seen[rid] == 1 else f"{rid}#{seen[rid]}")
        out.append(renamed)
    owners: dict[str, set[int]] = defaultdict(set)
    for d, ids in enumerate(out):
        for rid in ids:
            owners[rid].add(d)
    clash = {rid for rid, ds in owners.items() if len(ds) > 1}
    if clash:
        prefixed = sorted({names[d] for rid in clash for d in owners[rid]})
        notes.append(
            f"{len(clash)} {'id was' if len(clash) == 1 else 'ids were'} used by more than one dataset: "
            "prefixed with the dataset's name "
            f"(name:id) in {', '.join(prefixed)}"
        )
        out = [
            [f"{name}:{rid}" if rid in clash else rid for rid in ids]
            for name, ids in zip(names, out, strict=True)
        ]
    first: dict[str, str] = {}
    for name, ids in zip(names, out, strict=True):
        for rid in ids:
            if rid in first:
                raise MixError(
                    f"{where}: output id {rid!r} of {name} is also an id of {first[rid]}; rename one"
                )
            first[rid] = name
    return out, notes


def _image_rewriter(root: Path | None, out_dir: Path, absolute: bool) -> Callable[[str], str]:
    if root is None:
        return lambda image: image
    if absolute:
        return lambda image: Path(os.path.abspath(root / image)).as_posix()
    return lambda image: Path(
        os.path.relpath(os.path.abspath(root / image), os.path.abspath(out_dir))
    ).as_posix()


def _image_file(root: Path | None, out_dir: Path) -> Callable[[str], Path]:
    """Where an image of the mixed file is: under its dataset's root, else beside the output."""
    return lambda image: (root if root is not None else out_dir) / image


def _assemble(locked: list[LockedDataset], picks: list[Chosen], out: Path, absolute: bool, where: str):
    ids, notes = _output_ids([d.name for d in locked], [d.chosen for d in locked], where)
    records: list[dict] = []
    for d, chosen, new_ids in zip(locked, picks, ids, strict=True):
        rewrite = _image_rewriter(d.image_root, out.parent, absolute)
        for (record, raw), new_id in zip(chosen, new_ids, strict=True):
            raw = dict(raw)
            if new_id != record.id:
                raw["id"] = new_id
            if "image" in raw:
                raw["image"] = rewrite(raw["image"])
            elif raw.get("images"):
                raw["images"] = [rewrite(image) for image in raw["images"]]
            records.append(raw)
        distinct = len(set(d.chosen))
        if len(chosen) > distinct:
            notes.append(
                f"{d.name}: sampled with replacement: {len(chosen)} records from {distinct} distinct ones "
                "(the strategy asks for more than the file has); copies get ids id#2, id#3, ..."
            )
    return records, notes


def _report(d: LockedDataset, available: int, bad: int, chosen: Chosen) -> DatasetReport:
    with_images = sum(1 for record, _ in chosen if record.images)
    return DatasetReport(d.name, d.path, d.strategy, available, len(chosen), with_images, bad)


def build_mix(
    spec: MixSpec,
    out: str | os.PathLike,
    *,
    skip_bad: bool = False,
    check_images: bool = False,
    absolute_images: bool = False,
    shuffle: bool = True,
) -> MixResult:
    """Read, check and choose every dataset of ``spec``; the records as ``out`` will hold them."""
    out, where = Path(out), str(spec.source or "mixture")
    locked, picks, reports = [], [], []
    sources = [
        read_source(
            d.path,
            d.name,
            f"{where}: {d.label}",
            skip_bad,
            _image_file(d.image_root, out.parent) if check_images else None,
        )
        for d in spec.datasets
    ]
    counts = plan_counts(spec, [len(s.records) for s in sources])
    for d, source, k in zip(spec.datasets, sources, counts, strict=True):
        rng = random.Random(f"graft-mix:{spec.seed}:{d.name}")
        chosen = [source.records[i] for i in choose(d.strategy, len(source.records), k, rng)]
        text = str(d.strategy) + (f" ({k} records)" if d.strategy.kind == "weight" else "")
        lock = LockedDataset(d.name, d.path, source.sha256, text, d.image_root, [r.id for r, _ in chosen])
        locked.append(lock)
        picks.append(chosen)
        reports.append(_report(lock, len(source.records), sum(source.bad.values()), chosen))
    records, notes = _assemble(locked, picks, out, absolute_images, where)
    if shuffle:
        random.Random(f"graft-mix:{spec.seed}:order").shuffle(records)
    order = [str(r["id"]) for r in records]
    return MixResult(records, Lock(locked, order, spec.seed, shuffle, absolute_images), reports, notes)


def rebuild_mix(
    lock: Lock, out: str | os.PathLike, *, check_images: bool = False, where: str = "lock"
) -> MixResult:
    """The mixture a lock records, from its source files (each must still have its sha256)."""
    out = Path(out)
    picks, reports = [], []
    for i, d in enumerate(lock.datasets):
        label = f"{where}: datasets[{i}] ({d.path})"
        if not d.path.is_file():
            raise MixError(f"{label}: field 'path': file not found: {d.path}")
        sha = file_sha256(d.path)
        if sha != d.sha256:
            raise MixError(
                f"{label}: field 'sha256': the file has changed since the lock was written (it is now "
                f"{sha[:12]}..., the lock has {d.sha256[:12]}...); rebuild from the mixture file instead"
            )
        source = read_source(d.path, d.name, label, skip_bad=True, sha256=sha)
        by_id = {record.id: (record, raw) for record, raw in source.records}
        missing = [rid for rid in d.chosen if rid not in by_id]
        if missing:
            raise MixError(f"{label}: field 'chosen': id {missing[0]!r} is not a usable record of the file")
        chosen = [by_id[rid] for rid in d.chosen]
        if check_images:
            image_file = _image_file(d.image_root, out.parent)
            try:
                for record, raw in chosen:
                    check_record_images(record, raw, image_file)
            except RecordError as err:
                raise MixError(f"{label}: {err}") from None
        picks.append(chosen)
        reports.append(_report(d, len(source.records), sum(source.bad.values()), chosen))
    records, notes = _assemble(lock.datasets, picks, out, lock.absolute_images, where)
    by_out = {str(r["id"]): r for r in records}
    if sorted(by_out) != sorted(lock.order) or len(lock.order) != len(records):
        raise MixError(f"{where}: field 'order' does not list exactly the records the datasets choose")
    return MixResult([by_out[rid] for rid in lock.order], lock, reports, notes)


def mix_text(records: list[dict], out: str | os.PathLike) -> str:
    """A ``.jsonl`` file holds one record per line; any other file a JSON list, one record a line."""
    lines = [json.dumps(record, ensure_ascii=False) for record in records]
    if Path(out).suffix == ".jsonl":
        return "".join(line + "\n" for line in lines)
    return "[\n" + ",\n".join(lines) + "\n]\n"


def write_mix(result: MixResult, out: str | os.PathLike, lock_path: str | os.PathLike | None = None) -> None:
    """Write the mixed file (atomically), then its lock when ``lock_path`` is given."""
    write_text_atomic(out, mix_text(result.records, out))
    if lock_path is not None:
        write_lock(result.lock, lock_path)


def format_summary(result: MixResult) -> str:
    """A table: per dataset the usable records, those chosen, with and without images; the total."""
    head = ("dataset", "strategy", "available", "bad", "chosen", "images", "text-only")
    rows = [
        (r.name, r.strategy, r.available, r.bad, r.chosen, r.with_images, r.chosen - r.with_images)
        for r in result.reports
    ]
    chosen = sum(r.chosen for r in result.reports)
    images = sum(r.with_images for r in result.reports)
    available = sum(r.available for r in result.reports)
    bad = sum(r.bad for r in result.reports)
    rows.append(("total", "", available, bad, chosen, images, chosen - images))
    table = [tuple(map(str, row)) for row in (head, *rows)]
    widths = [max(len(row[c]) for row in table) for c in range(len(head))]
    lines = [
        "  ".join(
            cell.ljust(w) if c < 2 else cell.rjust(w)
            for c, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in table
    ]
    return "\n".join([*(line.rstrip() for line in lines), *(f"note: {note}" for note in result.notes)])
