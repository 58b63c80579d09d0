"""``GroupedBatchSampler``: LLaVA's ``group_by_modality_length``, as a resumable, shardable
batch sampler.

Each batch holds only image samples or only text-only samples (a text-only sample in an image
batch would make the vision tower's work uneven and, with some connectors, change the loss);
within a modality, samples are shuffled, cut into mega-batches of
``mega_batch_factor * batch_size * num_replicas`` samples, each mega-batch sorted by length
and cut into batches, so a batch wastes little padding (with ``max_batch_tokens``, cut where the
next sample would take the batch over that many tokens as the model sees them: the sum of lengths
when ``packed``, else the longest length times the count). The batches of one optimisation step
(one per rank) are taken side by side from the same mega-batch, so the ranks of a step have
similar lengths and nobody waits; the steps are then shuffled. The order depends only on
``seed + epoch``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class EpochBatchSampler(Sampler[list[int]]):
    """What graft's batch samplers share: a seeded order per epoch, dealt to ``num_replicas``
    ranks, and ``start_batch`` to resume an epoch after the batches already done."""

    def __init__(self, batch_size: int, seed: int, num_replicas: int, rank: int, start_batch: int) -> None:
        if batch_size < 1 or num_replicas < 1:
            raise ValueError("batch_size and num_replicas must be >= 1")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
        self.batch_size = batch_size
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.start_batch = start_batch

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Choose the epoch's order; ``start_batch`` skips this rank's first batches (resume)."""
        self.epoch = epoch
        self.start_batch = start_batch


class GroupedBatchSampler(EpochBatchSampler):
    """Batches of dataset indices.

    Every sample appears exactly once per epoch, except that with ``drop_last`` incomplete
    batches are dropped, and without it, when the batches do not divide evenly among
    ``num_replicas`` ranks, the first batches are repeated so every rank gets the same count
    (as ``DistributedSampler`` does; unequal counts would hang DDP).

    ``len()`` and iteration cover this rank's batches from ``start_batch`` on: set it (or pass
    it to ``set_epoch``) to resume an epoch after the batches already done.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        has_image: Sequence[bool],
        batch_size: int,
        seed: int = 0,
        drop_last: bool = False,
        group_by_modality: bool = True,
        mega_batch_factor: int = 50,
        num_replicas: int = 1,
        rank: int = 0,
        start_batch: int = 0,
        max_batch_tokens: int | None = None,
        packed: bool = False,
    ) -> None:
        if len(lengths) != len(has_image):
            raise ValueError(f"{len(lengths)} lengths but {len(has_image)} has_image flags")
        if mega_batch_factor < 1:
            raise ValueError("batch_size, mega_batch_factor and num_replicas must be >= 1")
        super().__init__(batch_size, seed, num_replicas, rank, start_batch)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.has_image = np.asarray(has_image, dtype=bool)
        self.drop_last = drop_last
        self.group_by_modality = group_by_modality
        self.mega_batch_factor = mega_batch_factor
        self.max_batch_tokens = max_batch_tokens
        self.packed = packed

    # --- the order ----------------------------------------------------------------------------
    def _groups(self) -> list[np.ndarray]:
        if not self.group_by_modality:
            return [np.arange(len(self.lengths))]
        return [np.flatnonzero(self.has_image), np.flatnonzero(~self.has_image)]

    def _all_batches(self, rng: np.random.Generator) -> list[list[int]]:
        """Length-sorted batches, mega-batch by mega-batch, modality by modality."""
        mega = self.mega_batch_factor * self.batch_size * self.num_replicas
        batches: list[list[int]] = []
        for group in self._groups():
            order = group[rng.permutation(len(group))]
            for start in range(0, len(order), mega):
                chunk = order[start : start + mega]
                # longest first; stable so equal lengths keep their shuffled order
                chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
                for batch in self._cut(chunk):
                    # by token budget every batch is as full as it can be: none is "incomplete"
                    if len(batch) == self.batch_size or not self.drop_last or self.max_batch_tokens:
                        batches.append(batch)
        return batches

    def _cut(self, chunk: np.ndarray) -> list[list[int]]:
        """A length-sorted (longest first) chunk cut into batches of ``batch_size`` samples at most,
        and of ``max_batch_tokens`` tokens at most when set (a longer sample makes a batch alone)."""
        if self.max_batch_tokens is None:
            return [chunk[b : b + self.batch_size].tolist() for b in range(0, len(chunk), self.batch_size)]
        batches: list[list[int]] = []
        batch: list[int] = []
        for index in chunk.tolist():
            grown = batch + [index]
            if batch and (len(grown) > self.batch_size or self._tokens(grown) > self.max_batch_tokens):
                batches.append(batch)
                grown = [index]
            batch = grown
        return batches + [batch] if batch else batches

    def _tokens(self, batch: list[int]) -> int:
        """The tokens a batch holds as the model sees it: packed, or padded to its longest sample."""
        lengths = self.lengths[batch]
        return int(lengths.sum() if self.packed else lengths.max() * len(batch))

    def rank_batches(self) -> list[list[int]]:
        """All of this rank's batches for the current epoch (``start_batch`` not applied)."""
        rng = np.random.default_rng(self.seed + self.epoch)
        batches = self._all_batches(rng)
        n = self.num_replicas
        if len(batches) % n:
            if self.drop_last:
                batches = batches[: len(batches) - len(batches) % n]
            else:
                batches += batches[: n - len(batches) % n]
        steps = [batches[i : i + n] for i in range(0, len(batches), n)]
        return [steps[s][self.rank] for s in rng.permutation(len(steps))]

    @property
    def batches_per_epoch(self) -> int:
        """This rank's batch count in a whole epoch, whatever ``start_batch`` is (by token budget:
        the current epoch's, as batch counts then vary a little from epoch to epoch)."""
        if self.max_batch_tokens is not None:
            return len(self.rank_batches())
        # mega-batches are whole multiples of batch_size: only a group's last batch is partial
        total = 0
        for group in self._groups():
            full, rest = divmod(len(group), self.batch_size)
            total += full + int(rest > 0 and not self.drop_last)
        if self.drop_last:
            return total // self.num_replicas
        return -(-total // self.num_replicas)

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.rank_batches()[self.start_batch :]

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch - self.start_batch)
