"""graft's swiglu projector -> transformers' AyaVisionForConditionalGeneration: same function,
same inputs, same greedy answers, loaded by the Auto classes."""

import json

import pytest
import torch
from safetensors import safe_open
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    AyaVisionConfig,
    AyaVisionForConditionalGeneration,
    LlavaProcessor,
)
from typer.testing import CliRunner

from graft.cli import app
from graft.export import ExportError, export_architecture, export_to_transformers, import_from_hf
from graft.modeling import GraftForConditionalGeneration
from graft.templates import Message

from tiny import random_image, tiny_model_and_processor

torch.set_num_threads(1)
TOL = 1e-5
QUESTION = "<image>\nIs there a red circle?"
SWIGLU = {"name": "swiglu", "reduction": "pixel_shuffle", "reduction_factor": 2, "layer_norm": True}


def _tiny(connector=SWIGLU, template="llama_2"):
    model, processor = tiny_model_and_processor(connector, template=template)
    with torch.no_grad():  # a LayerNorm that is not the identity at init, so its weights matter
        model.connector.layer_norm.weight.uniform_(0.5, 1.5)
        model.connector.layer_norm.bias.uniform_(-0.5, 0.5)
    return model, processor


def _export(tmp_path, connector=SWIGLU, template="llama_2"):
    model, processor = _tiny(connector, template)
    out = export_to_transformers(model, processor, tmp_path / "aya")
    return model, processor, out


def _prompt(processor) -> tuple[str, object]:
    messages = [Message("user", QUESTION)]
    text = processor.template.render(messages, add_generation_prompt=True).text
    return text, processor.encode(messages, [random_image(1)], add_generation_prompt=True)


@pytest.mark.parametrize("reduction", ["pixel_shuffle", "none"])
def test_aya_export_loads_through_the_auto_classes_and_computes_graft_logits(tmp_path, reduction):
    connector = dict(SWIGLU, reduction=reduction)
    model, processor, out = _export(tmp_path, connector)
    config = AyaVisionConfig.from_pretrained(out)
    assert config.downsample_factor == (2 if reduction == "pixel_shuffle" else 1)
    assert config.vision_config.model_type == "clip_vision_model" and config.text_config.model_type == "llama"
    aya = AutoModelForImageTextToText.from_pretrained(out, dtype=torch.float32).eval()
    assert isinstance(aya, AyaVisionForConditionalGeneration)
    aya_processor = AutoProcessor.from_pretrained(out)
    assert isinstance(aya_processor, LlavaProcessor)

    text, ours = _prompt(processor)
    theirs = aya_processor(text=text, images=random_image(1), return_tensors="pt")
    assert theirs["input_ids"][0].tolist() == ours.input_ids
    assert ours.input_ids.count(model.config.image_token_id) == model.config.image_seq_length
    assert torch.equal(theirs["pixel_values"], ours.pixel_values)
    with torch.no_grad():
        graft_logits = model(input_ids=torch.tensor([ours.input_ids]), pixel_values=ours.pixel_values).logits
        aya_logits = aya(**theirs).logits
    assert (graft_logits - aya_logits).abs().max().item() <= TOL


def test_aya_export_gives_graft_greedy_answers(tmp_path):
    model, processor, out = _export(tmp_path)
    aya = AutoModelForImageTextToText.from_pretrained(out, dtype=torch.float32).eval()
    aya_processor = AutoProcessor.from_pretrained(out)
    text, ours = _prompt(processor)
    theirs = aya_processor(text=text, images=random_image(1), return_tensors="pt")
    settings = dict(max_new_tokens=8, do_sample=False, min_new_tokens=8)
    with torch.no_grad():
        graft_ids = model.generate(
            input_ids=torch.tensor([ours.input_ids]), pixel_values=ours.pixel_values, **settings
        )
        aya_ids = aya.generate(**theirs, **settings)
    assert aya_ids.tolist() == graft_ids.tolist()


def test_aya_export_key_names_and_zero_biases_for_a_biasless_projector(tmp_path):
    model, _, out = _export(tmp_path, dict(SWIGLU, bias=False))
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert not f.get_tensor("model.multi_modal_projector.linear_1.bias").any()
        assert torch.equal(
            f.get_tensor("model.multi_modal_projector.layernorm.weight"), model.connector.layer_norm.weight
        )
    prefixes = ("model.vision_tower.", "model.multi_modal_projector.", "model.language_model.", "lm_head.")
    assert all(k.startswith(prefixes) for k in keys), keys
    assert json.loads((out / "config.json").read_text())["architectures"] == [
        "AyaVisionForConditionalGeneration"
    ]


