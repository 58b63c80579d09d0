"""Every bad input is a clear error naming file / line / record / field, or, with
``skip_bad=True``, a skipped and counted sample — never a silently wrong one."""

import codecs
import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from graft.config import GraftConfig
from graft.connectors import UnknownConnectorError, build_connector
from graft.data import LlavaDataset, TrainCollator
from graft.modeling import GraftForConditionalGeneration
from graft.processing import GraftProcessor, ImageLoadError, SampleTooLongError, load_image
from graft.record_files import RecordError, read_records

from tiny import random_image, tiny_image_processor, tiny_llm, tiny_tokenizer, tiny_vision

torch.set_num_threads(1)


def _tiny_processor(**kwargs) -> GraftProcessor:
    tokenizer = tiny_tokenizer()
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    return GraftProcessor(tokenizer, tiny_image_processor(), 4, **kwargs)


def _turns(*values: str) -> list[dict]:
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(values)]


GOOD = {"id": "good", "image": "ok.png", "conversations": _turns("<image>\nIs there a red circle?", "Yes")}


def _write(folder, records: list, name: str = "data.json"):
    random_image(0).save(folder / "ok.png")
    path = folder / name
    if name.endswith(".jsonl"):
        path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    else:
        path.write_text(json.dumps(records, indent=1))
    return path


def _check(folder, bad: dict, reason: str, match: str, error=RecordError, name: str = "data.json", **kwargs):
    """``bad`` is an error without skip_bad, and skipped and counted under ``reason`` with it."""
    path = _write(folder, [GOOD, bad, GOOD], name)
    with pytest.raises(error, match=match) as info:
        LlavaDataset(path, folder, _tiny_processor(**kwargs))
    where = f"{path}:2" if name.endswith(".jsonl") else f"{path}[1]"
    assert where in str(info.value)
    ds = LlavaDataset(path, folder, _tiny_processor(**kwargs), skip_bad=True)
    assert ds.skipped == {reason: 1}
    assert len(ds) == 2 and [r.id for r in ds.records] == ["good", "good"]
    return str(info.value)


def test_missing_image(tmp_path):
    bad = {"id": "m", "images": ["ok.png", "gone.png"], "conversations": _turns("<image><image> Same?", "No")}
    message = _check(tmp_path, bad, "missing_image", r"id 'm'.*field images\[1\]", error=ImageLoadError)
    assert str(tmp_path / "gone.png") in message


def test_a_folder_where_an_image_or_a_record_file_should_be_is_said_so(tmp_path):
    (tmp_path / "imgs").mkdir()
    bad = {"id": "d", "image": "imgs", "conversations": _turns("<image>\nWhat?", "No")}
    folder = r"id 'd'.*field image: a folder, not an image"
    _check(tmp_path, bad, "missing_image", folder, error=ImageLoadError)
    with pytest.raises(FileNotFoundError, match=r"imgs is a folder; give a record file"):
        read_records(tmp_path / "imgs")


def test_corrupt_image(tmp_path):
    (tmp_path / "broken.png").write_bytes(
        np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes()
    )
    bad = {"id": "c", "image": "broken.png", "conversations": _turns("<image>\nWhat is it?", "A square.")}
    path = _write(tmp_path, [GOOD, bad])
    ds = LlavaDataset(path, tmp_path, _tiny_processor())  # the file exists: found when loaded
    with pytest.raises(ImageLoadError, match=r"\[1\] \(id 'c'\).*broken\.png"):
        ds[1]
    ds = LlavaDataset(path, tmp_path, _tiny_processor(), skip_bad=True)
    assert ds[1] is None
    assert ds.skipped == {"corrupt_image": 1}
    batch = TrainCollator(ds.processor.tokenizer.pad_token_id)([ds[0], ds[1]])
    assert batch["ids"] == ["good"] and batch["pixel_values"].shape[0] == 1


