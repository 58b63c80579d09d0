"""Per-batch mixing of data sources (Cheetah's 64 captions + 24 synthetic pairs per batch)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from graft.data import MixedBatchSampler, batch_counts
from graft.train import train
from graft.train.recipe import RecipeError, recipe_from_dict

from tiny import tiny_recipe, tiny_world

torch.set_num_threads(1)


def test_batch_counts_follow_the_shares():
    assert batch_counts([64, 24], 88) == [64, 24]
    assert batch_counts([64, 24], 11) == [8, 3]
    assert batch_counts([1, 1, 1], 4) == [2, 1, 1]
    assert batch_counts([100, 1], 4) == [3, 1]  # a named source never rounds away
    assert batch_counts([1, 0], 4) == [4, 0]
    with pytest.raises(ValueError, match="cannot hold"):
        batch_counts([1, 1, 1], 2)
    with pytest.raises(ValueError, match="non-negative"):
        batch_counts([0, 0], 4)


def _sources() -> list[int]:
    return [0] * 40 + [1] * 7  # many captions, few pairs


def test_every_batch_has_the_fixed_count_from_each_source():
    source = _sources()
    sampler = MixedBatchSampler(source, [64, 24], 11, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 40 // 8
    for batch in batches:
        assert Counter(source[i] for i in batch) == {0: 8, 1: 3}
        assert len(set(batch)) == len(batch)
    # an epoch is one pass over the first source: no caption twice
    firsts = [i for b in batches for i in b if source[i] == 0]
    assert len(set(firsts)) == len(firsts) == 40
    # the small source is cycled: every pair shows up
    assert {i for b in batches for i in b if source[i] == 1} == set(range(40, 47))


def test_mixed_order_is_seeded_and_resumes_mid_epoch():
    a = MixedBatchSampler(_sources(), [2, 1], 6, seed=1)
    b = MixedBatchSampler(_sources(), [2, 1], 6, seed=1)
    other = MixedBatchSampler(_sources(), [2, 1], 6, seed=2)
    assert list(a) == list(b) != list(other)
    a.set_epoch(1)
    epoch1 = list(a)
    assert epoch1 != list(b)
    a.set_epoch(1, start_batch=3)
    assert list(a) == epoch1[3:] and len(a) == len(epoch1) - 3


def test_mixed_batches_shard_disjointly_across_ranks():
    ranks = [MixedBatchSampler(_sources(), [2, 1], 6, seed=0, num_replicas=2, rank=r) for r in (0, 1)]
    batches = [list(s) for s in ranks]
    assert len(batches[0]) == len(batches[1]) == (40 // 4) // 2
    whole = list(MixedBatchSampler(_sources(), [2, 1], 6, seed=0))
    assert batches[0] == whole[0::2][: len(batches[0])] and batches[1] == whole[1::2][: len(batches[1])]


def test_a_source_with_a_share_but_no_samples_is_an_error():
    with pytest.raises(ValueError, match="source 1 has a share"):
        MixedBatchSampler([0, 0, 0], [1, 1], 2)


def test_training_names_the_file_that_has_a_share_but_no_samples(tmp_path):
    world = _two_files(tmp_path)
    empty = tmp_path / "w" / "which.jsonl"
    empty.write_text("")
    raw = tiny_recipe(
        world, tmp_path / "run", **{"data.train": [world["captions"], str(empty)], "data.mix": [1, 1]}
    )
    with pytest.raises(ValueError, match=r"source 1 \(.*which\.jsonl\) has a share"):
        train(recipe_from_dict(raw))


def _two_files(tmp_path: Path) -> dict[str, str]:
    world = tiny_world(tmp_path / "w")
    records = json.loads(Path(world["data"]).read_text())
    pairs = tmp_path / "w" / "pairs.json"
    pairs.write_text(json.dumps([r for r in records if "images" in r]))
    captions = tmp_path / "w" / "captions.json"
    captions.write_text(json.dumps([r for r in records if "image" in r]))
    return world | {"captions": str(captions), "pairs": str(pairs)}


def test_recipe_mix_needs_one_share_per_file(tmp_path):
    world = _two_files(tmp_path)
    raw = tiny_recipe(world, tmp_path / "run", **{"data.train": [world["captions"], world["pairs"]]})
    with pytest.raises(RecipeError, match="data.mix has 1 shares for 2"):
        recipe_from_dict({**raw, "data": {**raw["data"], "mix": [3]}})
    with pytest.raises(RecipeError, match="first"):
        recipe_from_dict({**raw, "data": {**raw["data"], "mix": [0, 1]}})


def test_training_with_a_mix_sees_both_files_in_every_batch(tmp_path, monkeypatch):
    world = _two_files(tmp_path)
    raw = tiny_recipe(
        world,
        tmp_path / "run",
        **{"data.train": [world["captions"], world["pairs"]], "data.mix": [2, 1], "batch_size": 3},
    )
    seen: list[list[int]] = []
    original = MixedBatchSampler.__iter__

    def spy(self):
        for batch in original(self):
            seen.append([self.source_of[i] for i in batch])
            yield batch

    monkeypatch.setattr(MixedBatchSampler, "__iter__", spy)
    result = train(recipe_from_dict(raw))
    assert result.steps == 4
    assert seen and all(sorted(b) == [0, 0, 1] for b in seen)
