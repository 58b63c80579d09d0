"""``graft adapt``: VQA lines, COCO captions and multiple choice made LLaVA instruction records."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

import graft.cli.adapt  # noqa: F401  (registers the verb)
from graft.cli.app import app
from graft.data.records import parse_record
from graft.instruct.adapt import (
    BRIEF_CAPTION,
    INSTRUCTBLIP_CAPTION,
    INSTRUCTBLIP_MC,
    INSTRUCTBLIP_VQA,
    MC_ANSWER,
    SHORT_ANSWER,
    AdaptSettings,
    adapt,
    adapt_file,
)
from graft.instruct.adapt_readers import detect_format
from graft.record_files import RecordError, iter_records


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _valid(records: list[dict]) -> list[dict]:
    for i, record in enumerate(records):
        parse_record(record, f"out[{i}]")
    return records


VQA = [
    {"question_id": 1, "image": "coco/1.jpg", "question": "What colour is the bus?", "answer": "red"},
    {"question_id": 2, "image": "coco/1.jpg", "question": "How many wheels?", "answer": 4},
    {"question_id": 3, "image": "coco/2.jpg", "question": "<image>\nIs it raining?", "answer": "no"},
    {"question_id": 4, "image": "coco/1.jpg", "question": "Where is it?", "answer": "street"},
]
MC = [
    {
        "id": "q1",
        "image": "a.png",
        "question": "Which animal?",
        "options": ["cat", "dog", "cow"],
        "answer": "B",
    },
    {"id": "q2", "image": "b.png", "question": "Colour?", "options": {"A": "red", "B": "blue"}, "answer": 0},
    {"id": "q3", "image": "c.png", "question": "Shape?", "choices": ["circle", "square"], "answer": "square"},
]
COCO = {
    "images": [
        {"id": 9, "file_name": "COCO_train2014_9.jpg"},
        {"id": 25, "file_name": "COCO_train2014_25.jpg"},
    ],
    "annotations": [
        {"id": 100 + k, "image_id": 9 if k < 5 else 25, "caption": f" Caption number {k}. "} for k in range(7)
    ],
}


# --- VQA ---------------------------------------------------------------------------------------------
def test_vqa_one_record_per_question_with_the_short_answer_prompt(tmp_path):
    records, stats = adapt(_jsonl(tmp_path / "vqa.jsonl", VQA), AdaptSettings(merge_per_image=False))
    assert [r["id"] for r in _valid(records)] == ["1", "2", "3", "4"]
    assert records[0] == {
        "id": "1",
        "image": "coco/1.jpg",
        "conversations": [
            {"from": "human", "value": f"<image>\nWhat colour is the bus?\n{SHORT_ANSWER}"},
            {"from": "gpt", "value": "red"},
        ],
    }
    assert records[1]["conversations"][1]["value"] == "4"  # a number answer is text
    # the source's own marker is dropped: the record places exactly one
    assert records[2]["conversations"][0]["value"] == f"<image>\nIs it raining?\n{SHORT_ANSWER}"
    assert stats.summary() == {
        "format": "vqa",
        "records_in": 4,
        "questions": 4,
        "records_out": 4,
        "merged": 0,
        "over_limit": 0,
        "skipped": {},
    }


def test_vqav2_answers_take_the_most_frequent_ties_by_first(tmp_path):
    rows = [
        {
            "id": "a",
            "image": "x.jpg",
            "question": "Q?",
            "answers": [{"answer": "two"}, {"answer": "2"}, {"answer": "2"}],
        },
        {"id": "b", "image": "x.jpg", "question": "Q?", "answers": [{"answer": "yes"}, {"answer": "no"}]},
        {"id": "c", "image": "x.jpg", "question": "Q?", "answers": ["no", "yes", "yes", "no"]},
    ]
    records, _ = adapt(_jsonl(tmp_path / "v.jsonl", rows), AdaptSettings(merge_per_image=False))
    assert [r["conversations"][1]["value"] for r in _valid(records)] == ["2", "yes", "no"]


def test_questions_on_one_image_merge_into_one_multi_turn_record(tmp_path):
    records, stats = adapt(_jsonl(tmp_path / "vqa.jsonl", VQA), AdaptSettings(seed=3))
    _valid(records)
    assert [r["id"] for r in records] == ["1", "3"]  # the first question's id, in file order
    merged = records[0]["conversations"]
    assert len(merged) == 6 and [t["from"] for t in merged] == ["human", "gpt"] * 3
    humans = [t["value"] for t in merged[::2]]
    assert humans[0].startswith("<image>\n") and all("<image>" not in h for h in humans[1:])
    asked = {
        h.removeprefix("<image>\n").split("\n")[0]: a["value"]
        for h, a in zip(humans, merged[1::2], strict=True)
    }
    assert asked == {"What colour is the bus?": "red", "How many wheels?": "4", "Where is it?": "street"}
    assert stats.merged == 1 and stats.records_out == 2 and stats.questions == 4
    # the turn order is seeded: some seed gives another order than the file's
    orders = set()
    for seed in range(8):
        recs, _ = adapt(tmp_path / "vqa.jsonl", AdaptSettings(seed=seed))
        orders.add(tuple(t["value"] for t in recs[0]["conversations"][1::2]))
    assert len(orders) > 1


def test_max_turns_splits_a_long_record(tmp_path):
    records, stats = adapt(_jsonl(tmp_path / "vqa.jsonl", VQA), AdaptSettings(max_turns=2))
    assert [r["id"] for r in _valid(records)] == ["1-part1", "1-part2", "3"]
    assert [len(r["conversations"]) for r in records] == [4, 2, 2]
    assert all(r["conversations"][0]["value"].startswith("<image>\n") for r in records)
    assert stats.merged == 1
    prefixed, _ = adapt(tmp_path / "vqa.jsonl", AdaptSettings(max_turns=2, id_prefix="vqav2-"))
    assert prefixed[0]["id"] == "vqav2-1-part1"


# --- COCO captions -----------------------------------------------------------------------------------
def test_coco_captions_one_record_per_caption_with_a_brief_prompt(tmp_path):
    (tmp_path / "captions_train2014.json").write_text(json.dumps(COCO))
    records, stats = adapt(tmp_path / "captions_train2014.json", AdaptSettings())
    assert stats.format == "caption" and stats.records_in == 7 and stats.merged == 0
    assert [r["id"] for r in _valid(records)] == [str(100 + k) for k in range(7)]
    first = records[0]
    assert first["image"] == "COCO_train2014_9.jpg"
    prompt = first["conversations"][0]["value"]
    assert prompt.startswith("<image>\n") and prompt.removeprefix("<image>\n") in BRIEF_CAPTION
    assert first["conversations"][1]["value"] == "Caption number 0."
    # the prompts are drawn, not one for all
    assert len({r["conversations"][0]["value"] for r in records}) > 1


def test_captions_per_image_keeps_a_seeded_choice(tmp_path):
    path = tmp_path / "caps.json"
    path.write_text(json.dumps(COCO))
    records, stats = adapt(path, AdaptSettings(captions_per_image=2, seed=1))
    images = Counter(r["image"] for r in _valid(records))
    assert images == {"COCO_train2014_9.jpg": 2, "COCO_train2014_25.jpg": 2}
    assert stats.over_limit == 3 and stats.records_out == 4
    chosen = {
        tuple(r["id"] for r in adapt(path, AdaptSettings(captions_per_image=1, seed=s))[0]) for s in range(6)
    }
    assert len(chosen) > 1  # which caption is kept follows the seed


# --- multiple choice ---------------------------------------------------------------------------------
def test_multiple_choice_letters_options_and_answer(tmp_path):
    path = _jsonl(tmp_path / "mc.jsonl", MC)
    records, stats = adapt(path, AdaptSettings(shuffle_options=False))
    assert stats.format == "mc" and [r["id"] for r in _valid(records)] == ["q1", "q2", "q3"]
    assert records[0]["conversations"] == [
        {"from": "human", "value": f"<image>\nWhich animal?\nA. cat\nB. dog\nC. cow\n{MC_ANSWER}"},
        {"from": "gpt", "value": "B"},
    ]
    assert [r["conversations"][1]["value"] for r in records] == ["B", "A", "B"]  # letter, index, text


def _options(prompt: str) -> dict[str, str]:
    return dict(
        line.split(". ", 1) for line in prompt.split("\n") if line[:1].isupper() and line[1:3] == ". "
    )


def test_shuffled_options_keep_the_letter_on_the_right_option(tmp_path):
    rows = [
        {
            "id": f"q{k}",
            "image": f"{k}.png",
            "question": "Pick?",
            "options": ["w", "x", "y", "z"],
            "answer": k % 4,
        }
        for k in range(40)
    ]
    path = _jsonl(tmp_path / "mc.jsonl", rows)
    letters = Counter()
    for seed in (0, 1):
        for row, record in zip(rows, adapt(path, AdaptSettings(seed=seed))[0], strict=True):
            human, answer = (t["value"] for t in record["conversations"])
            assert _options(human)[answer] == row["options"][row["answer"]]
            assert sorted(_options(human).values()) == ["w", "x", "y", "z"]
            letters[answer] += 1
    assert len(letters) == 4  # the right answer lands on every letter


def test_mc_hint_goes_before_the_question(tmp_path):
    row = {**MC[0], "hint": "A farm scene."}
    records, _ = adapt(_jsonl(tmp_path / "mc.jsonl", [row]), AdaptSettings(shuffle_options=False))
    assert records[0]["conversations"][0]["value"].startswith("<image>\nA farm scene.\nWhich animal?\nA. cat")


# --- InstructBLIP-style templates ---------------------------------------------------------------------
def test_instructblip_templates(tmp_path):
    settings = AdaptSettings(templates="instructblip", merge_per_image=False)
    vqa, _ = adapt(_jsonl(tmp_path / "vqa.jsonl", VQA), settings)
    allowed = {t.format(question="What colour is the bus?") for t in INSTRUCTBLIP_VQA}
    assert vqa[0]["conversations"][0]["value"].removeprefix("<image>\n") in allowed
    mc, _ = adapt(_jsonl(tmp_path / "mc.jsonl", MC), AdaptSettings(templates="instructblip"))
    human = mc[0]["conversations"][0]["value"]
    assert MC_ANSWER not in human and "Which animal?" in human
    assert any(human.endswith(t.rsplit("\n", 1)[-1]) for t in INSTRUCTBLIP_MC)
    assert _options(human)[mc[0]["conversations"][1]["value"]] == "dog"
    (tmp_path / "caps.json").write_text(json.dumps(COCO))
    caps, _ = adapt(tmp_path / "caps.json", AdaptSettings(templates="instructblip"))
    assert all(r["conversations"][0]["value"].removeprefix("<image>\n") in INSTRUCTBLIP_CAPTION for r in caps)
    _valid(vqa + mc + caps)


# --- output, determinism, detection -------------------------------------------------------------------
@pytest.mark.parametrize("name", ["out.json", "out.jsonl"])
def test_same_inputs_and_seed_give_byte_identical_output(tmp_path, name):
    (tmp_path / "caps.json").write_text(json.dumps(COCO))
    _jsonl(tmp_path / "mc.jsonl", MC)
    for source in ("caps.json", "mc.jsonl"):
        outs = []
        for run, seed in enumerate((5, 5, 6)):
            out = tmp_path / f"{run}-{name}"
            adapt_file(tmp_path / source, out, AdaptSettings(seed=seed))
            outs.append(out.read_bytes())
        assert outs[0] == outs[1] and outs[0] != outs[2]
        records = [r for r, _ in iter_records(tmp_path / f"0-{name}")]
        assert len(_valid(records)) == {"caps.json": 7, "mc.jsonl": 3}[source]


def test_format_detection(tmp_path):
    (tmp_path / "caps.json").write_text(json.dumps(COCO))
    assert detect_format(tmp_path / "caps.json") == "caption"
    assert detect_format(_jsonl(tmp_path / "v.jsonl", VQA)) == "vqa"
    assert detect_format(_jsonl(tmp_path / "m.json", MC)) == "mc"  # JSON Lines under .json
    (tmp_path / "list.json").write_text(json.dumps(VQA))
    assert detect_format(tmp_path / "list.json") == "vqa"
    assert len(adapt(tmp_path / "list.json", AdaptSettings())[0]) == 2  # a JSON list is read too
    with pytest.raises(RecordError, match="cannot tell the format"):
        detect_format(_jsonl(tmp_path / "odd.jsonl", [{"image": "a", "text": "b"}]))


# --- bad input ----------------------------------------------------------------------------------------
BAD = [
    ("{not json", "malformed_json", ":1: not valid JSON"),
    ({"id": 1, "question": "Q?", "answer": "a"}, "missing_field", ":1: field 'image' is missing"),
    (
        {"id": 1, "image": "a.jpg", "question": "  ", "answer": "a"},
        "empty_question",
        ":1: field 'question' is empty",
    ),
    ({"id": 1, "image": "a.jpg", "question": "Q?"}, "missing_field", ":1: field 'answer' is missing"),
]
BAD_MC = [
    (
        {"image": "a", "question": "Q?", "options": ["x", "y"], "answer": "C"},
        "answer_out_of_range",
        "'answer' is 'C'",
    ),
    ({"image": "a", "question": "Q?", "options": ["x", "y"], "answer": 2}, "answer_out_of_range", "index 2"),
    ({"image": "a", "question": "Q?", "options": ["x", "y"], "answer": "z"}, "answer_not_in_options", "'z'"),
    ({"image": "a", "question": "Q?", "options": ["x"], "answer": "A"}, "bad_field", "2 to 26 options"),
    (
        {"image": "a", "question": "Q?", "options": {"A": "x", "C": "y"}, "answer": "A"},
        "bad_field",
        "keyed A, B",
    ),
]


@pytest.mark.parametrize(("row", "reason", "message"), BAD + BAD_MC)
def test_a_bad_record_names_file_line_and_field_or_is_counted(tmp_path, row, reason, message):
    fmt = "mc" if (row, reason, message) in BAD_MC else "vqa"
    good = MC[0] if fmt == "mc" else VQA[0]
    path = _jsonl(tmp_path / "in.jsonl", [row, good])
    with pytest.raises(RecordError, match="in.jsonl") as err:
        adapt(path, AdaptSettings(format=fmt))
    assert message in str(err.value) and err.value.reason == reason
    records, stats = adapt(path, AdaptSettings(format=fmt, skip_bad=True))
    assert len(_valid(records)) == 1 and stats.records_in == 2 and stats.skipped == {reason: 1}


def test_bad_captions_and_duplicate_ids(tmp_path):
    doc = {
        **COCO,
        "annotations": [*COCO["annotations"], {"id": 9, "image_id": 77, "caption": "x"}, {"image_id": 9}],
    }
    (tmp_path / "caps.json").write_text(json.dumps(doc))
    with pytest.raises(RecordError, match=r"caps.json:annotations\[7\]: field 'image_id' 77"):
        adapt(tmp_path / "caps.json", AdaptSettings())
    _, stats = adapt(tmp_path / "caps.json", AdaptSettings(skip_bad=True))
    assert stats.skipped == {"bad_field": 1, "missing_field": 1} and stats.records_in == 9
    path = _jsonl(tmp_path / "dup.jsonl", [VQA[0], VQA[0]])
    with pytest.raises(RecordError, match="id '1' already used at .*dup.jsonl:1"):
        adapt(path, AdaptSettings())
    assert adapt(path, AdaptSettings(skip_bad=True))[1].skipped == {"duplicate_id": 1}


def test_ids_without_a_source_id_come_from_the_line(tmp_path):
    rows = [{k: v for k, v in row.items() if k != "question_id"} for row in VQA[:2]]
    records, _ = adapt(_jsonl(tmp_path / "vq.jsonl", rows), AdaptSettings(merge_per_image=False))
    assert [r["id"] for r in records] == ["vq-1", "vq-2"]


def test_check_images(tmp_path):
    path = _jsonl(tmp_path / "vqa.jsonl", VQA)
    (tmp_path / "imgs" / "coco").mkdir(parents=True)
    (tmp_path / "imgs" / "coco" / "1.jpg").write_bytes(b"x")
    with pytest.raises(RecordError, match=r"vqa.jsonl:3: image 'coco/2.jpg' not found"):
        adapt(path, AdaptSettings(check_images=True, image_root=tmp_path / "imgs"))
    records, stats = adapt(
        path, AdaptSettings(check_images=True, image_root=tmp_path / "imgs", skip_bad=True)
    )
    assert stats.skipped == {"missing_image": 1} and [r["image"] for r in records] == ["coco/1.jpg"]
    assert len(adapt(path, AdaptSettings())[0]) == 2  # unchecked without --check-images


# --- the verb ------------------------------------------------------------------------------------------
def _summary(output: str) -> dict:
    return json.loads(next(line for line in output.splitlines() if line.startswith("{")))


def test_graft_adapt_cli(tmp_path):
    source = _jsonl(tmp_path / "vqa.jsonl", VQA)
    out = tmp_path / "out" / "vqa_llava.json"
    result = CliRunner().invoke(
        app, ["adapt", str(source), "--out", str(out), "--seed", "2", "--max-turns", "2"]
    )
    assert result.exit_code == 0, result.output
    summary = _summary(result.output)
    assert summary["records_in"] == 4 and summary["records_out"] == 3 and summary["merged"] == 1
    assert len(_valid(json.loads(out.read_text()))) == 3
    result = CliRunner().invoke(app, ["adapt", str(source), "-o", str(out), "--no-merge-per-image"])
    assert result.exit_code == 0 and _summary(result.output)["records_out"] == 4
    (tmp_path / "caps.json").write_text(json.dumps(COCO))
    args = [
        "adapt",
        str(tmp_path / "caps.json"),
        "-o",
        str(tmp_path / "c.jsonl"),
        "--captions-per-image",
        "1",
    ]
    result = CliRunner().invoke(app, [*args, "--templates", "instructblip"])
    assert result.exit_code == 0 and _summary(result.output)["records_out"] == 2
    mc = _jsonl(tmp_path / "mc.jsonl", MC)
    result = CliRunner().invoke(
        app, ["adapt", str(mc), "-o", str(tmp_path / "m.json"), "--no-shuffle-options"]
    )
    assert json.loads((tmp_path / "m.json").read_text())[0]["conversations"][1]["value"] == "B"


def test_graft_adapt_cli_errors_are_clear(tmp_path):
    source = _jsonl(tmp_path / "bad.jsonl", [VQA[0], "{oops", {**VQA[1], "question": ""}])
    out = tmp_path / "o.jsonl"
    result = CliRunner().invoke(app, ["adapt", str(source), "-o", str(out)])
    assert result.exit_code == 2 and "bad.jsonl:2: not valid JSON" in result.output
    assert "Traceback" not in result.output and not out.exists()
    result = CliRunner().invoke(app, ["adapt", str(source), "-o", str(out), "--skip-bad"])
    assert result.exit_code == 0, result.output
    assert _summary(result.output)["skipped"] == {"empty_question": 1, "malformed_json": 1}
    for args, message in [
        (["--format", "tsv"], "unknown format 'tsv'"),
        (["--max-turns", "0"], "max_turns must be at least 1"),
        (["--templates", "x"], "unknown templates"),
    ]:
        result = CliRunner().invoke(app, ["adapt", str(source), "-o", str(out), *args])
        assert result.exit_code == 2 and message in result.output
    result = CliRunner().invoke(app, ["adapt", str(tmp_path / "none.jsonl"), "-o", str(out)])
    assert result.exit_code == 2 and "file not found" in result.output
    result = CliRunner().invoke(app, ["adapt", str(source), "-o", str(source)])
    assert result.exit_code == 2 and "is the source file" in result.output