def test_an_image_too_large_to_decode_is_a_named_load_error(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # PIL refuses twice this: 32x32 is a "bomb"
    bad = {"id": "b", "image": "ok.png", "conversations": _turns("<image>\nWhat is it?", "A square.")}
    path = _write(tmp_path, [bad])
    with pytest.raises(ImageLoadError, match=r"\[0\] \(id 'b'\).*ok\.png.*exceeds limit"):
        LlavaDataset(path, tmp_path, _tiny_processor())[0]
    ds = LlavaDataset(path, tmp_path, _tiny_processor(), skip_bad=True)
    assert ds[0] is None and ds.skipped == {"corrupt_image": 1}


def test_deep_grey_images_are_scaled_not_clipped(tmp_path):
    """A 16-bit grey PNG (a scan, a depth map) reads as the same picture in 8 bits: PIL's own
    conversion clips every level above 255, turning it nearly all white."""
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    rgb = np.asarray(load_image(tmp_path / "deep.png"))
    assert rgb.shape == (64, 64, 3) and (rgb == rgb[..., :1]).all()
    assert np.array_equal(rgb[..., 0], np.rint(ramp / 257).astype(np.uint8))
    floats = np.linspace(0.0, 1.0, 16 * 16, dtype=np.float32).reshape(16, 16)
    Image.fromarray(floats).save(tmp_path / "float.tiff")
    grey = np.asarray(load_image(tmp_path / "float.tiff"))[..., 0]
    assert grey.min() == 0 and grey.max() == 255 and np.array_equal(grey, np.rint(floats * 255))
    Image.fromarray(np.full((4, 4), 200, dtype=np.int32)).save(tmp_path / "int.tiff")  # 8-bit levels
    assert (np.asarray(load_image(tmp_path / "int.tiff")) == 200).all()


def test_malformed_json_names_file_and_line(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('[\n  {"id": "a",\n   "conversations": [}\n]\n')
    for skip_bad in (False, True):  # a broken JSON list cannot be partly trusted
        with pytest.raises(RecordError, match=rf"{path}:3: not valid JSON \(.* at column 22\)"):
            LlavaDataset(path, tmp_path, _tiny_processor(), skip_bad=skip_bad)
    with pytest.raises(RecordError, match=rf"{path}:3: not valid JSON"):
        read_records(path)


def test_top_level_json_must_be_a_list(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(GOOD))
    with pytest.raises(RecordError, match="expected a JSON list"):
        read_records(path)


def test_json_lines_under_another_suffix_are_read_as_json_lines(tmp_path):
    # POPE-style: one record per line in a .json file (graft plan reads it so, and so must training)
    path = _write(tmp_path, [GOOD, {**GOOD, "id": "two"}], name="data.jsonl").rename(tmp_path / "data.json")
    path.write_bytes(codecs.BOM_UTF8 + path.read_bytes().replace(b"\n", b"\r\n"))
    assert [r.id for r in LlavaDataset(path, tmp_path, _tiny_processor()).records] == ["good", "two"]
    upper = path.rename(tmp_path / "data.JSONL")
    assert len(LlavaDataset(upper, tmp_path, _tiny_processor())) == 2
    single = tmp_path / "one.json"  # one object, on one line or several, is still not a list
    for text in (json.dumps(GOOD), json.dumps(GOOD, indent=1)):
        single.write_text(text + "\n")
        with pytest.raises(RecordError, match="expected a JSON list of records, got dict"):
            read_records(single)


def test_malformed_jsonl_line(tmp_path):
    _check(
        tmp_path,
        '{"id": "x", "conversations": [',
        "malformed_json",
        r":2: not valid JSON \(.* at column \d+\)",
        name="d.jsonl",
    )


def test_image_marker_count_mismatch(tmp_path):
    # one image and no marker: an error, never a silently prepended marker
    no_marker = {"id": "n", "image": "ok.png", "conversations": _turns("What is it?", "A circle.")}
    _check(
        tmp_path,
        no_marker,
        "image_marker_mismatch",
        r"id 'n'.*'conversations' holds 0 <image> marker\(s\).*1 image",
    )
    no_image = {"id": "i", "conversations": _turns("<image>\nWhat is it?", "A circle.")}
    _check(tmp_path, no_image, "image_marker_mismatch", r"id 'i'.*1 <image> marker\(s\).*0 image")
    two = {"id": "t", "image": "ok.png", "conversations": _turns("<image>\nAnd <image>?", "Both.")}
    _check(tmp_path, two, "image_marker_mismatch", r"id 't'.*2 <image> marker\(s\)")
    in_answer = {"id": "a", "image": "ok.png", "conversations": _turns("What?", "<image> this.")}
    _check(tmp_path, in_answer, "image_marker_mismatch", r"id 'a'.*field conversations\[1\]\.value")
    # plain renders no system turn: a marker there would leave its image without a place
    system = [{"from": "system", "value": "<image>"}, *_turns("What?", "A circle.")]
    in_system = {"id": "s", "image": "ok.png", "conversations": system}
    match = r"id 's'.*plain template keeps 0 of the 1 <image> marker"
    _check(tmp_path, in_system, "image_marker_mismatch", match, template="plain")


@pytest.mark.parametrize("conversations", [None, []])
def test_empty_conversation(tmp_path, conversations):
    bad = {"id": "e", "conversations": conversations}
    if conversations is None:
        del bad["conversations"]
    _check(tmp_path, bad, "empty_conversation", r"id 'e'.*field 'conversations' is missing or empty")


@pytest.mark.parametrize(
    ("conversations", "reason", "match"),
    [
        (_turns("Hello?"), "one_sided_conversation", r"no assistant \('gpt'\) turn"),
        ([{"from": "gpt", "value": "Yes"}], "one_sided_conversation", r"no user \('human'\) turn"),
        (
            [{"from": "gpt", "value": "Yes"}, {"from": "human", "value": "Ok?"}],
            "bad_turn_order",
            r"conversations\[0\]\.from is an assistant turn; the first turn must be from 'human'",
        ),
        (
            [
                {"from": "human", "value": "A?"},
                {"from": "human", "value": "B?"},
                {"from": "gpt", "value": "C"},
            ],
            "bad_turn_order",
            r"conversations\[1\]\.from .*alternate",
        ),
        (_turns("A?", "B", "C?"), "bad_turn_order", r"conversations\[2\] is a human turn with no answer"),
    ],
)
def test_one_sided_or_misordered_conversation(tmp_path, conversations, reason, match):
    _check(tmp_path, {"id": "o", "conversations": conversations}, reason, rf"id 'o'.*{match}")


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (
            {"id": "v", "conversations": [{"from": "human", "value": 3}, {"from": "gpt", "value": "x"}]},
            r"id 'v'\): field conversations\[0\]\.value must be a string",
        ),
        (
            {"id": "f", "conversations": [{"from": "robot", "value": "x"}, {"from": "gpt", "value": "x"}]},
            r"id 'f'\): field conversations\[0\]\.from is 'robot'; expected one of human, user, gpt, ",
        ),
        (  # a JSON escape of half a surrogate pair: no tokenizer can encode it
            {"id": "u", "conversations": _turns("Emoji \ud83d?", "x")},
            r"id 'u'\): field conversations\[0\]\.value holds a lone surrogate '\\ud83d' at character 6",
        ),
        ({"id": "g", "image": 5, "conversations": _turns("<image>", "x")}, "field 'image'"),
        ({"id": "h", "images": "a.png", "conversations": _turns("<image>", "x")}, "field 'images'"),
        ({"id": ["x"], "conversations": _turns("a", "b")}, "field 'id'"),
    ],
)
def test_wrong_field_types(tmp_path, bad, match):
    _check(tmp_path, bad, "bad_field", match)


