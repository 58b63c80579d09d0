"""Synthetic discriminative pairs: attention scoring, shapes-world and photo edits, bad input."""

from __future__ import annotations

import json
import logging
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_images
from typer.testing import CliRunner

from graft.cli import app
from graft.data import LlavaDataset, parse_record
from graft.data.pairs import (
    AttentionScorer,
    EditResult,
    PairError,
    Region,
    Source,
    make_pairs,
    read_regions,
    region_scores,
)
from graft.data.photo_edit import OpenCVEditor, build_editor
from graft.world import build_world
from graft.world.edits import ShapesEditor, world_sources
from graft.world.scene import Scene

from tiny import tiny_model_and_processor

torch.set_num_threads(1)
QFORMER = {
    "name": "qformer",
    "num_query_tokens": 4,
    "qformer_config": {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "cross_attention_frequency": 1,
    },
}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pairs") / "world"
    build_world(out, num_images=40, seed=0)
    return out


# --- attention -------------------------------------------------------------------------------------
def test_region_scores_average_the_patches_inside_each_box():
    attention = torch.zeros(1 + 16)  # CLS + a 4x4 grid
    attention[1 + 0] = 1.0  # the top-left patch
    regions = [Region("a", (0.0, 0.0, 0.3, 0.3)), Region("b", (0.5, 0.5, 1.0, 1.0))]
    assert region_scores(attention, regions) == [1.0, 0.0]
    # a box smaller than a patch takes the patch at its centre
    assert region_scores(attention[1:], [Region("c", (0.05, 0.05, 0.1, 0.1))]) == [1.0]
    with pytest.raises(PairError, match="square patch grid"):
        region_scores(torch.ones(7), regions)


def test_qformer_cross_attention_map_is_a_distribution_and_keeps_outputs():
    model, processor = tiny_model_and_processor(connector=QFORMER)
    pixels = processor.preprocess_images([Image.new("RGB", (32, 32), (200, 30, 30))])
    features = model.select_vision_features(pixels)
    before = model.connector.query_outputs(features)
    attention = model.connector.cross_attention_map(features)
    assert attention.shape == (1, features.shape[1])
    torch.testing.assert_close(attention.sum(-1), torch.ones(1))
    assert model.connector.qformer.config._attn_implementation == "sdpa"  # restored
    torch.testing.assert_close(model.connector.query_outputs(features), before)


def test_attention_scorer_scores_each_region_and_needs_a_qformer(world):
    model, processor = tiny_model_and_processor(connector=QFORMER)
    source = world_sources(world, "train")[0]
    scores = AttentionScorer(model, processor)(Image.open(world / source.image), source.regions)
    assert len(scores) == len(source.regions) and all(s > 0 for s in scores)
    with pytest.raises(PairError, match="no Q-Former"):
        AttentionScorer(*tiny_model_and_processor())


