"""Choosing the records of each dataset of a mixture: how many, and which.

Per dataset (``n`` usable records, in file order): ``all`` takes them all; ``first:P%`` the first
``floor(n * P / 100)`` (at least 1); ``random:N`` and ``weight:W`` draw ``k`` records with a
generator seeded by the seed and the dataset's name: ``k <= n`` draws without replacement; ``k > n``
(``weight``, or ``random`` with ``replace: true``) takes every record ``k // n`` times and draws the
other ``k % n`` without replacement. Drawn records keep their file order. Weighted datasets share
``total`` minus the fixed datasets' records in proportion to their weights (largest remainders,
ties to the earlier dataset); one whose share comes to 0 records is an error.
"""

from __future__ import annotations

import math
import random
from fractions import Fraction

from graft.instruct.mix_spec import MixError, MixSpec, Strategy


def largest_remainder(total: int, weights: list[Fraction]) -> list[int]:
    """``total`` split in proportion to ``weights``: floors, then one more to the largest remainders."""
    quotas = [total * w / sum(weights) for w in weights]
    counts = [math.floor(q) for q in quotas]
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def plan_counts(spec: MixSpec, available: list[int]) -> list[int]:
    """How many records each dataset contributes, given how many usable records each has."""
    where = str(spec.source or "mixture")
    counts: list[int | None] = []
    for d, n in zip(spec.datasets, available, strict=True):
        s = d.strategy
        if s.kind == "all":
            counts.append(n)
        elif s.kind == "first":
            counts.append(max(1, math.floor(n * s.amount / 100)))
        elif s.kind == "random":
            if s.amount > n and not d.replace:
                raise MixError(
                    f"{where}: {d.label}: field 'strategy': {s} asks for more records than the {n} usable "
                    "ones; lower N, or set replace: true to repeat records"
                )
            counts.append(int(s.amount))
        else:
            counts.append(None)
    weighted = [i for i, c in enumerate(counts) if c is None]
    if weighted:
        fixed = sum(c for c in counts if c is not None)
        left = spec.total - fixed
        shares = largest_remainder(max(left, 0), [spec.datasets[i].strategy.amount for i in weighted])
        for i, share in zip(weighted, shares, strict=True):
            if share == 0:
                raise MixError(
                    f"{where}: {spec.datasets[i].label}: field 'strategy': {spec.datasets[i].strategy} comes "
                    f"to 0 records (total {spec.total}, of which {fixed} go to the other datasets); "
                    "raise 'total' or the weight"
                )
            counts[i] = share
    return counts  # type: ignore[return-value]


def choose(strategy: Strategy, n: int, k: int, rng: random.Random) -> list[int]:
    """The indices (into ``n`` usable records, file order) of the ``k`` records a strategy takes."""
    if strategy.kind in ("all", "first"):
        return list(range(k))
    whole, part = divmod(k, n)
    return sorted(list(range(n)) * whole + rng.sample(range(n), part))
