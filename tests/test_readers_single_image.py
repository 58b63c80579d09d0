"""The single-image benchmark readers (MME, POPE, COCO captions, ScienceQA, MMBench, LLaVA-Bench),
each on small files written in its benchmark's exact layout, and their errors."""

import base64
import csv
import io
import json

import pytest
from PIL import Image

from graft.eval.readers import (
    IMAGE_MARKER,
    read_coco_captions,
    read_llava_bench,
    read_mmbench,
    read_mme,
    read_pope,
    read_scienceqa,
)
from graft.eval.tasks import get_task
from graft.prompts import MC_ANSWER, SHORT_ANSWER
from graft.record_files import RecordError

from reader_files import _img


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --- MME -----------------------------------------------------------------------------------------
def test_mme_reader_flat_and_split_layouts(tmp_path):
    root = tmp_path / "MME_Benchmark"
    _img(root / "existence" / "000000006040.jpg")
    (root / "existence" / "000000006040.txt").write_text(
        "Is there a train in this image? Please answer yes or no.\tYes\n"
        "Is there a bed in this image? Please answer yes or no.\tNo\n\n"
    )
    _img(root / "artwork" / "images" / "10002.jpg")
    (root / "artwork" / "questions_answers_YN").mkdir(parents=True)
    (root / "artwork" / "questions_answers_YN" / "10002.txt").write_text(
        "Does this artwork exist in the form of painting? Please answer yes or no.\tYes\n"
        "Does this artwork exist in the form of glassware? Please answer yes or no.\tNo\n"
    )
    samples = read_mme(root).samples
    assert [s.id for s in samples] == [
        "existence/000000006040.jpg/0",
        "existence/000000006040.jpg/1",
        "artwork/10002.jpg/0",
        "artwork/10002.jpg/1",
    ]
    assert [s.target for s in samples] == ["yes", "no", "yes", "no"]
    assert samples[2].images[0].parent.name == "images"
    assert samples[0].prompt == f"{IMAGE_MARKER}\nIs there a train in this image? Please answer yes or no."
    # the built-in task asks as lmms-eval's MME task does by default: its mme_doc_to_text drops
    # " Please answer yes or no." and appends the post_prompt (LLaVA-1.5's short-answer line)
    asked = get_task("mme").read(root).samples
    assert asked[0].prompt == f"{IMAGE_MARKER}\nIs there a train in this image?\n{SHORT_ANSWER}"
    assert [s.meta["question"] for s in asked] == [s.meta["question"] for s in samples]  # scored as MME's


def test_mme_reader_errors(tmp_path):
    root = tmp_path / "MME"
    _img(root / "count" / "a.jpg")
    (root / "count" / "a.txt").write_text("How many? Please answer yes or no.\tMaybe\nq2\tNo\n")
    (root / "count" / "b.txt").write_text("q\tYes\nq\tNo\n")  # no b.jpg
    with pytest.raises(RecordError, match=r"a\.txt:1: answer must be Yes or No"):
        read_mme(root)
    result = read_mme(root, skip_bad=True)
    assert len(result) == 0 and len(result.bad) == 2 and "no image b.jpg/.png" in result.bad[1]


# --- POPE ----------------------------------------------------------------------------------------
def test_pope_reader_folder_and_merged_file(tmp_path):
    _img(tmp_path / "images" / "COCO_val2014_000000310196.jpg")
    row = {
        "question_id": 1,
        "image": "COCO_val2014_000000310196.jpg",
        "text": "Is there a snowboard in the image?",
    }
    _jsonl(
        tmp_path / "coco_pope_random.json", [row | {"label": "yes"}, row | {"question_id": 2, "label": "no"}]
    )
    _jsonl(tmp_path / "coco_pope_adversarial.json", [row | {"label": "no"}])
    result = read_pope(tmp_path)
    assert [s.id for s in result] == ["adversarial/1", "random/1", "random/2"]
    assert [s.meta["split"] for s in result] == ["adversarial", "random", "random"]
    short = "\nAnswer the question using a single word or phrase."
    assert result.samples[0].prompt == "<image>\nIs there a snowboard in the image?"
    assert result.samples[0].meta["question"] == "Is there a snowboard in the image?"
    merged = _jsonl(
        tmp_path / "merged" / "llava_pope_test.jsonl",
        [
            row | {"label": "yes", "category": "popular"},
            row | {"question_id": 9, "label": "no", "category": "random", "text": row["text"] + short},
        ],
    )
    single = read_pope(merged, image_root=tmp_path / "images")
    # LLaVA's file carries the short-answer line: read as the bare question, as POPE's own files
    assert single.samples[0].prompt == single.samples[1].prompt == result.samples[0].prompt
    assert [(s.id, s.meta["split"], s.target) for s in single] == [(1, "popular", "yes"), (9, "random", "no")]
    bad = _jsonl(
        tmp_path / "bad" / "questions.jsonl",
        [row | {"label": "perhaps", "category": "random"}, row | {"label": "no"}],
    )
    with pytest.raises(RecordError, match=r"questions\.jsonl:1: field 'label' must be yes or no"):
        read_pope(bad, image_root=tmp_path / "images")
    result = read_pope(bad, image_root=tmp_path / "images", skip_bad=True)
    assert len(result.bad) == 2 and "no split" in result.bad[1]


