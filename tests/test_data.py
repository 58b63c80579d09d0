"""LLaVA-format data: reading, the dataset, image keys, the collator and the grouped sampler."""

import json
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from graft.config import IGNORE_INDEX
from graft.data import GroupedBatchSampler, LlavaDataset, TrainCollator, parse_record
from graft.processing import GraftProcessor, pad_to_square
from graft.record_files import read_records

from tiny import random_image, tiny_image_processor, tiny_tokenizer

torch.set_num_threads(1)

SEQ = 4


def _tiny_processor(**kwargs) -> GraftProcessor:
    tokenizer = tiny_tokenizer()
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    return GraftProcessor(tokenizer, tiny_image_processor(), SEQ, template="vicuna_v1", **kwargs)


def _turns(*values: str) -> list[dict]:
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(values)]


def _records() -> list[dict]:
    return [
        {"id": "single", "image": "a.png", "conversations": _turns("<image>\nIs there a red circle?", "Yes")},
        {
            "id": "two",
            "images": ["a.png", "wide.png"],
            "conversations": _turns("<image>\nHow many objects?", "3", "And here? <image>", "2"),
        },
        {"id": "text", "conversations": _turns("Is a square round?", "No")},
        {"id": 17, "images": [], "conversations": _turns("Answer with the option's letter.", "B")},
    ]


@pytest.fixture
def folder(tmp_path):
    random_image(0).save(tmp_path / "a.png")
    Image.fromarray(np.full((20, 40, 3), 200, dtype=np.uint8)).save(tmp_path / "wide.png")
    (tmp_path / "data.json").write_text(json.dumps(_records(), indent=1))
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r) for r in _records()) + "\n\n")
    return tmp_path


def test_json_and_jsonl_read_the_same_records(folder):
    assert read_records(folder / "data.json") == read_records(folder / "data.jsonl") == _records()


def test_sources_name_the_file_and_index_or_line(folder):
    processor = _tiny_processor()
    json_ds = LlavaDataset(folder / "data.json", folder, processor)
    jsonl_ds = LlavaDataset([str(folder / "data.jsonl")], folder, processor)
    assert json_ds.records[1].source == f"{folder / 'data.json'}[1]"
    assert jsonl_ds.records[1].source == f"{folder / 'data.jsonl'}:2"
    assert [r.id for r in jsonl_ds.records] == ["single", "two", "text", "17"]


def test_parse_record_image_images_or_none():
    assert parse_record(_records()[0], "f[0]").images == ["a.png"]
    assert parse_record(_records()[1], "f[1]").images == ["a.png", "wide.png"]
    text = parse_record(_records()[2], "f[2]")
    assert text.images == [] and [m.role for m in text.messages] == ["user", "assistant"]
    system = {"id": "s", "conversations": [{"from": "system", "value": "Be brief."}, *_turns("Hi?", "Hello")]}
    assert parse_record(system, "f[4]").messages[0].role == "system"


def test_dataset_mixes_image_and_text_samples(folder):
    processor = _tiny_processor()
    ds = LlavaDataset(folder / "data.json", folder, processor)
    assert len(ds) == 4
    assert ds.has_image == [True, True, False, False]
    for i in range(len(ds)):
        sample = ds[i]
        assert ds.lengths[i] == len(sample.encoded.input_ids) == len(sample.encoded.labels)
        n = len(ds.records[i].images)
        assert len(sample.image_keys) == n
        assert sample.encoded.num_images == n
        assert sample.encoded.input_ids.count(processor.image_token_id) == n * SEQ


def test_multi_image_markers_in_different_turns(folder):
    processor = _tiny_processor()
    sample = LlavaDataset(folder / "data.json", folder, processor)[1]
    ids, image_id = sample.encoded.input_ids, processor.image_token_id
    blocks = [i for i in range(len(ids)) if ids[i] == image_id and (i == 0 or ids[i - 1] != image_id)]
    assert len(blocks) == 2
    # the first answer's end of turn lies between the two image blocks
    eos = processor.tokenizer.eos_token_id
    assert blocks[0] < ids.index(eos) < blocks[1]
    # pixel rows follow the order of the markers
    expected = processor.preprocess_images(
        [Image.open(folder / "a.png").convert("RGB"), Image.open(folder / "wide.png")]
    )
    torch.testing.assert_close(sample.encoded.pixel_values, expected)


