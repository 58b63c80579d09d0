"""Snapping the ``lexical`` connector onto ``swiglu`` (``graft.train.snap``): the student writes
the teacher's word tokens, keeps every other weight, and exports."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from graft.cli import app
from graft.connectors.projector import SwiGLUProjector
from graft.export.model import export_architecture
from graft.modeling import GraftForConditionalGeneration
from graft.train.snap import SnapSettings, _fidelity, snap_connector

from tiny import tiny_model_and_processor, tiny_world

torch.set_num_threads(1)
SPEC = {"name": "lexical", "reduction": "pixel_shuffle", "reduction_factor": 2, "layer_norm": True}


def test_a_snapped_swiglu_writes_the_lexical_connectors_tokens_and_exports(tmp_path):
    teacher, processor = tiny_model_and_processor(SPEC)
    teacher.connector.word_scale = 300.0  # sharp: each token nearly one word, as after alignment
    teacher.config.connector["word_scale"] = 300.0
    # images of a few kinds, as a world's are: a kind's feature map plus noise
    g = torch.Generator().manual_seed(1)
    kinds = torch.randn(6, teacher.num_patches, teacher.config.vision_config.hidden_size, generator=g)
    features = kinds[torch.arange(320) % 6] + 0.01 * torch.randn(320, *kinds.shape[1:], generator=g)
    settings = SnapSettings(steps=150, batch_size=32, heldout=64, lr=3e-3, bf16=False)
    result = snap_connector(teacher, processor, features, tmp_path / "student", settings)

    student = GraftForConditionalGeneration.from_pretrained(tmp_path / "student").eval()
    assert student.config.connector == {**SPEC, "name": "swiglu"}
    table = teacher.get_input_embeddings().weight.detach()
    held = features[torch.randperm(320, generator=torch.Generator().manual_seed(0))[:64]]  # snap's
    with torch.no_grad():
        target = teacher.get_image_features(vision_features=held)
        start = SwiGLUProjector.forward(teacher.connector, held)  # the teacher's trunk: the student's start
        before = _fidelity(start, target, table)
        after = _fidelity(student.get_image_features(vision_features=held), target, table)
    assert after["relative_error"] < 0.2 * before["relative_error"]
    assert after["cosine"] > 0.95 > before["cosine"]
    assert after["same_word"] > 0.9
    assert result == pytest.approx(after | {k: result[k] for k in ("final_loss", "seconds")}, rel=1e-4)
    assert json.loads((tmp_path / "student" / "snap.json").read_text())["fidelity"] == result
    kept = {k: v for k, v in teacher.state_dict().items() if not k.startswith("connector.")}
    mine = student.state_dict()
    assert all(torch.equal(v, mine[k]) for k, v in kept.items())
    assert export_architecture(student)  # what lexical cannot do
    assert (tmp_path / "student" / "tokenizer.json").exists()


def test_snapping_needs_more_images_than_it_holds_out(tmp_path):
    teacher, processor = tiny_model_and_processor(SPEC)
    features = torch.randn(10, teacher.num_patches, teacher.config.vision_config.hidden_size)
    with pytest.raises(ValueError, match="steps >= 1"):
        snap_connector(teacher, processor, features, tmp_path / "student", SnapSettings(steps=0))
    with pytest.raises(ValueError, match="more than 256 images"):
        snap_connector(teacher, processor, features, tmp_path / "student")


def test_graft_snap_turns_a_lexical_model_folder_into_one_that_exports(tmp_path):
    world = tiny_world(tmp_path / "world")
    teacher, processor = tiny_model_and_processor(SPEC)
    teacher.save_pretrained(tmp_path / "lexical")
    processor.save_pretrained(tmp_path / "lexical")
    args = [
        "snap",
        "--model",
        str(tmp_path / "lexical"),
        "--data",
        world["data"],
        "--image-root",
        world["root"],
    ]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "snapped"), "--steps", "3"])
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.output[result.output.index("{") :])) >= {"relative_error", "cosine"}
    snapped = GraftForConditionalGeneration.from_pretrained(tmp_path / "snapped")
    assert snapped.config.connector["name"] == "swiglu" and export_architecture(snapped)
    missing = CliRunner().invoke(app, ["snap", "--model", str(tmp_path / "nothing"), *args[3:], "--out", "x"])
    assert missing.exit_code != 0 and "nothing: no such folder; give a graft model folder" in missing.output


def test_snapping_copies_what_fits_and_refuses_what_cannot_be_snapped(tmp_path, caplog):
    teacher, processor = tiny_model_and_processor(
        {"name": "mlp2x_gelu", "reduction": "pixel_shuffle", "reduction_factor": 2}
    )
    features = torch.randn(40, teacher.num_patches, teacher.config.vision_config.hidden_size)
    settings = SnapSettings(steps=2, batch_size=8, heldout=8)
    result = snap_connector(
        teacher, processor, features, tmp_path / "student", settings
    )  # shapes differ: learned
    assert result["relative_error"] >= 0
    # two steps do not learn another connector's tokens: said, not only printed as numbers
    assert result["cosine"] < 0.9 and "writes tokens far from the teacher's" in caplog.text
    query, _ = tiny_model_and_processor("qformer")
    with pytest.raises(ValueError, match="cannot snap connector 'qformer' onto 'swiglu'"):
        snap_connector(query, processor, features, tmp_path / "q", settings)
    with pytest.raises(ValueError, match="tokens depend on the question"):
        snap_connector(
            tiny_model_and_processor("qformer_instruct")[0], processor, features, tmp_path / "i", settings
        )
