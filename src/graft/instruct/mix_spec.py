"""The mixture file of ``graft mix``: which datasets, how many records of each, which seed.

A mixture is a YAML list of datasets, or a mapping with ``datasets:`` and the top-level ``seed:``
(default 0) and ``total:`` (the size of the whole mixture, needed by ``weight:W``). Each dataset is
``{path, strategy, name?, image_root?, replace?}``; paths are relative to the mixture file. Every
problem is a ``MixError`` naming the file, the dataset (index and path) and the field.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from graft.record_files import RecordError, decode_utf8

STRATEGIES = "all, first:N%, random:N or weight:W"
_DATASET_KEYS = {"path", "strategy", "name", "image_root", "replace", "weight"}
_TOP_KEYS = {"datasets", "seed", "total"}
_STRATEGY = re.compile(r"^\s*([a-z_]+)\s*(?::\s*(.*?))?\s*$")


class MixError(ValueError):
    """A mixture (or lock) that cannot be built; the message names the dataset and the field."""


@dataclass(frozen=True)
class Strategy:
    """``all``; ``first`` (``amount`` percent); ``random`` (``amount`` records); ``weight``."""

    kind: str
    amount: Fraction | int | None = None

    def __str__(self) -> str:
        if self.kind == "all":
            return "all"
        amount = self.amount if not isinstance(self.amount, Fraction) else _number_text(self.amount)
        return f"{self.kind}:{amount}{'%' if self.kind == 'first' else ''}"


@dataclass
class DatasetSpec:
    index: int
    #: the path as written in the mixture, and resolved against the mixture's folder
    written: str
    path: Path
    name: str
    strategy: Strategy
    image_root: Path | None = None
    replace: bool = False

    @property
    def label(self) -> str:
        return f"datasets[{self.index}] ({self.written})"


@dataclass
class MixSpec:
    datasets: list[DatasetSpec]
    seed: int = 0
    total: int | None = None
    source: Path | None = None


def _number_text(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else str(float(value))


def parse_strategy(text: Any, where: str, key: str = "strategy") -> Strategy:
    """``"all"``, ``"first:N%"``, ``"random:N"`` or ``"weight:W"``; ``where`` prefixes errors."""
    field = f"{where}: field {key!r}"
    if not isinstance(text, str):
        raise MixError(f"{field}: expected a string ({STRATEGIES}), got {text!r}")
    match = _STRATEGY.match(text)
    kind, arg = (match.group(1), match.group(2)) if match else ("", None)
    if kind == "all" and arg is None:
        return Strategy("all")
    if kind == "first" and arg:
        if not arg.endswith("%"):
            raise MixError(f"{field}: first:N% takes a percentage, got {text!r} (write e.g. first:10%)")
        percent = _positive(arg[:-1].strip(), f"{field}: {text!r}")
        if percent > 100:
            raise MixError(f"{field}: {text!r} asks for more than 100% of the file")
        return Strategy("first", percent)
    if kind == "random" and arg:
        count = _positive(arg, f"{field}: {text!r}")
        if count.denominator != 1:
            raise MixError(f"{field}: {text!r}: random:N takes a whole number of records")
        return Strategy("random", int(count))
    if kind == "weight" and arg:
        return Strategy("weight", _positive(arg, f"{field}: {text!r}"))
    raise MixError(f"{field}: unknown strategy {text!r}; expected {STRATEGIES}")


def _positive(text: Any, where: str) -> Fraction:
    try:
        value = Fraction(str(text).strip())
    except (ValueError, ZeroDivisionError):
        raise MixError(f"{where}: {text!r} is not a number") from None
    if value <= 0:
        raise MixError(f"{where}: the number must be above 0, got {text}")
    return value


def _dataset(raw: Any, index: int, base: Path, where: str) -> DatasetSpec:
    if isinstance(raw, str):
        raise MixError(f"{where}: datasets[{index}] is {raw!r}; give a mapping {{path, strategy}}")
    if not isinstance(raw, dict):
        raise MixError(f"{where}: datasets[{index}] must be a mapping {{path, strategy}}, got {raw!r}")
    written = raw.get("path")
    if not isinstance(written, str) or not written.strip():
        raise MixError(f"{where}: datasets[{index}]: field 'path' is missing or not a string")
    here = f"{where}: datasets[{index}] ({written})"
    unknown = sorted(set(raw) - _DATASET_KEYS)
    if unknown:
        raise MixError(f"{here}: unknown field {unknown[0]!r}; expected {', '.join(sorted(_DATASET_KEYS))}")
    if "weight" in raw and "strategy" in raw:
        raise MixError(f"{here}: field 'weight': give either 'strategy' or 'weight', not both")
    if "weight" in raw:
        strategy = parse_strategy(f"weight:{raw['weight']}", here, "weight")
    elif "strategy" in raw:
        strategy = parse_strategy(raw["strategy"], here)
    else:
        raise MixError(f"{here}: field 'strategy' is missing; expected {STRATEGIES}")
    replace = raw.get("replace", False)
    if not isinstance(replace, bool):
        raise MixError(f"{here}: field 'replace' must be true or false, got {replace!r}")
    if replace and strategy.kind != "random":
        raise MixError(f"{here}: field 'replace' applies to random:N only (weight:W repeats as it must)")
    path = base / os.path.expanduser(written)
    name = raw.get("name", Path(written).stem)
    if not isinstance(name, str) or not name.strip():
        raise MixError(f"{here}: field 'name' must be a non-empty string, got {name!r}")
    root = raw.get("image_root")
    if root is not None and (not isinstance(root, str) or not root.strip()):
        raise MixError(f"{here}: field 'image_root' must be a folder path, got {root!r}")
    image_root = base / os.path.expanduser(root) if root else None
    return DatasetSpec(index, written, path, name.strip(), strategy, image_root, replace)


def _int_field(data: dict, key: str, where: str, positive: bool) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or (positive and value <= 0):
        kind = "a positive whole number" if positive else "a whole number"
        raise MixError(f"{where}: field {key!r} must be {kind}, got {value!r}")
    return value


def mix_spec_from_data(data: Any, base: str | os.PathLike = ".", where: str = "mixture") -> MixSpec:
    """A ``MixSpec`` from the YAML's data; dataset paths are resolved against ``base``."""
    base = Path(base)
    if isinstance(data, list):
        data = {"datasets": data}
    if not isinstance(data, dict):
        raise MixError(f"{where}: expected a list of datasets or a mapping with 'datasets', got {data!r:.80}")
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise MixError(f"{where}: unknown field {unknown[0]!r}; expected datasets, seed, total")
    raw_datasets = data.get("datasets")
    if not isinstance(raw_datasets, list) or not raw_datasets:
        raise MixError(f"{where}: field 'datasets' must be a non-empty list of datasets")
    datasets = [_dataset(raw, i, base, where) for i, raw in enumerate(raw_datasets)]
    names: dict[str, DatasetSpec] = {}
    for d in datasets:
        if d.name in names:
            raise MixError(
                f"{where}: {d.label}: field 'name': {d.name!r} is already the name of "
                f"{names[d.name].label}; give each dataset its own name"
            )
        names[d.name] = d
    seed = _int_field(data, "seed", where, positive=False) or 0
    total = _int_field(data, "total", where, positive=True)
    weighted = [d for d in datasets if d.strategy.kind == "weight"]
    if weighted and total is None:
        raise MixError(f"{where}: {weighted[0].label}: weight:W needs the top-level field 'total'")
    if total is not None and not weighted:
        raise MixError(f"{where}: field 'total' is only used with weight:W datasets, and there are none")
    return MixSpec(datasets, seed, total)


def load_mix_spec(path: str | os.PathLike) -> MixSpec:
    """Read a mixture YAML file (``yaml.safe_load``); dataset paths are relative to its folder."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise MixError(f"mixture file not found: {path}")
    try:
        data = yaml.safe_load(decode_utf8(path.read_bytes(), path))
    except RecordError as err:  # not UTF-8
        raise MixError(str(err)) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise MixError(f"{path}{line}: not valid YAML ({problem})") from None
    spec = mix_spec_from_data(data, path.parent, str(path))
    spec.source = path
    return spec