def test_pad_to_square_pads_with_the_mean_colour(folder):
    plain, padded = _tiny_processor(), _tiny_processor(pad_to_square=True)
    wide = Image.open(folder / "wide.png").convert("RGB")
    squared = pad_to_square(wide, padded.image_fill())
    assert squared.size == (40, 40)
    assert squared.getpixel((0, 0)) == padded.image_fill() and squared.getpixel((20, 20)) == (200, 200, 200)
    a = LlavaDataset(folder / "data.json", folder, plain)[1].encoded.pixel_values[1]
    b = LlavaDataset(folder / "data.json", folder, padded)[1].encoded.pixel_values[1]
    torch.testing.assert_close(
        b, padded.image_processor(images=[squared], return_tensors="pt")["pixel_values"][0]
    )
    assert not torch.allclose(a, b)


def test_load_pixels_off_keeps_image_keys(folder):
    ds = LlavaDataset(folder / "data.json", folder, _tiny_processor())
    with_pixels = ds[1]
    ds.load_pixels = False
    without = ds[1]
    assert without.encoded.pixel_values is None
    assert without.image_keys == with_pixels.image_keys
    assert without.encoded.input_ids == with_pixels.encoded.input_ids


def test_image_key_is_content_plus_preprocessing(folder):
    ds = LlavaDataset(folder / "data.json", folder, _tiny_processor())
    key = ds[0].image_keys[0]
    assert ds[1].image_keys[0] == key  # same file, same key
    assert ds.image_key(0, 0) == key
    # same bytes under another name: same key (content, not path)
    (folder / "copy.png").write_bytes((folder / "a.png").read_bytes())
    records = [{"id": "c", "image": "copy.png", "conversations": _turns("<image>", "A circle.")}]
    (folder / "copy.json").write_text(json.dumps(records))
    assert LlavaDataset(folder / "copy.json", folder, _tiny_processor())[0].image_keys == [key]
    # the file changes: the same dataset notices
    random_image(1, size=40).save(folder / "a.png")
    changed = ds[0].image_keys[0]
    assert changed != key
    # the preprocessing changes: pad to square, or another image size
    padded = _tiny_processor()
    padded.pad_to_square = True
    assert LlavaDataset(folder / "data.json", folder, padded)[0].image_keys[0] not in (key, changed)
    other = _tiny_processor()
    other.image_processor.crop_size = {"height": 24, "width": 24}
    assert LlavaDataset(folder / "data.json", folder, other)[0].image_keys[0] != changed


def test_collator_pads_right_and_lists_images_in_order(folder):
    processor = _tiny_processor()
    ds = LlavaDataset(folder / "data.json", folder, processor)
    collate = TrainCollator(processor.tokenizer.pad_token_id)
    samples = [ds[i] for i in range(4)]
    batch = collate(samples)
    longest = max(ds.lengths)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (4, longest)
    assert batch["attention_mask"].sum(1).tolist() == ds.lengths
    for i, n in enumerate(ds.lengths):
        assert (batch["input_ids"][i, n:] == processor.tokenizer.pad_token_id).all()
        assert (batch["labels"][i, n:] == IGNORE_INDEX).all()
        assert batch["input_ids"][i, :n].tolist() == samples[i].encoded.input_ids
    assert batch["pixel_values"].shape == (3, 3, 32, 32)
    assert batch["num_images"].tolist() == [1, 2, 0, 0]
    assert batch["image_keys"] == samples[0].image_keys + samples[1].image_keys
    assert batch["ids"] == ["single", "two", "text", "17"]
    # skipped samples (None) are dropped; a batch of nothing is None
    assert collate([None, samples[2]])["ids"] == ["text"]
    assert collate([None]) is None
    # without pixels the keys still come through
    ds.load_pixels = False
    batch = collate([ds[0], ds[1]])
    assert "pixel_values" not in batch and len(batch["image_keys"]) == 3


