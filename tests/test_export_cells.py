"""The demo's cell connector (two tokens per cell, a margin, row and column markers) -> Aya Vision
with graft's cell adapter, whose code the folder carries: loaded by transformers' Auto classes
with trust_remote_code=True, same inputs, same logits, same greedy answers, and back into graft."""

import ast
import json
import sys

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, LlavaProcessor

from graft.export import export_architecture, export_to_transformers, import_from_hf
from graft.modeling import GraftForConditionalGeneration
from graft.templates import Message

from tiny import random_image, tiny_model_and_processor

torch.set_num_threads(1)
TOL = 1e-5
CELLS = {
    "name": "swiglu",
    "reduction": "pixel_shuffle",
    "reduction_factor": 2,
    "layer_norm": True,
    "reduction_margin": 1,
    "tokens_per_group": 2,
    "marker_grid": 2,
}


def _tiny(connector=CELLS):
    model, processor = tiny_model_and_processor(connector, template="llama_2")
    with torch.no_grad():  # a LayerNorm that is not the identity, markers far apart
        model.connector.layer_norm.weight.uniform_(0.5, 1.5)
        model.connector.layer_norm.bias.uniform_(-0.5, 0.5)
        if model.connector.marker_grid:
            model.connector.markers.normal_()
    return model, processor


def _inputs(model, processor, folder):
    """graft's encoding and the exported processor's of one prompt with one image."""
    messages = [Message("user", "<image>\nIs there a red circle?")]
    text = processor.template.render(messages, add_generation_prompt=True).text
    ours = processor.encode(messages, [random_image(1)], add_generation_prompt=True)
    theirs = AutoProcessor.from_pretrained(folder, trust_remote_code=True)(
        text=text, images=random_image(1), return_tensors="pt"
    )
    return ours, theirs


def _graft_logits(model, ours):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ours.input_ids]), pixel_values=ours.pixel_values).logits


@pytest.mark.parametrize(
    "cells",
    [
        {},
        {"markers_after": True},
        {"marker_grid": 0},
        {"tokens_per_group": 1},
        {"reduction_margin": 0},
        {"reduction_margin": 0, "tokens_per_group": 1, "marker_grid": 0, "expect": "AyaVision"},
    ],
)
def test_cell_export_loads_with_its_code_and_computes_graft_logits(tmp_path, cells):
    expect = cells.pop("expect", "GraftCells")
    model, processor = _tiny(dict(CELLS, **cells))
    assert export_architecture(model) == f"{expect}ForConditionalGeneration"
    out = export_to_transformers(model, processor, tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [f"{expect}ForConditionalGeneration"]
    assert ("auto_map" in config) == (expect == "GraftCells")
    hf = AutoModelForImageTextToText.from_pretrained(out, trust_remote_code=True, dtype=torch.float32).eval()
    assert type(hf).__name__ == f"{expect}ForConditionalGeneration"
    ours, theirs = _inputs(model, processor, out)
    assert isinstance(AutoProcessor.from_pretrained(out, trust_remote_code=True), LlavaProcessor)
    assert theirs["input_ids"][0].tolist() == ours.input_ids
    assert ours.input_ids.count(model.config.image_token_id) == model.config.image_seq_length
    with torch.no_grad():
        diff = (_graft_logits(model, ours) - hf(**theirs).logits).abs().max().item()
    assert diff <= TOL


def test_cell_export_carries_code_that_needs_only_torch_and_transformers(tmp_path):
    model, processor = _tiny()
    out = export_to_transformers(model, processor, tmp_path / "hf")
    auto_map = json.loads((out / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "modeling_graft_cells.GraftCellsConfig",
        "AutoModelForImageTextToText": "modeling_graft_cells.GraftCellsForConditionalGeneration",
    }
    for name in ("modeling_graft_cells.py", "cells.py"):
        outside = _packages_imported(out / name) - set(sys.stdlib_module_names)
        assert outside <= {"torch", "transformers"}, (name, outside)


def _packages_imported(path) -> set[str]:
    """The top-level packages a Python file imports (relative imports are the folder's own)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_cell_export_gives_graft_greedy_answers(tmp_path):
    model, processor = _tiny()
    out = export_to_transformers(model, processor, tmp_path / "hf")
    hf = AutoModelForImageTextToText.from_pretrained(out, trust_remote_code=True, dtype=torch.float32).eval()
    ours, theirs = _inputs(model, processor, out)
    settings = dict(max_new_tokens=8, do_sample=False, min_new_tokens=8)
    with torch.no_grad():
        graft_ids = model.generate(
            input_ids=torch.tensor([ours.input_ids]), pixel_values=ours.pixel_values, **settings
        )
        assert hf.generate(**theirs, **settings).tolist() == graft_ids.tolist()


def test_cell_export_imports_back_as_the_same_graft_model(tmp_path, capsys):
    model, processor = _tiny()
    out = export_to_transformers(model, processor, tmp_path / "hf")
    capsys.readouterr()
    back, back_processor = import_from_hf(out, tmp_path / "graft", template="llama_2")
    printed = capsys.readouterr()
    assert "custom code" not in printed.out + printed.err  # graft's own copy of the code: no prompt
    assert {k: back.config.connector.get(k) for k in CELLS} == CELLS
    ours = _inputs(model, processor, out)[0]
    assert (
        back_processor.encode(
            [Message("user", "<image>\nIs there a red circle?")],
            [random_image(1)],
            add_generation_prompt=True,
        ).input_ids
        == ours.input_ids
    )
    assert (_graft_logits(model, ours) - _graft_logits(back, ours)).abs().max().item() <= TOL
    again = GraftForConditionalGeneration.from_pretrained(tmp_path / "graft").eval()
    assert (_graft_logits(model, ours) - _graft_logits(again, ours)).abs().max().item() <= TOL