@pytest.mark.parametrize(
    "connector,field",
    [
        (dict(SWIGLU, layer_norm=False), "config.connector.layer_norm=False"),
        (dict(SWIGLU, reduction="pool"), "config.connector.reduction='pool'"),
        ({"name": "mlp2x_gelu", "layer_norm": True}, "config.connector.layer_norm=True"),
        ({"name": "mlp2x_gelu", "reduction": "pixel_shuffle"}, "config.connector.reduction='pixel_shuffle'"),
        ({"name": "mlp2x_gelu", "tokens_per_group": 2}, "config.connector.tokens_per_group=2"),
        (dict(SWIGLU, layer_norm=False, marker_grid=2), "config.connector.layer_norm=False"),
    ],
)
def test_export_names_the_field_no_architecture_represents(tmp_path, connector, field):
    model, processor = tiny_model_and_processor(connector)
    with pytest.raises(ExportError, match=field.replace(".", r"\.").replace("(", r"\(")):
        export_architecture(model)
    with pytest.raises(ExportError):
        export_to_transformers(model, processor, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "connector,says",
    [
        (SWIGLU, "(AyaVisionForConditionalGeneration)"),
        (  # the demo's cells: Aya Vision with graft's cell adapter, its code in the folder
            dict(SWIGLU, tokens_per_group=2, marker_grid=2),
            "(GraftCellsForConditionalGeneration; its code is in the folder: load it with "
            "trust_remote_code=True)",
        ),
    ],
)
def test_cli_export_hf_names_the_architecture(tmp_path, connector, says):
    model, processor = _tiny(connector)
    model.save_pretrained(tmp_path / "graft")
    processor.save_pretrained(tmp_path / "graft")
    result = CliRunner().invoke(
        app, ["export-hf", "--model", str(tmp_path / "graft"), "--out", str(tmp_path / "aya")]
    )
    assert result.exit_code == 0, result.output
    assert says in " ".join(result.output.split())


# --- import ---------------------------------------------------------------------------------------
def _logits(model, processor) -> torch.Tensor:
    _, ours = _prompt(processor)
    with torch.no_grad():
        return model(input_ids=torch.tensor([ours.input_ids]), pixel_values=ours.pixel_values).logits


@pytest.mark.parametrize("reduction", ["pixel_shuffle", "none"])
def test_aya_export_imports_back_as_the_same_graft_model(tmp_path, reduction):
    model, processor, out = _export(tmp_path, dict(SWIGLU, reduction=reduction))
    back, back_processor = import_from_hf(out, tmp_path / "graft", template="llama_2")
    spec = back.config.connector
    assert spec["name"] == "swiglu" and spec["layer_norm"] and spec.get("reduction", "none") == reduction
    assert _prompt(back_processor)[1].input_ids == _prompt(processor)[1].input_ids
    assert (_logits(model, processor) - _logits(back, back_processor)).abs().max().item() <= TOL
    again = GraftForConditionalGeneration.from_pretrained(tmp_path / "graft").eval()
    assert (_logits(model, processor) - _logits(again, back_processor)).abs().max().item() <= TOL


def test_import_of_an_aya_checkpoint_keeps_its_adapter_eps_and_width(tmp_path):
    _, processor, out = _export(tmp_path)
    aya = AyaVisionForConditionalGeneration.from_pretrained(out, dtype=torch.float32).eval()
    aya.config.adapter_layer_norm_eps = 0.5  # large enough to move the logits if it were dropped
    aya.model.multi_modal_projector.layernorm.eps = 0.5
    aya.save_pretrained(tmp_path / "aya2")
    AutoProcessor.from_pretrained(out).save_pretrained(tmp_path / "aya2")
    model, back_processor = import_from_hf(tmp_path / "aya2", template="llama_2")
    assert model.connector.layer_norm.eps == 0.5
    assert model.connector.intermediate_size == aya.model.multi_modal_projector.alignment_intermediate_size
    text, ours = _prompt(back_processor)
    theirs = AutoProcessor.from_pretrained(tmp_path / "aya2")(
        text=text, images=random_image(1), return_tensors="pt"
    )
    with torch.no_grad():
        diff = (aya(**theirs).logits - _logits(model, back_processor)).abs().max().item()
    assert diff <= TOL


def test_import_refuses_an_architecture_it_cannot_read_naming_the_file(tmp_path):
    folder = tmp_path / "other"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "idefics3"}))
    with pytest.raises(
        ExportError, match=r"other/config\.json: model_type='idefics3'; graft imports 'llava'"
    ):
        import_from_hf(folder)
    result = CliRunner().invoke(app, ["import-hf", "--model", str(folder), "--out", str(tmp_path / "g")])
    assert result.exit_code == 2 and "model_type='idefics3'" in result.output
    result = CliRunner().invoke(
        app, ["import-hf", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "g")]
    )
    assert result.exit_code == 2 and "missing" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "g").exists()


def test_cli_import_hf_reads_the_aya_export(tmp_path):
    model, processor, out = _export(tmp_path)
    args = ["import-hf", "--model", str(out), "--out", str(tmp_path / "graft"), "--template", "llama_2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    back = GraftForConditionalGeneration.from_pretrained(tmp_path / "graft").eval()
    assert (_logits(model, processor) - _logits(back, processor)).abs().max().item() <= TOL
