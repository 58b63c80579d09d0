"""The DEMON reader on small task folders in its exact layout: the task list, prompts and image order,
inferred kinds and categories, and bad samples."""

import json

import pytest

from graft.eval.readers import IMAGE_MARKER, read_demon
from graft.eval.readers.demon import CATEGORIES, TASK_CATEGORY, find_tasks
from graft.record_files import RecordError

from reader_files import _img


# --- DEMON ---------------------------------------------------------------------------------------
def _demon_task(root, task, qtype, data, n_images=2, instructions=("Describe. ", "Compare. ")):
    core = root / task / "core"
    for i in range(n_images):
        _img(core / "images" / f"{i}.jpg", fmt="JPEG")
    meta = {"dataset": task, "split": "core", "num_sample": len(data), "task_instruction": list(instructions)}
    (core / "core.json").write_text(json.dumps({"metadata": meta | {"question_type": qtype}, "data": data}))
    return core


def _demon_sample(i, context, images, response, **instance):
    task_instance = {"context": context, "images_path": images} | instance
    return {
        "sample_id": i,
        "task_instruction_id": i % 2,
        "task_instance": task_instance,
        "response": response,
    }


def test_demon_task_list():
    assert len(CATEGORIES) == 7 and len(TASK_CATEGORY) == 29
    assert (
        TASK_CATEGORY["ALFRED"] == "Multimodal Dialogue"
        and TASK_CATEGORY["nuScenes"] == "Multi-Image Reasoning"
    )


def test_demon_reader(tmp_path):
    root = tmp_path / "DEMON-Core"
    _demon_task(
        root,
        "Spot-the-Diff",
        "open-ended",
        [
            _demon_sample(0, "{image#1}{image#2}What changed?", ["0.jpg", "1.jpg"], "the car moved"),
            _demon_sample(1, "After {image#2} comes {image#1}.", ["0.jpg", "1.jpg"], "nothing"),
        ],
    )
    # ALFRED ships an empty question_type; under a category folder, as the public release nests it
    _demon_task(
        root / "Multimodal Dialogue", "ALFRED", "", [_demon_sample(0, "{image#1} go", ["0.jpg"], "turn left")]
    )
    _demon_task(
        root,
        "MultiModalQA",
        "multi-choice",
        [
            _demon_sample(
                0,
                "Global Table: {table#1} Context: {image#2} Question: Which? "
                "Choice List:['soccer', 'baseball'] Your answer is:",
                ["0.jpg", "1.jpg"],
                "baseball",
            )
        ],
    )
    _demon_task(
        root,
        "RecipeQA_VisualCloze",
        "multi-choice",
        [
            _demon_sample(
                0,
                "Series: {image#1} UNKNOWN Choice List:['Image A: {image#2}', 'Image B: {image#3}']",
                ["0.jpg", "1.jpg", "2.jpg"],
                "Image B",
                choice_list=["Image A", "Image B"],
            )
        ],
        n_images=3,
    )
    assert set(find_tasks(root)) == {"Spot-the-Diff", "ALFRED", "MultiModalQA", "RecipeQA_VisualCloze"}
    result = read_demon(root)
    by_id = {s.id: s for s in result}
    s0 = by_id["Spot-the-Diff/0"]
    assert s0.prompt == f"Describe. {IMAGE_MARKER}{IMAGE_MARKER}What changed?"
    assert [p.name for p in s0.images] == ["0.jpg", "1.jpg"]
    s1 = by_id["Spot-the-Diff/1"]
    assert s1.prompt.startswith("Compare. After <image> comes <image>.")
    assert [p.name for p in s1.images] == ["1.jpg", "0.jpg"]  # images in the order the context places them
    assert by_id["ALFRED/0"].meta["kind"] == "open-ended"  # inferred from its category
    mm = by_id["MultiModalQA/0"]
    assert mm.meta["choices"] == ["soccer", "baseball"] and len(mm.images) == 2  # a {table#k} is an image
    assert by_id["RecipeQA_VisualCloze/0"].meta["kind"] == "image-choice"
    assert by_id["RecipeQA_VisualCloze/0"].meta["category"] == "Multimodal Cloze"
    assert [s.id for s in read_demon(root, tasks=["alfred"])] == ["ALFRED/0"]
    # a task of one's own whose options are all "Image X" is scored by the named image
    _demon_task(
        root,
        "WhichImage",
        "multi-choice",
        [
            _demon_sample(
                0,
                "{image#1}{image#2} Which?",
                ["0.jpg", "1.jpg"],
                "Image A",
                choice_list=["Image A", "Image B"],
            )
        ],
    )
    assert read_demon(root, tasks=["WhichImage"]).samples[0].meta["kind"] == "image-choice"


def test_demon_bad_samples(tmp_path):
    root = tmp_path / "d"
    core = _demon_task(
        root,
        "IEdit",
        "open-ended",
        [
            _demon_sample(0, "{image#1}{image#3} edit?", ["0.jpg", "1.jpg"], "make it red"),
            _demon_sample(1, "{image#1}{image#2} edit?", ["0.jpg", "missing.jpg"], "make it red"),
            _demon_sample(2, "{image#1} ok", ["0.jpg"], "fine"),
        ],
    )
    with pytest.raises(
        RecordError, match=r"core\.json: data\[0\] \(sample_id 0\): \{image#3\} in the context"
    ):
        read_demon(root)
    result = read_demon(root, skip_bad=True)
    assert [s.id for s in result] == ["IEdit/2"] and len(result.bad) == 2
    assert "image not found" in result.bad[1] and "missing.jpg" in result.bad[1]
    (core / "core.json").write_text(json.dumps({"metadata": {"question_type": "essay"}, "data": []}))
    with pytest.raises(RecordError, match="question_type 'essay'"):
        read_demon(root)
