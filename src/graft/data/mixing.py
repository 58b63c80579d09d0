"""``MixedBatchSampler``: every batch takes a fixed number of samples from each data source.

Cheetah trains VPG-C on batches of 64 caption samples and 24 synthetic difference pairs: the
mix is per batch, not per epoch, so every optimisation step sees both kinds. ``shares`` gives
each source's relative weight (``[64, 24]``); a batch of ``batch_size`` takes the
largest-remainder rounding of ``batch_size * share / sum(shares)`` from each source (11 ->
8 + 3), and every source with a positive share gets at least one slot.

An epoch is one pass over the first source (the main data); the other sources are cycled,
reshuffled each time they run out. The order depends only on ``seed + epoch``, so a resumed
run (``start_batch``) sees the same batches. With several processes, global batches are dealt
round-robin: rank r takes batches r, r + n, ... (a trailing partial round is dropped, so every
rank has the same count).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence

import numpy as np

from graft.data.sampler import EpochBatchSampler


def batch_counts(shares: Sequence[float], batch_size: int) -> list[int]:
    """Samples per source in a batch of ``batch_size``: largest remainders, at least one each."""
    if len(shares) < 1 or any(s < 0 for s in shares) or sum(shares) <= 0:
        raise ValueError(f"mix shares must be non-negative with a positive sum, got {list(shares)}")
    active = [i for i, s in enumerate(shares) if s > 0]
    if batch_size < len(active):
        raise ValueError(f"batch_size {batch_size} cannot hold one sample from each of {len(active)} sources")
    exact = [batch_size * s / sum(shares) for s in shares]
    counts = [int(e) for e in exact]
    for i in active:  # a source the user asked for never rounds away to nothing
        counts[i] = max(counts[i], 1)
    order = sorted(active, key=lambda i: exact[i] - int(exact[i]), reverse=True)
    k = 0
    while sum(counts) < batch_size:
        counts[order[k % len(order)]] += 1
        k += 1
    while sum(counts) > batch_size:  # only when the at-least-one rule overshot
        largest = max(active, key=lambda i: counts[i])
        counts[largest] -= 1
    return counts


class MixedBatchSampler(EpochBatchSampler):
    """Batches of dataset indices with a fixed count from each source (see the module doc);
    ``source_names`` (each source's file) name a source in the errors."""

    def __init__(
        self,
        source_of: Sequence[int],
        shares: Sequence[float],
        batch_size: int,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        start_batch: int = 0,
        source_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__(batch_size, seed, num_replicas, rank, start_batch)
        self.source_of = np.asarray(source_of, dtype=np.int64)
        self.counts = batch_counts(shares, batch_size)
        self.members = [np.flatnonzero(self.source_of == s) for s in range(len(shares))]
        for s, (count, members) in enumerate(zip(self.counts, self.members, strict=True)):
            if count and not len(members):
                name = f" ({source_names[s]})" if source_names else ""
                raise ValueError(f"data source {s}{name} has a share in the mix but no samples")

    @property
    def _global_batches(self) -> int:
        return len(self.members[0]) // self.counts[0] if self.counts[0] else 0

    @property
    def batches_per_epoch(self) -> int:
        return self._global_batches // self.num_replicas

    def rank_batches(self) -> list[list[int]]:
        rng = np.random.default_rng(self.seed + self.epoch)
        total = self.batches_per_epoch * self.num_replicas
        draws = [_Cycle(members, rng) for members in self.members]
        batches = [
            [i for count, draw in zip(self.counts, draws, strict=True) for i in draw.take(count)]
            for _ in range(total)
        ]
        return batches[self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.rank_batches()[self.start_batch :]

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch - self.start_batch)


class _Cycle:
    """Endless shuffled passes over one source's indices."""

    def __init__(self, members: np.ndarray, rng: np.random.Generator) -> None:
        self.members, self.rng = members, rng
        self.queue: deque[int] = deque()

    def take(self, count: int) -> list[int]:
        out: list[int] = []
        while len(out) < count:
            if not self.queue:
                fresh = self.members[self.rng.permutation(len(self.members))].tolist()
                # a batch straddling two passes would otherwise repeat a sample it already holds
                held = set(out)
                self.queue = deque([i for i in fresh if i not in held] + [i for i in fresh if i in held])
            out.append(self.queue.popleft())
        return out