# --- COCO ----------------------------------------------------------------------------------------
def test_coco_captions_reader(tmp_path):
    _img(tmp_path / "images" / "COCO_val2014_000000000042.jpg")
    _img(tmp_path / "images" / "COCO_val2014_000000000073.jpg")
    ann = {
        "images": [
            {"id": 42, "file_name": "COCO_val2014_000000000042.jpg"},
            {"id": 73, "file_name": "COCO_val2014_000000000073.jpg"},
            {"id": 99, "file_name": "no_captions.jpg"},
        ],
        "annotations": [
            {"id": 1, "image_id": 42, "caption": "A dog on a couch."},
            {"id": 2, "image_id": 42, "caption": "A brown dog sleeping."},
            {"id": 3, "image_id": 73, "caption": "A red bus."},
        ],
    }
    (tmp_path / "captions_val2014.json").write_text(json.dumps(ann))
    result = read_coco_captions(tmp_path / "captions_val2014.json")
    assert [(s.id, s.target) for s in result] == [
        (42, ["A dog on a couch.", "A brown dog sleeping."]),
        (73, ["A red bus."]),
    ]
    ann["annotations"].append({"id": 4, "image_id": 5, "caption": "orphan"})
    ann["annotations"].append({"id": 5, "image_id": 73})
    (tmp_path / "bad.json").write_text(json.dumps(ann))
    with pytest.raises(RecordError, match=r"annotations\[4\]: missing field 'caption'"):
        read_coco_captions(tmp_path / "bad.json")
    result = read_coco_captions(tmp_path / "bad.json", skip_bad=True)
    assert len(result) == 2 and any("image_id 5" in b for b in result.bad)


# --- ScienceQA -----------------------------------------------------------------------------------
def test_scienceqa_llava_form(tmp_path):
    _img(tmp_path / "images" / "5" / "image.png")
    _img(tmp_path / "images" / "6" / "image.png")
    records = [
        {
            "id": "4",
            "conversations": [
                {
                    "from": "human",
                    "value": "Which figure of speech is used?\nSing, O goddess\nA. chiasmus\nB. apostrophe",
                },
                {"from": "gpt", "value": "B"},
            ],
        },
        {
            "id": "5",
            "image": "5/image.png",
            "conversations": [
                {
                    "from": "human",
                    "value": "<image>\nContext: A parachute test.\nWhich could the test show?\n"
                    "A. if it was damaged\nB. how steady it was\nC. whether it swings at 400 km/h\n"
                    "Answer with the option's letter from the given choices directly.",
                },
                {"from": "gpt", "value": "B"},
            ],
        },
        {
            "id": "6",
            "image": "6/image.png",
            "conversations": [
                {
                    "from": "human",
                    "value": "Which is farthest north?\nContext: N/A\nOptions: (A) Ohio (B) Maine",
                },
                {"from": "gpt", "value": "LECTURE: maps.\nThe answer is B."},
            ],
        },
    ]
    (tmp_path / "llava_test_CQM-A.json").write_text(json.dumps(records))
    img = read_scienceqa(tmp_path / "llava_test_CQM-A.json")
    assert [s.id for s in img] == ["5", "6"]  # the IMG subset
    assert img.samples[0].meta["choices"] == [
        "if it was damaged",
        "how steady it was",
        "whether it swings at 400 km/h",
    ]
    assert img.samples[1].meta["choices"] == ["Ohio", "Maine"] and img.samples[1].target == "B"
    assert img.samples[1].prompt.startswith(IMAGE_MARKER)
    full = read_scienceqa(tmp_path / "llava_test_CQM-A.json", images_only=False)
    assert [s.target for s in full] == ["B", "B", "B"] and full.samples[0].images == []
    records[1]["conversations"][1]["value"] = "D"  # not one of its three options
    (tmp_path / "bad.json").write_text(json.dumps(records))
    with pytest.raises(RecordError, match=r"bad\.json\[1\] \(id '5'\): the gpt turn names no option letter"):
        read_scienceqa(tmp_path / "bad.json")