# --- sampler ---------------------------------------------------------------------------------------
def _sampler_data(n: int = 103, seed: int = 0) -> tuple[list[int], list[bool]]:
    rng = np.random.default_rng(seed)
    return rng.integers(5, 500, n).tolist(), (rng.random(n) < 0.6).tolist()


def test_sampler_batches_are_pure_and_cover_every_sample_once():
    lengths, has_image = _sampler_data()
    sampler = GroupedBatchSampler(lengths, has_image, batch_size=4, mega_batch_factor=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == sampler.batches_per_epoch
    assert Counter(i for b in batches for i in b) == Counter(range(len(lengths)))
    assert all(len({has_image[i] for i in b}) == 1 for b in batches)
    assert sum(len(b) < 4 for b in batches) <= 2  # at most one partial batch per modality


def test_sampler_groups_similar_lengths():
    lengths, has_image = _sampler_data(n=400)
    grouped = GroupedBatchSampler(lengths, has_image, batch_size=8, mega_batch_factor=10)
    spread = np.mean([np.ptp([lengths[i] for i in b]) for b in grouped])
    rng = np.random.default_rng(0)
    random_batches = np.array_split(rng.permutation(len(lengths)), 50)
    random_spread = np.mean([np.ptp([lengths[i] for i in b]) for b in random_batches])
    assert spread < random_spread / 3


def test_sampler_without_modality_grouping_mixes():
    lengths, has_image = _sampler_data(n=200)
    sampler = GroupedBatchSampler(lengths, has_image, batch_size=8, group_by_modality=False)
    assert any(len({has_image[i] for i in b}) == 2 for b in sampler)


def test_sampler_is_deterministic_per_seed_and_epoch():
    lengths, has_image = _sampler_data()
    a = GroupedBatchSampler(lengths, has_image, batch_size=4, seed=3, mega_batch_factor=2)
    b = GroupedBatchSampler(lengths, has_image, batch_size=4, seed=3, mega_batch_factor=2)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    a.set_epoch(0)
    assert list(a) == first
    assert list(GroupedBatchSampler(lengths, has_image, batch_size=4, seed=4, mega_batch_factor=2)) != first


def test_sampler_resumes_mid_epoch():
    lengths, has_image = _sampler_data()
    sampler = GroupedBatchSampler(lengths, has_image, batch_size=4, seed=1)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.set_epoch(2, start_batch=5)
    assert list(sampler) == full[5:]
    assert len(sampler) == len(full) - 5 and sampler.batches_per_epoch == len(full)
    resumed = GroupedBatchSampler(lengths, has_image, batch_size=4, seed=1, start_batch=7)
    resumed.epoch = 2
    assert list(resumed) == full[7:]
    sampler.set_epoch(3)  # a new epoch starts from its first batch
    assert len(list(sampler)) == len(full)


@pytest.mark.parametrize("drop_last", [False, True])
def test_sampler_shards_disjoint_equal_batches_across_ranks(drop_last):
    lengths, has_image = _sampler_data()
    shards = [
        list(GroupedBatchSampler(lengths, has_image, 4, seed=2, drop_last=drop_last, num_replicas=3, rank=r))
        for r in range(3)
    ]
    assert len({len(s) for s in shards}) == 1
    assert (
        len(shards[0])
        == GroupedBatchSampler(lengths, has_image, 4, num_replicas=3, drop_last=drop_last).batches_per_epoch
    )
    seen = [tuple(b) for s in shards for b in s]
    everything = {i for b in seen for i in b}
    if drop_last:
        assert all(len(b) == 4 for b in seen)
        assert len(seen) == len(set(seen))  # no batch given twice
        assert len(everything) == len(seen) * 4
    else:
        assert everything == set(range(len(lengths)))  # padded by repeating, never by dropping
        assert len(set(seen)) >= len(seen) - 2


def test_dataset_limit_reads_only_the_head(folder):
    processor = _tiny_processor()
    head = LlavaDataset(folder / "data.jsonl", folder, processor, limit=2)
    assert [r.id for r in head.records] == ["single", "two"] and len(head.lengths) == 2
