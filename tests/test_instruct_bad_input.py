"""Bad input to the instruction-data commands (adapt, mix, gen-data) found by using them: files
that are not UTF-8, outputs that are folders or the command's own inputs, repeated ids."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from graft.cli import app
from graft.files import write_text_atomic
from graft.instruct.gen_settings import GenError, GenSettings
from graft.record_files import RecordError, iter_records, load_json

NOT_UTF8 = b'{"id": "a", "question": "caf\xe9?", "answer": "x"}\n'


def _run(*args: str) -> object:
    return CliRunner().invoke(app, list(args))


def test_files_that_are_not_utf8_name_the_line_and_a_bom_is_read(tmp_path):
    lines = tmp_path / "q.jsonl"
    lines.write_bytes(b'{"id": "ok"}\n' + NOT_UTF8)
    with pytest.raises(RecordError, match=r"q.jsonl:2: not valid UTF-8 \(byte 0xe9 at column 29\)"):
        list(iter_records(lines))
    skipped = []
    assert [r["id"] for r, _ in iter_records(lines, on_bad=skipped.append)] == ["ok"]
    assert skipped[0].reason == "malformed_json"
    listing = tmp_path / "l.json"
    listing.write_bytes(b'[\n{"id": "ok"},\n' + NOT_UTF8 + b"]")
    with pytest.raises(RecordError, match=r"l.json:3: not valid UTF-8 \(byte 0xe9 at column 29\)"):
        load_json(listing)
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b'\xef\xbb\xbf{"id": "b"}\n')
    assert [r["id"] for r, _ in iter_records(bom)] == ["b"]
    bom_list = tmp_path / "bom.json"
    bom_list.write_bytes(b'\xef\xbb\xbf[{"id": "c"}]')
    assert load_json(bom_list) == [{"id": "c"}]


def test_adapt_and_mix_report_undecodable_files_without_a_traceback(tmp_path):
    bad = tmp_path / "q.jsonl"
    bad.write_bytes(NOT_UTF8)
    result = _run("adapt", str(bad), "-o", str(tmp_path / "o.json"))  # format auto: says why
    assert result.exit_code == 2 and "q.jsonl:1: not valid UTF-8" in result.output, result.output
    spec = tmp_path / "m.yaml"
    spec.write_bytes(b"datasets:\n  - {path: q.jsonl, strategy: all}\n# \xff\n")
    result = _run("mix", str(spec), "--out", str(tmp_path / "o.json"))
    assert result.exit_code == 2 and "m.yaml:3: not valid UTF-8 (byte 0xff at column 3)" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_an_atomic_write_onto_a_folder_is_refused_and_leaves_no_temporary_file(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(IsADirectoryError, match="out is a folder"):
        write_text_atomic(tmp_path / "out", "x")
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "f.json").mkdir()  # os.replace of a file onto a folder fails after the write
    (tmp_path / "ro" / "f.json" / "inside").write_text("x")
    with pytest.raises(IsADirectoryError):
        write_text_atomic(tmp_path / "ro" / "f.json", "x")
    assert sorted(p.name for p in (tmp_path / "ro").iterdir()) == ["f.json"]


def _dataset(tmp_path, records) -> tuple:
    (tmp_path / "d.json").write_text(json.dumps(records))
    spec = tmp_path / "m.yaml"
    spec.write_text(yaml.safe_dump({"datasets": [{"path": "d.json", "strategy": "all"}]}))
    return spec, tmp_path / "d.json"


def _turns(q: str, a: str) -> list[dict]:
    return [{"from": "human", "value": q}, {"from": "gpt", "value": a}]


def test_mix_never_writes_over_its_own_yaml_or_lock(tmp_path):
    spec, _ = _dataset(tmp_path, [{"id": "a", "conversations": _turns("hi", "x")}])
    before = spec.read_bytes()
    result = _run("mix", str(spec), "--out", str(spec))
    assert result.exit_code == 2 and "is the mixture YAML" in result.output
    assert spec.read_bytes() == before
    assert _run("mix", str(spec), "--out", str(tmp_path / "o.json")).exit_code == 0
    lock = tmp_path / "o.lock.json"
    kept = lock.read_bytes()
    result = _run("mix", "--from-lock", str(lock), "--out", str(lock))
    assert result.exit_code == 2 and "is the lock it is rebuilt from" in result.output
    assert lock.read_bytes() == kept
    (tmp_path / "folder").mkdir()
    result = _run("mix", str(spec), "--out", str(tmp_path / "folder"))
    assert result.exit_code == 2 and "folder is a folder" in result.output
    assert not list(tmp_path.glob("folder.*.tmp"))


def test_mix_a_repeated_id_is_a_duplicate_even_when_its_first_record_was_skipped(tmp_path):
    records = [
        {"id": "a", "image": "missing.png", "conversations": _turns("<image>\nWhat?", "image version")},
        {"id": "a", "conversations": _turns("What?", "text version")},
        {"id": "b", "conversations": _turns("Hi", "x")},
    ]
    spec, _ = _dataset(tmp_path, records)
    out = tmp_path / "o.json"
    result = _run("mix", str(spec), "--out", str(out), "--skip-bad", "--check-images")
    assert result.exit_code == 0, result.output
    assert [r["id"] for r in json.loads(out.read_text())] == ["b"]  # neither copy of "a"
    again = tmp_path / "again.json"
    assert _run("mix", "--from-lock", str(tmp_path / "o.lock.json"), "--out", str(again)).exit_code == 0
    assert again.read_bytes() == out.read_bytes()


def test_adapt_coco_captions_with_a_repeated_image_id_is_an_error(tmp_path):
    caps = tmp_path / "caps.json"
    images = [{"id": 9, "file_name": "a.jpg"}, {"id": 9, "file_name": "b.jpg"}]
    caps.write_text(json.dumps({"images": images, "annotations": [{"image_id": 9, "caption": "A cat."}]}))
    result = _run("adapt", str(caps), "-o", str(tmp_path / "o.json"))
    assert result.exit_code == 2
    assert "caps.json:images[1]: id 9 already used at" in result.output
    assert "caps.json:images[0]" in result.output


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("rpm", 0, "rpm must be positive"),
        ("tpm", -5, "tpm must be positive"),
        ("temperature", -1.0, r"temperature must lie in \[0, 2\]"),
        ("temperature", 2.5, r"temperature must lie in \[0, 2\]"),
        ("top_p", 5.0, r"top_p must lie in \(0, 1\]"),
        ("top_p", 0.0, r"top_p must lie in \(0, 1\]"),
    ],
)
def test_gen_data_sampling_and_rate_settings_are_checked(tmp_path, field, value, message):
    base = {"contexts": tmp_path / "c.jsonl", "out": tmp_path / "g", "model": "m", "dry_run": True}
    with pytest.raises(GenError, match=message):
        GenSettings(**base, **{field: value}).check()
    GenSettings(**base, rpm=None, tpm=None, top_p=1.0).check()
    (tmp_path / "g").write_text("a file")
    with pytest.raises(GenError, match="out: .*g is a file; gen-data writes into a folder"):
        GenSettings(**base).check()


def test_adapt_a_coco_file_read_as_questions_says_what_it_is(tmp_path):
    caps = tmp_path / "caps.json"
    doc = {"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 1, "caption": "A cat."}]}
    caps.write_text(json.dumps(doc, indent=1))
    result = _run("adapt", str(caps), "-o", str(tmp_path / "o.json"), "--format", "vqa")
    assert result.exit_code == 2 and "one JSON object over several lines" in result.output
    assert "--format caption" in result.output
    one_line = tmp_path / "q.json"  # one record on one line is JSON Lines, whatever the suffix
    one_line.write_text(json.dumps({"id": 1, "image": "a.jpg", "question": "Q?", "answer": "yes"}))
    assert _run("adapt", str(one_line), "-o", str(tmp_path / "q_out.json"), "--format", "vqa").exit_code == 0