def test_the_least_attended_object_is_edited(world, tmp_path):
    sources = [s for s in world_sources(world, "train") if len(s.regions) >= 3][:3]

    def scorer(image, regions):  # the last object is the one the VPG overlooks
        return [1.0] * (len(regions) - 1) + [0.1]

    make_pairs(sources, ShapesEditor(), world, tmp_path, scorer=scorer, pick_from=1, progress=False)
    rows = [json.loads(x) for x in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    for row, source in zip(rows, sources, strict=True):
        assert row["edit"]["target"] == source.regions[-1].label and row["edit"]["selection"] == "attention"
    # a resume goes on as the run began: not by chance where the first pairs were chosen by attention
    before = (tmp_path / "pairs.jsonl").read_text()
    with pytest.raises(PairError, match="3 of its 3 pairs were not chosen by random"):
        make_pairs(sources, ShapesEditor(), world, tmp_path, progress=False)
    assert (tmp_path / "pairs.jsonl").read_text() == before


# --- the shapes world: exact re-render ------------------------------------------------------------
def test_shapes_edits_rerender_exactly(world):
    source = next(s for s in world_sources(world, "train") if len(s.regions) >= 2)
    scene = Scene.from_dict(source.meta["scene"])
    image = Image.open(world / source.image).convert("RGB")
    assert np.array_equal(np.asarray(image), np.asarray(scene.render()))
    editor, rng = ShapesEditor(), random.Random(0)
    deleted = editor.edit(image, source, 0, "delete", rng)
    expected = scene.with_objects(scene.objects[1:]).render()
    assert np.array_equal(np.asarray(deleted.image), np.asarray(expected))
    assert deleted.description.startswith(f"The {source.regions[0].label} ") and "gone" in deleted.description
    for kind in ("modify", "swap", "add"):
        result = editor.edit(image, source, 0, kind, random.Random(1))
        if result is None:  # no room to add, or nothing different to swap with
            continue
        assert result.image.size == image.size
        assert not np.array_equal(np.asarray(result.image), np.asarray(image)), kind
        assert result.description.endswith(".")


def test_shapes_edits_name_what_one_image_shows_and_the_other_does_not(world):
    source = next(
        s
        for s in world_sources(world, "train")
        if len(s.regions) >= 2 and len(Scene.from_dict(s.meta["scene"]).categories) == len(s.regions)
    )
    scene = Scene.from_dict(source.meta["scene"])
    image, editor = Image.open(world / source.image).convert("RGB"), ShapesEditor()
    assert editor.edit(image, source, 0, "delete", random.Random(0)).only_in == (
        (scene.objects[0].category,),
        (),
    )
    for seed in range(6):
        modified = editor.edit(image, source, 0, "modify", random.Random(seed))
        first, second = modified.only_in
        new = modified.description.rsplit(" is ", 1)[1]  # "blue in the second image", "a triangle ..."
        assert first == (scene.objects[0].category,) and len(second) <= 1  # none: another has it
        others = {o.category for o in scene.objects[1:]}
        assert all(c not in others and c != first[0] and set(c.split()) & set(new.split()) for c in second)
        swapped = editor.edit(image, source, 0, "swap", random.Random(seed))
        assert swapped is None or swapped.only_in == ((), ())


def test_a_pair_asks_which_image_shows_what_its_edit_left_in_one(world):
    from graft.world.multi_image import pair_which_record

    pair = {"id": "p", "images": ["a.png", "b.png"], "edit": {"only_in": [["red circle"], ["blue circle"]]}}
    others = [("c.png", frozenset({"red circle"})), ("d.png", frozenset({"blue circle", "red square"}))]
    seen = set()
    for seed in range(40):
        record = pair_which_record(pair, random.Random(seed), others)
        question, answer = (t["value"] for t in record["conversations"])
        category = question.rsplit("Which image shows a ", 1)[1].rstrip("?")
        images = record["images"]
        assert question.count("<image>") == len(images) and record["id"] == "p-which"
        # the one image that shows the category is the answer: a third never shows it
        assert images["ABC".index(answer.removeprefix("Image "))] == (
            "a.png" if category == "red circle" else "b.png"
        )
        assert {"a.png", "b.png"} <= set(images) and set(images) - {"a.png", "b.png"} <= {
            "d.png" if category == "red circle" else "c.png"
        }
        seen.add((category, answer, len(images)))
    assert {(c, n) for c, _, n in seen} == {(c, n) for c in ("red circle", "blue circle") for n in (2, 3)}
    assert {a for _, a, _ in seen} == {"Image A", "Image B", "Image C"}
    assert pair_which_record({**pair, "edit": {"only_in": [[], []]}}, random.Random(0)) is None
    # no other image lacks the category: two images, never a third that shows it
    crowded = [("e.png", frozenset({"red circle", "blue circle"}))]
    assert all(len(pair_which_record(pair, random.Random(k), crowded)["images"]) == 2 for k in range(10))


def test_make_pairs_writes_llava_records_and_resumes(world, tmp_path, caplog):
    sources = world_sources(world, "train")[:6]
    with caplog.at_level(logging.WARNING):
        stats = make_pairs(sources, ShapesEditor(), world, tmp_path, seed=3, progress=False)
    assert "chosen at random" in caplog.text and stats.selection == "random"
    assert stats.written + stats.no_edit == 6 and stats.written >= 4
    lines = (tmp_path / "pairs.jsonl").read_text().splitlines()
    for line in lines:
        row = json.loads(line)
        record = parse_record(row, "pairs")
        assert len(record.images) == 2 and row["edit"]["kind"] in ("modify", "swap", "delete", "add")
        assert record.messages[0].content.startswith("Image A: <image>\nImage B: <image>\n")
        a, b = (Image.open(tmp_path / p) for p in record.images)
        assert a.size == b.size
    # the records train as they are (two images each)
    from tiny import tiny_model_and_processor as build

    dataset = LlavaDataset(tmp_path / "pairs.jsonl", tmp_path, build()[1])
    assert len(dataset) == len(lines)
    # a kill mid-write leaves a cut line: a rerun redoes that source only, and the same way
    cut = "\n".join(lines[:-1]) + "\n" + lines[-1][:20]
    (tmp_path / "pairs.jsonl").write_text(cut)
    again = make_pairs(sources, ShapesEditor(), world, tmp_path, seed=3, progress=False)
    assert again.written == 1 and again.reused == len(lines) - 1
    redone = (tmp_path / "pairs.jsonl").read_text().splitlines()[-1]
    assert json.loads(redone) == json.loads(lines[-1])


def test_graft_pairs_cli_on_a_world(world, tmp_path):
    result = CliRunner().invoke(
        app, ["pairs", "--world", str(world), "--out", str(tmp_path / "p"), "--limit", "3"]
    )
    assert result.exit_code == 0, result.output
    assert _stats(result.output)["selection"] == "random"
    bad = CliRunner().invoke(app, ["pairs", "--out", str(tmp_path / "q")])
    assert bad.exit_code == 2 and "exactly one of --world" in bad.output


def _stats(output: str) -> dict:
    line = next(line for line in output.splitlines() if '{"written"' in line)  # after tqdm's \r
    return json.loads(line[line.index("{") :])


# --- real photos: OpenCV ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("photos")
    data = load_sample_images()
    for name, array in zip(data.filenames, data.images, strict=True):
        Image.fromarray(array).resize((320, 214)).save(root / Path(name).name)
    rows = [  # boxes drawn by hand on the two scikit-learn photos
        {"image": "china.jpg", "regions": [{"label": "pagoda roof", "box": [0.05, 0.05, 0.5, 0.5]},
                                           {"label": "tree", "box": [0.6, 0.5, 0.95, 0.95]}]},
        {"image": "flower.jpg", "regions": [{"label": "flower", "box": [0.2, 0.15, 0.7, 0.85]}]},
    ]  # fmt: skip
    (root / "regions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root, root / "regions.jsonl"


def _outside(a: np.ndarray, b: np.ndarray, box: tuple[int, int, int, int], margin: int = 3) -> bool:
    x1, y1, x2, y2 = box
    keep = np.ones(a.shape[:2], bool)
    keep[max(0, y1 - margin) : y2 + margin, max(0, x1 - margin) : x2 + margin] = False
    return bool(np.array_equal(a[keep], b[keep]))


def test_opencv_edits_change_only_their_boxes(photos):
    root, regions = photos
    china = read_regions(regions)[0]
    image = Image.open(root / china.image).convert("RGB")
    before = np.asarray(image)
    box0 = (16, 10, 160, 107)  # regions[0] in pixels of the 320x214 image
    editor = build_editor("opencv")
    for kind in ("delete", "modify"):
        result = editor.edit(image, china, 0, kind, random.Random(0))
        after = np.asarray(result.image)
        assert result.image.size == image.size
        assert _outside(before, after, box0) and not np.array_equal(before, after), kind
        assert "pagoda roof" in result.description
    swapped = editor.edit(image, china, 0, "swap", random.Random(0))
    assert "pagoda roof and the tree" in swapped.description
    added = editor.edit(image, china, 1, "add", random.Random(0))
    assert added is None or added.description.startswith("Another tree")
    flower = read_regions(regions)[1]
    assert editor.edit(Image.open(root / flower.image), flower, 0, "swap", random.Random(0)) is None


def test_make_pairs_on_photos_and_the_cli(photos, tmp_path):
    root, regions = photos
    stats = make_pairs(read_regions(regions), OpenCVEditor(), root, tmp_path / "p", progress=False)
    assert stats.written == 2
    result = CliRunner().invoke(app, ["pairs", "--regions", str(regions), "--out", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    assert _stats(result.output)["written"] == 2


# --- bad input --------------------------------------------------------------------------------------
def test_an_image_without_regions_is_a_clear_error(photos, tmp_path):
    root, _ = photos
    source = Source("china", "china.jpg", [], where="regions.jsonl:line 4")
    with pytest.raises(PairError, match=r"regions.jsonl:line 4: image china.jpg has no object regions"):
        make_pairs([source], OpenCVEditor(), root, tmp_path, progress=False)


def test_a_pair_whose_images_differ_in_size_is_a_clear_error(photos, tmp_path):
    root, regions = photos

    class Shrinking:
        name = "shrinking"

        def edit(self, image, source, target, kind, rng):
            return EditResult(image.resize((10, 10)), "smaller")

    with pytest.raises(PairError, match=r"returned a \(10, 10\) image for a \(320, 214\).*same size"):
        make_pairs(read_regions(regions), Shrinking(), root, tmp_path, progress=False)


def test_bad_region_files_and_editor_names(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(
        '{"image": "a.jpg", "regions": []}\n{"image": "b.jpg", "regions": [{"box": [0.5, 0, 0.2, 1]}]}\n'
    )
    with pytest.raises(PairError, match=r"r.jsonl:2: field regions\[0\].box"):
        read_regions(path)
    path.write_text("{not json\n")
    with pytest.raises(PairError, match="r.jsonl:1: not valid JSON"):
        read_regions(path)
    with pytest.raises(PairError, match="unknown editor 'diffusion'; registered: opencv"):
        build_editor("diffusion")
    with pytest.raises(PairError, match="unknown edit kinds"):
        make_pairs([], OpenCVEditor(), tmp_path, tmp_path, kinds=["blur"], progress=False)


def test_without_opencv_the_photo_editor_names_the_extra(photos, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # as if OpenCV were not installed
    with pytest.raises(PairError, match=r"needs OpenCV.*pip install 'graft\[photos\]'"):
        build_editor("opencv")
    _, regions = photos
    result = CliRunner().invoke(app, ["pairs", "--regions", str(regions), "--out", str(tmp_path / "c")])
    assert result.exit_code == 2 and "graft[photos]" in result.output
