"""The one record layer (graft.record_files) and the one image-placing rule (graft.prompts)."""

import json

import pytest

from graft.prompts import ImageMarkerError, place_images
from graft.record_files import RecordError, UniqueIds, check_id, iter_jsonl, iter_objects, iter_records


def test_json_list_and_jsonl_read_alike_and_name_their_places(tmp_path):
    rows = [{"id": 1}, {"id": "b"}]
    listed, lines = tmp_path / "r.json", tmp_path / "r.jsonl"
    listed.write_text(json.dumps(rows))
    lines.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert list(iter_records(listed)) == [(rows[0], f"{listed}[0]"), (rows[1], f"{listed}[1]")]
    assert list(iter_records(lines)) == [(rows[0], f"{lines}:1"), (rows[1], f"{lines}:2")]
    # JSON Lines whatever the suffix (POPE's question files are .json lines)
    assert [w for _, w in iter_jsonl(lines.rename(tmp_path / "pope.json"))] == [
        f"{tmp_path / 'pope.json'}:1",
        f"{tmp_path / 'pope.json'}:2",
    ]
    with pytest.raises(FileNotFoundError, match="file not found"):
        list(iter_records(tmp_path / "none.json"))


def test_bad_rows_raise_or_go_to_on_bad(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"id": 1}\n[1, 2]\n{"id": \n{"id": 4}\n')
    with pytest.raises(RecordError, match=rf"{path}:2: expected a JSON object, got list"):
        list(iter_records(path))
    bad: list[RecordError] = []
    assert [r["id"] for r, _ in iter_records(path, on_bad=bad.append)] == [1, 4]
    assert [e.reason for e in bad] == ["bad_field", "malformed_json"]
    assert str(bad[1]).startswith(f"{path}:3: not valid JSON")
    listed = tmp_path / "r.json"
    listed.write_text('{"id": 1}')
    with pytest.raises(RecordError, match="expected a JSON list of records, got dict"):
        list(iter_records(listed))
    skipped: list[RecordError] = []
    assert list(iter_objects([{"a": 1}, "x"], "doc: data", skipped.append)) == [({"a": 1}, "doc: data[0]")]
    assert str(skipped[0]) == "doc: data[1]: expected a JSON object, got str"


def test_ids_are_strings_or_integers_and_unique():
    assert check_id(3, "f:1") == 3 and check_id("a", "f:1") == "a"
    for value in (True, None, 1.5, ["a"]):
        with pytest.raises(RecordError, match=r"f:1: field 'question_id' must be a string or an integer"):
            check_id(value, "f:1", "question_id")
    ids = UniqueIds("predicted")
    ids.add("a", "p:1")
    with pytest.raises(RecordError, match="p:3: id 'a' already predicted at p:1; ids must be unique"):
        ids.add("a", "p:3")


def test_place_images_one_rule():
    # placeholders: markers in place, images in marker order (one may repeat)
    assert place_images("{image#2} or {image#1}, {image#2}?", 2, "w") == (
        "<image> or <image>, <image>?",
        [1, 0, 1],
    )
    # markers: kept, one per image
    assert place_images("Is <image> red?", 1, "w") == ("Is <image> red?", [0])
    # none: the images first; pre after the leading images, post at the end
    assert place_images("Q?", 2, "w", pre="Look. ", post=" A:") == ("<image>\n<image>\nLook. Q? A:", [0, 1])
    assert place_images("<image>\nQ?", 1, "w", pre="Look. ") == ("<image>\nLook. Q?", [0])
    assert place_images("Q?", 0, "w") == ("Q?", [])
    with pytest.raises(ImageMarkerError, match=r"w: the text holds 2 <image> marker\(s\) but 1 image") as err:
        place_images("<image> <image>", 1, "w", what="the text")
    assert isinstance(err.value, RecordError) and err.value.reason == "image_marker_mismatch"
    with pytest.raises(ImageMarkerError, match=r"\{image#3\} in the context but the sample has 2"):
        place_images("{image#3}", 2, "w")
