"""graft gen-data's inputs: prompt folders and the messages built from them, context files and
their errors (through the CLI too), parsing Q/A answers, and the world's contexts.jsonl."""

from __future__ import annotations

import json

import pytest

from graft.instruct.gen_contexts import load_contexts
from graft.instruct.gen_prompts import WITH_BOXES, builtin_prompts_root, load_prompts
from graft.instruct.gen_run import generate
from graft.instruct.gen_settings import RESPONSE_TYPES, GenError, GenSettings
from graft.instruct.gen_validate import parse_qa

from gen_data_fixtures import _cli, _contexts, _row

# ---- prompts and contexts ----


def test_messages_are_system_then_few_shot_pairs_then_the_context(tmp_path):
    ctx = load_contexts(_contexts(tmp_path, ["x"])).contexts[0]
    for t, prompts in load_prompts(RESPONSE_TYPES).items():
        folder = builtin_prompts_root() / t
        assert len(prompts.examples) >= 2
        messages = prompts.messages(ctx)
        k = len(prompts.examples)
        assert [m["role"] for m in messages] == ["system"] + ["user", "assistant"] * k + ["user"]
        assert messages[0]["content"] == (folder / "system_message.txt").read_text().strip()
        assert messages[1]["content"] == (folder / "000_caps.txt").read_text().strip()
        assert messages[2]["content"] == (folder / "000_conv.txt").read_text().strip()
        last = messages[-1]["content"]
        assert last.startswith("A red circle and a blue square, scene 0. x\nTwo shapes.")
        # conversation sees the captions only; detail and complex reasoning the boxes too
        assert ("red circle: [0.100, 0.200, 0.300, 0.400]" in last) == WITH_BOXES[t]
        assert ("blue square: [0.600, 0.550, 0.850, 0.800]" in last) == WITH_BOXES[t]


def test_own_prompts_folder_and_its_errors(tmp_path):
    root = tmp_path / "prompts" / "conversation"
    root.mkdir(parents=True)
    (root / "system_message.txt").write_text("Be brief.")
    (root / "000_caps.txt").write_text("caps zero")
    (root / "000_conv.txt").write_text("Question: a?\nAnswer: b")
    prompts = load_prompts(("conversation",), tmp_path / "prompts")["conversation"]
    assert prompts.system == "Be brief." and prompts.examples == (("caps zero", "Question: a?\nAnswer: b"),)
    (root / "001_caps.txt").write_text("caps one")
    with pytest.raises(GenError, match=r"conversation/001_conv\.txt: missing"):
        load_prompts(("conversation",), tmp_path / "prompts")
    (root / "system_message.txt").unlink()
    with pytest.raises(GenError, match=r"conversation/system_message\.txt: missing"):
        load_prompts(("conversation",), tmp_path / "prompts")
    with pytest.raises(GenError, match="missing prompt folder for response type 'detail'"):
        load_prompts(("detail",), tmp_path / "prompts")
    llava = tmp_path / "prompts" / "detail_description"  # LLaVA's playground/data/prompts name
    llava.mkdir()
    (llava / "system_message.txt").write_text("Describe.")
    assert load_prompts(("detail",), tmp_path / "prompts")["detail"].system == "Describe."
    (llava / "system_message.txt").write_bytes(b"Caf\xe9")
    with pytest.raises(GenError, match=r"detail_description/system_message.txt:1: not valid UTF-8"):
        load_prompts(("detail",), tmp_path / "prompts")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda r: r.update(captions=[]), r":2 \(id 'c001'\): field 'captions' is missing or empty"),
        (
            lambda r: r["boxes"][1].update(bbox=[0.5, 0.5, 1.2, 0.9]),
            r":2 .*field boxes\[1\]\.bbox .* outside 0\.\.1",
        ),
        (
            lambda r: r["boxes"][0].update(bbox=[0.5, 0.5, 0.2, 0.9]),
            r":2 .*field boxes\[0\]\.bbox .* x1 > x2",
        ),
        (lambda r: r.pop("image"), r":2 .*field 'image'"),
    ],
)
def test_bad_context_names_file_line_and_field(tmp_path, change, expected):
    rows = [_row(0), _row(1), _row(2)]
    change(rows[1])
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(GenError, match=f"c.jsonl{expected}"):
        load_contexts(path)
    loaded = load_contexts(path, skip_bad=True)
    assert [c.id for c in loaded.contexts] == ["c000", "c002"] and sum(loaded.skipped.values()) == 1


def test_bad_contexts_through_the_cli(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps(_row(0)) + "\n{not json\n" + json.dumps(_row(1) | {"captions": []}) + "\n")
    result = _cli("--contexts", str(path), "--out", str(tmp_path / "o"), "--model", "m", "--dry-run")
    assert result.exit_code == 2 and "c.jsonl:2: not valid JSON" in result.output
    result = _cli(
        "--contexts", str(path), "--out", str(tmp_path / "o"), "--model", "m", "--dry-run", "--skip-bad"
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index('{\n  "dry_run"') :])
    assert report["contexts"] == 1 and report["bad_contexts"] == {"malformed_json": 1, "no_captions": 1}


def test_parse_qa_tolerates_markdown_numbering_and_separators():
    text = (
        "Here is the conversation.\n\n**Question 1:** What color is it?\n**Answer 1:** It is red.\n\n"
        "2. Q: How many\nshapes are there?\nA: There are two.\n===\n### Question: left dangling"
    )
    assert parse_qa(text) == [
        ("What color is it?", "It is red."),
        ("How many\nshapes are there?", "There are two."),
    ]


def test_world_writes_a_valid_contexts_file(tmp_path):
    from graft.world import build_world
    from graft.world.describe import boxes, captions
    from graft.world.scene import Scene

    manifest = build_world(tmp_path / "w", num_images=12, seed=1)
    loaded = load_contexts(tmp_path / "w" / "contexts.jsonl")
    assert len(loaded.contexts) == manifest["splits"]["train"]
    meta = [json.loads(line) for line in (tmp_path / "w" / "meta" / "train.jsonl").read_text().splitlines()]
    for ctx, row in zip(loaded.contexts, meta, strict=True):
        scene = Scene.from_dict(row["scene"])
        assert (ctx.id, ctx.image) == (row["id"], row["image"]) and (tmp_path / "w" / ctx.image).is_file()
        assert list(ctx.captions) == captions(scene)
        assert [(b.category, list(b.bbox)) for b in ctx.boxes] == boxes(scene)
        for obj, box in zip(scene.objects, ctx.boxes, strict=True):
            assert box.bbox == pytest.approx(
                (obj.x - obj.half, obj.y - obj.half, obj.x + obj.half, obj.y + obj.half), abs=6e-4
            )
    # and gen-data takes it as is
    report = generate(
        GenSettings(contexts=tmp_path / "w" / "contexts.jsonl", out=tmp_path / "g", model="m", dry_run=True)
    )
    assert report["jobs"] == 3 * len(loaded.contexts)