def test_sample_longer_than_the_context(tmp_path):
    long = {"id": "l", "conversations": _turns("Describe it. " * 40, "It is a red circle.")}
    _check(
        tmp_path,
        long,
        "too_long",
        r"\[1\] \(id 'l'\): \d+ tokens, longer than max_length=100",
        error=SampleTooLongError,
        max_length=100,
    )
    # the dataset's own max_length overrides the processor's
    path = _write(tmp_path, [GOOD, long])
    with pytest.raises(SampleTooLongError, match="max_length=60"):
        LlavaDataset(path, tmp_path, _tiny_processor(), max_length=60)
    assert len(LlavaDataset(path, tmp_path, _tiny_processor(max_length=60), max_length=1000)) == 2


def test_skip_summary_is_one_warning(tmp_path, caplog):
    bad = [
        {"id": "n", "image": "gone.png", "conversations": _turns("<image>", "x")},
        {"id": "e", "conversations": []},
    ]
    path = _write(tmp_path, [GOOD, *bad, {"id": "e2"}])
    with caplog.at_level(logging.WARNING, logger="graft.data.dataset"):
        ds = LlavaDataset(path, tmp_path, _tiny_processor(), skip_bad=True)
    assert ds.skipped == {"missing_image": 1, "empty_conversation": 2}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["skipped 3 bad samples: {'empty_conversation': 2, 'missing_image': 1}"]


def test_nothing_usable_is_an_error(tmp_path):
    path = _write(tmp_path, [{"id": "e", "conversations": []}])
    with pytest.raises(ValueError, match="no usable records"):
        LlavaDataset(path, tmp_path, _tiny_processor(), skip_bad=True)


def test_unknown_template():
    with pytest.raises(
        ValueError,
        match=r"unknown template 'vicuna'; valid templates: chatml, llama_2, plain, smollm2, vicuna_v1",
    ):
        _tiny_processor(template="vicuna")


def test_unknown_connector():
    with pytest.raises(
        UnknownConnectorError, match=r"unknown connector 'mlp3x_gelu'; valid connectors: .*mlp2x_gelu"
    ):
        build_connector({"name": "mlp3x_gelu"}, 32, 64)
    config = GraftConfig(tiny_vision().config, tiny_llm(400).config, connector="qformr")
    with pytest.raises(UnknownConnectorError, match="'qformr'"):
        GraftForConditionalGeneration(config)