# --- MMBench -------------------------------------------------------------------------------------
def _b64_png(colour):
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_mmbench_tsv(tmp_path):
    header = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "image"]
    rows = [
        [
            0,
            'What colour is the "square"?',
            "Look closely.\nTwo lines.",
            "red",
            "blue",
            "green",
            "",
            "A",
            "color",
            "attr",
            _b64_png((255, 0, 0)),
        ],
        [
            1_000_000,
            'What colour is the "square"?',
            "Look closely.\nTwo lines.",
            "blue",
            "green",
            "red",
            "",
            "C",
            "color",
            "attr",
            "0",
        ],
        [5, "Which shape?", "nan", "circle", "square", "", "", "B", "shape", "attr", _b64_png((0, 0, 255))],
    ]
    path = tmp_path / "mmbench_dev_en.tsv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f, delimiter="\t")  # quoting as pandas' to_csv does
        writer.writerow(header)
        writer.writerows(rows)
    result = read_mmbench(path, image_dir=tmp_path / "imgs")
    a, b, c = result.samples
    assert (a.id, a.meta["group"], b.meta["group"], c.meta["group"]) == (0, 0, 0, 5)
    assert a.prompt == (
        f'{IMAGE_MARKER}\nLook closely.\nTwo lines.\nWhat colour is the "square"?\n'
        f"A. red\nB. blue\nC. green\n{MC_ANSWER}"
    )
    assert b.meta["choices"] == ["blue", "green", "red"] and b.target == "C"
    assert b.images[0].read_bytes() == a.images[0].read_bytes() and a.images[0].suffix == ".png"
    assert c.meta["choices"] == ["circle", "square"] and "Which shape?" in c.prompt and "nan" not in c.prompt
    assert Image.open(c.images[0]).getpixel((0, 0)) == (0, 0, 255)
    rows.append([7, "q", "", "x", "y", "", "", "E", "c", "c", _b64_png((0, 0, 0))])
    with path.open("w", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(header)
        writer.writerows(rows)
    with pytest.raises(RecordError, match=r"mmbench_dev_en\.tsv:5 \(index 7\): answer 'E'"):
        read_mmbench(path, image_dir=tmp_path / "imgs")


# --- LLaVA-Bench ---------------------------------------------------------------------------------
def test_llava_bench_reader(tmp_path):
    _img(tmp_path / "images" / "001.jpg")
    _jsonl(
        tmp_path / "questions.jsonl",
        [
            {
                "question_id": 0,
                "image": "001.jpg",
                "text": "What is the name of this dish?",
                "category": "conv",
            },
            {
                "question_id": 1,
                "image": "001.jpg",
                "text": "Describe this photo in detail.",
                "category": "detail",
            },
        ],
    )
    _jsonl(tmp_path / "context.jsonl", [{"id": "001", "image": "001.jpg", "caption": "A bowl of ramen."}])
    _jsonl(
        tmp_path / "answers_gpt4.jsonl",
        [{"question_id": 0, "text": "Ramen."}, {"question_id": 1, "text": "A bowl."}],
    )
    result = read_llava_bench(tmp_path)
    assert [(s.id, s.meta["category"], s.meta["rule"], s.target) for s in result] == [
        (0, "conv", "llava_bench_conv", "Ramen."),
        (1, "detail", "llava_bench_detail", "A bowl."),
    ]
    assert result.samples[0].meta["context"] == "A bowl of ramen."  # one caption, not one line per letter
    # the COCO form: captions and boxes; COCO judge rules
    _jsonl(
        tmp_path / "context.jsonl",
        [
            {
                "image": "001.jpg",
                "captions": ["A bowl.", "Noodles."],
                "instances": [{"category": "bowl", "bbox": [0.1, 0.2, 0.5, 0.6]}],
            }
        ],
    )
    coco = read_llava_bench(tmp_path)
    assert coco.samples[0].meta["context"] == "A bowl.\nNoodles.\n\nbowl: [0.1, 0.2, 0.5, 0.6]"
    assert coco.samples[0].meta["rule"] == "conv"
    _jsonl(tmp_path / "answers_gpt4.jsonl", [{"question_id": 0, "text": "Ramen."}])
    with pytest.raises(RecordError, match=r"questions\.jsonl:2: question_id 1 has no reference answer"):
        read_llava_bench(tmp_path)
