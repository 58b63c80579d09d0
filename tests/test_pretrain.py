"""Tiny-backbone pretraining: the tokenizer's contract, and folders that load like hub checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from graft.world import build_world
from graft.world.artifacts import MARKER, is_finished
from graft.world.pretrain import (
    pretrain_llm,
    pretrain_vision,
    probe_llm_text_qa,
    probe_vision_features,
    train_tokenizer,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    build_world(out, num_images=40, seed=0)
    return out


@pytest.fixture(scope="module")
def tok_dir(world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("x") / "tok"
    train_tokenizer(world, out, vocab_size=400)
    return out


def test_tokenizer_contract(tok_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    text = "USER: Context: A red circle.\nIs there a red circle?\nAnswer with one word. ASSISTANT: Yes</s>"
    enc = tok(text, return_offsets_mapping=True)
    ids = enc["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok("</s>", add_special_tokens=False)["input_ids"] == [tok.eos_token_id]
    assert tok.decode(ids, skip_special_tokens=True) == text.replace("</s>", "")
    for i, (a, b) in zip(ids[1:], enc["offset_mapping"][1:], strict=True):
        assert text[a:b] == tok.decode([i])
    assert "".join(text[a:b] for a, b in enc["offset_mapping"]) == text  # spans tile the text
    assert tok.pad_token == "<pad>" and tok.unk_token == "<unk>" and tok.model_max_length == 512
    assert "<image>" not in tok.get_vocab()
    assert tok.decode(tok("héllo ✓", add_special_tokens=False)["input_ids"]) == "héllo ✓"  # byte level


def test_pretrain_vision_saves_clip_vision_tower(world, tmp_path):
    from transformers import CLIPImageProcessor, CLIPVisionModel

    out = pretrain_vision(world, tmp_path / "vision", steps=2, batch_size=8, hidden_size=32, num_layers=2)
    model = CLIPVisionModel.from_pretrained(out)
    proc = CLIPImageProcessor.from_pretrained(out)
    from PIL import Image

    pix = proc(images=[Image.open(next((world / "images" / "train").glob("*.png")))], return_tensors="pt")
    assert pix["pixel_values"].shape == (1, 3, 64, 64)
    hidden = model(**pix, output_hidden_states=True).hidden_states[-2]
    assert hidden.shape == (1, 257, 32)  # CLS + 16x16 patches (patch 4)
    mtime = (out / MARKER).stat().st_mtime_ns
    pretrain_vision(world, out, steps=2)  # finished: skipped
    assert (out / MARKER).stat().st_mtime_ns == mtime
    res = probe_vision_features(out, world, train_images=20)
    assert 0 <= res["shape_acc"] <= 1 and res["objects"] > 0


def test_pretrain_llm_saves_causal_lm(world, tok_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = pretrain_llm(world, tok_dir, tmp_path / "llm", steps=2, hidden_size=32, num_heads=2, num_layers=2)
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.vocab_size == len(tok) and model.config.eos_token_id == tok.eos_token_id
    with torch.no_grad():
        logits = model(**tok("A red circle.", return_tensors="pt")).logits
    assert logits.shape[-1] == len(tok)
    res = probe_llm_text_qa(out, world)
    assert res["yesno_n"] > 0 and 0 <= res["mcq_acc"] <= 1


def test_llm_batches_keep_documents_whole_and_mark_answers(world, tok_dir):
    from transformers import AutoTokenizer

    from graft.world.corpus import DOC_SEP
    from graft.world.llm import _batches

    tok = AutoTokenizer.from_pretrained(tok_dir)
    docs = (world / "text" / "llm_corpus.txt").read_text().strip().split(DOC_SEP)
    batches = _batches(world, tok, batch_tokens=512, max_len=10_000)
    rows = [(ids[r], kinds[r]) for ids, kinds in batches for r in range(len(ids))]
    assert len(rows) == len(docs)  # one document per row, none dropped or split
    for ids, _ in batches:
        assert ids.numel() <= 512 or len(ids) == 1
    for ids, kinds in rows:
        n = int((kinds > 0).sum())
        assert (kinds[n:] == 0).all() and (ids[n:] == tok.pad_token_id).all()  # padding only at the end
        assert ids[0] == tok.bos_token_id and ids[n - 1] == tok.eos_token_id
        text = tok.decode(ids[kinds == 2])
        n_turns = tok.decode(ids[:n]).count(" ASSISTANT:")
        assert text.count("</s>") == n_turns  # every answer is marked, through its end of turn
        assert "USER" not in text and "Context" not in text


def test_corpus_drills_share_one_context(world):
    from graft.world.corpus import DOC_SEP

    docs = (world / "text" / "llm_corpus.txt").read_text().strip().split(DOC_SEP)
    drills = [d for d in docs if d.count(" ASSISTANT:") >= 3]
    assert drills and all(d.count("Context: ") == 1 for d in drills)
    answers = [t.split("</s>")[0] for d in drills for t in d.split(" ASSISTANT: ")[1:]]
    assert {"Yes", "No"} <= set(answers) and {"A", "B", "C", "D"} & set(answers)


def test_refining_a_tower_with_cell_targets(world, tmp_path):
    """``init_from``: the tower starts as the given one; during ``head_steps`` only the fresh
    heads learn, afterwards the cell loss (no captions) moves the tower; a tower made for
    other images is refused by name."""
    from transformers import CLIPVisionModel

    from graft.world.vision import REFINE

    base = pretrain_vision(world, tmp_path / "base", steps=1, batch_size=8, hidden_size=32, num_layers=2)
    start = CLIPVisionModel.from_pretrained(base).state_dict()
    still = pretrain_vision(
        world,
        tmp_path / "still",
        steps=2,
        batch_size=8,
        init_from=str(base),
        caption_weight=0.0,
        cell_weight=1.0,
        head_steps=2,
        warmup=1,
    )
    kept = CLIPVisionModel.from_pretrained(still).state_dict()
    assert all(torch.equal(start[k], kept[k]) for k in start)
    refine = {**REFINE, "steps": 3, "head_steps": 1, "warmup": 1}
    moved = pretrain_vision(world, tmp_path / "moved", batch_size=8, init_from=str(base), **refine)
    after = CLIPVisionModel.from_pretrained(moved)
    assert after.config.hidden_size == 32  # the start's architecture, not VisionArgs' defaults
    changed = after.state_dict()
    assert any(not torch.equal(start[k], changed[k]) for k in start)
    small = tmp_path / "small"
    build_world(small, num_images=8, seed=1, image_size=32)
    with pytest.raises(ValueError, match="caption_weight, dense_weight or cell_weight"):
        pretrain_vision(world, tmp_path / "none", steps=1, caption_weight=0.0, dense_weight=0.0)
    with pytest.raises(ValueError, match="64-pixel images"):
        pretrain_vision(small, tmp_path / "bad", steps=1, batch_size=4, init_from=str(base))
    with pytest.raises(ValueError, match="unknown cell targets 'middle'; valid: cover, centre"):
        pretrain_vision(world, tmp_path / "bad", init_from=str(base), **refine | {"cell_targets": "middle"})
    assert not (tmp_path / "bad").exists()  # refused before any work


def test_cell_targets_choose_how_a_given_tower_is_refined(world, tmp_path, monkeypatch):
    from graft.world import pretrain

    asked = []
    monkeypatch.setattr(pretrain, "pretrain_vision", lambda *a, **kw: asked.append(kw) or tmp_path)
    pretrain.prepare_vision(world, tmp_path, "train", init=tmp_path / "start")
    pretrain.prepare_vision(world, tmp_path, "train", init=tmp_path / "start", cell_targets="cover")
    assert [kw["cell_targets"] for kw in asked] == ["centre", "cover"]  # REFINE's, then the one asked
    with pytest.raises(ValueError, match="give the tower to refine"):
        pretrain.prepare_vision(world, tmp_path, "train", cell_targets="cover")


def test_patch_labels_name_the_object_under_each_patch():
    from graft.world.labels import patch_labels
    from graft.world.scene import Obj, Scene

    scene = Scene([Obj("square", "blue", "large", 0.25, 0.25)], image_size=64)
    labels = patch_labels(scene, patch=8, min_cover=0.125)
    assert labels.shape == (64, 3)
    grid = labels.view(8, 8, 3)
    # the square fills x, y in [0.08, 0.42] of the image: patches 1..2 of rows and columns are inside
    assert grid[2, 2].tolist() == [2, 3, 2]  # square (index 1) + 1, blue (2) + 1, large (1) + 1
    assert grid[6, 6].tolist() == [0, 0, 0]  # background
    assert (grid[..., 0] > 0).sum() == (grid[..., 1] > 0).sum() >= 4


def test_packaged_vision_tower_is_copied_and_loads(world, tmp_path):
    from transformers import CLIPVisionModel

    from graft.world.grounding import CELLS
    from graft.world.pretrain import PACKAGED_VISION, prepare_vision

    out = prepare_vision(world, tmp_path, "packaged")
    assert out == tmp_path / "vision" and is_finished(out)
    model = CLIPVisionModel.from_pretrained(out)
    assert model.config.patch_size == 4 and (PACKAGED_VISION / "model.safetensors").is_file()
    # the demo's grounding by default names the cells the packaged tower was last refined for
    record = json.loads((PACKAGED_VISION / MARKER).read_text())
    chain = [record]
    while "refined_from" in chain[-1]:
        chain.append(chain[-1]["refined_from"])
    # first version -> cover -> centre -> centre again, longer (README, "The packaged vision tower")
    assert [r["args"].get("cell_targets") for r in chain] == [CELLS, "centre", "cover", None]
    assert [r["args"]["steps"] for r in chain] == [1000, 500, 500, 800]
    with pytest.raises(FileNotFoundError, match="not a vision-tower folder"):
        prepare_vision(world, tmp_path, str(tmp_path / "nowhere"))


def test_the_world_loads_image_processors_without_a_transformers_warning():
    """Taking ``CLIPImageProcessor`` from transformers without torchvision logs a fallback warning
    to anyone who imports graft as a library (the CLI silences transformers); the world's code
    names the PIL classes instead."""
    import subprocess
    import sys

    code = "import graft.world.vision, graft.world.probe, graft.pipelines.demo"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "ImageProcessor" not in run.stderr, run.stderr
