"""DEMON's ``{image#k}`` placeholders work in training records, prediction files and chat."""

import pytest

from graft.data.records import parse_record
from graft.eval.predict import parse_prompt_row
from graft.generate import ChatSession
from graft.prompts import ImageMarkerError, demon_to_markers
from graft.record_files import RecordError
from graft.templates import Message

from tiny import random_image, tiny_model_and_processor


def test_placeholders_become_markers_in_order_with_repeats():
    texts, order = demon_to_markers(["{image#2} then {image#1}", "and {table#2} again"], 2)
    assert texts == ["<image> then <image>", "and <image> again"]
    assert order == [1, 0, 1]
    with pytest.raises(ImageMarkerError, match=r"\{image#3\} in the context but the sample has 2 image"):
        demon_to_markers(["{image#3}"], 2, where="rec")
    with pytest.raises(ImageMarkerError, match="mixes"):
        demon_to_markers(["<image> and {image#1}"], 1)


def test_training_record_reorders_its_images_to_marker_order():
    raw = {
        "id": "d1",
        "images": ["a.png", "b.png"],
        "conversations": [
            {"from": "human", "value": "{image#2}{image#1}Question: which is red?"},
            {"from": "gpt", "value": "Image A"},
            {"from": "human", "value": "And {image#2}?"},
            {"from": "gpt", "value": "No"},
        ],
    }
    record = parse_record(raw, "f.json[0]")
    assert record.images == ["b.png", "a.png", "b.png"]
    assert record.messages[0].content == "<image><image>Question: which is red?"
    raw["conversations"][2]["value"] = "And {image#5}?"
    with pytest.raises(RecordError, match=r"\{image#5\}"):
        parse_record(raw, "f.json[0]")


def test_prediction_rows_take_placeholders(tmp_path):
    for name in ("a.png", "b.png"):
        random_image().save(tmp_path / name)
    record = {"id": 1, "images": ["a.png", "b.png"], "question": "{image#2} vs {image#1}: same?"}
    row = parse_prompt_row(record, "q.jsonl:1", tmp_path, "<image>")
    assert row.prompt == "<image> vs <image>: same?"
    assert [p.name for p in row.images] == ["b.png", "a.png"]
    with pytest.raises(RecordError, match="q.jsonl:1"):
        parse_prompt_row({**record, "question": "{image#3}"}, "q.jsonl:1", tmp_path, "<image>")
    assert record["images"] == ["a.png", "b.png"]  # the caller's record is left as it was


def test_chat_turn_with_placeholders_equals_the_same_turn_with_markers():
    model, processor = tiny_model_and_processor()
    first, second = random_image(1), random_image(2)
    by_placeholder = ChatSession(model, processor, max_new_tokens=4)
    by_marker = ChatSession(model, processor, max_new_tokens=4)
    a = by_placeholder.ask("Compare {image#2} with {image#1}.", images=[first, second])
    b = by_marker.ask("Compare <image> with <image>.", images=[second, first])
    assert a == b
    assert by_placeholder.messages[0] == Message("user", "Compare <image> with <image>.")
    assert [img.tobytes() for img in by_placeholder.images] == [second.tobytes(), first.tobytes()]
