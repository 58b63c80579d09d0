"""graft <-> transformers' LlavaForConditionalGeneration: same function, same inputs, both ways."""

import dataclasses
import logging
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

from graft.backbones import compose
from graft.export import ExportError, export_hf, export_to_transformers, import_from_hf
from graft.modeling import GraftForConditionalGeneration
from graft.processing import GraftProcessor
from graft.templates import Message, get_template

from tiny import (
    random_image,
    tiny_image_processor,
    tiny_llm,
    tiny_model_and_processor,
    tiny_tokenizer,
    tiny_vision,
)

torch.set_num_threads(1)
TOL = 1e-5
QUESTION = "<image>\nIs there a red circle?"
# llama_2: a template with BOS and text on both sides of the image; vicuna_v1's chat template is
# checked on its own below
TEMPLATE = "llama_2"


def _tiny(connector="mlp2x_gelu", template=TEMPLATE):
    return tiny_model_and_processor(connector, template=template)


def _train_batch(processor):
    """Two supervised samples of different lengths (right padding), one image each."""
    samples = [
        processor.encode([Message("user", QUESTION), Message("assistant", "Yes.")], [random_image(1)]),
        processor.encode(
            [Message("user", "How many objects are there?\n<image>"), Message("assistant", "There are 3.")],
            [random_image(2)],
        ),
    ]
    return processor.collate(samples)


def _prompt_text(processor) -> str:
    return processor.template.render([Message("user", QUESTION)], add_generation_prompt=True).text


@torch.no_grad()
def _max_diff(a_model, b_model, batch) -> float:
    a, b = a_model(**batch), b_model(**batch)
    assert torch.allclose(a.loss, b.loss, atol=TOL)
    return (a.logits - b.logits).abs().max().item()


def _keys(folder: Path) -> list[str]:
    keys = []
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            keys.extend(f.keys())
    return keys


def _tiny_llava(tmp_path: Path, act: str = "gelu", identity: bool = False) -> Path:
    """A tiny LLaVA checkpoint made and saved by transformers itself (with its processor)."""
    tokenizer = tiny_tokenizer(extra_special=["<image>"])
    vision, llm = tiny_vision(3), tiny_llm(len(tokenizer), seed=3)
    config = LlavaConfig(
        vision_config=vision.config,
        text_config=llm.config,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=16,
        projector_hidden_act=act,
    )
    torch.manual_seed(3)
    llava = LlavaForConditionalGeneration(config).eval()
    if identity:
        with torch.no_grad():
            llava.model.multi_modal_projector.linear_2.weight.copy_(torch.eye(llm.config.hidden_size))
            llava.model.multi_modal_projector.linear_2.bias.zero_()
    llava.save_pretrained(tmp_path / "llava")
    LlavaProcessor(
        image_processor=tiny_image_processor(),
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    ).save_pretrained(tmp_path / "llava")
    return tmp_path / "llava"


# --- export ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("connector,act", [("linear", "linear"), ("mlp2x_gelu", "gelu")])
def test_export_writes_llava_config_and_key_names(tmp_path, connector, act):
    model, processor = _tiny(connector)
    out = export_to_transformers(model, processor, tmp_path / "llava")
    config = LlavaConfig.from_pretrained(out)
    assert config.projector_hidden_act == act
    assert config.image_token_index == model.config.image_token_id
    assert config.image_seq_length == model.config.image_seq_length == 16
    assert config.vision_feature_layer == -2 and config.vision_feature_select_strategy == "default"
    keys = _keys(out)
    prefixes = {"model.vision_tower.", "model.multi_modal_projector.", "model.language_model.", "lm_head."}
    assert all(any(k.startswith(p) for p in prefixes) for k in keys), keys
    assert {p for p in prefixes if any(k.startswith(p) for k in keys)} == prefixes
    assert "model.multi_modal_projector.linear_2.weight" in keys
    if connector == "linear":
        with safe_open(str(out / "model.safetensors"), "pt") as f:
            assert torch.equal(f.get_tensor("model.multi_modal_projector.linear_2.weight"), torch.eye(64))
            assert not f.get_tensor("model.multi_modal_projector.linear_2.bias").any()
    assert (out / "generation_config.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left


@pytest.mark.parametrize("connector", ["linear", "mlp2x_gelu"])
def test_exported_llava_computes_graft_logits_from_its_own_processor(tmp_path, connector):
    model, processor = _tiny(connector)
    out = export_to_transformers(model, processor, tmp_path / "llava")
    llava = LlavaForConditionalGeneration.from_pretrained(out, dtype=torch.float32).eval()
    llava_processor = AutoProcessor.from_pretrained(out)
    assert isinstance(llava_processor, LlavaProcessor)

    # a prompt string + image through LlavaProcessor gives graft's exact input
    ours = processor.encode([Message("user", QUESTION)], [random_image(1)], add_generation_prompt=True)
    theirs = llava_processor(text=_prompt_text(processor), images=random_image(1), return_tensors="pt")
    assert theirs["input_ids"][0].tolist() == ours.input_ids
    assert torch.equal(theirs["pixel_values"], ours.pixel_values)
    with torch.no_grad():
        graft_logits = model(input_ids=torch.tensor([ours.input_ids]), pixel_values=ours.pixel_values).logits
        llava_logits = llava(**theirs).logits
    assert (graft_logits - llava_logits).abs().max().item() <= TOL

    # a padded training batch: same logits and loss
    assert _max_diff(model, llava, _train_batch(processor)) <= TOL


def test_export_with_tied_embeddings(tmp_path):
    tokenizer = tiny_tokenizer()
    model = compose(tiny_vision(), tiny_llm(len(tokenizer) + 1, tie=True), tokenizer).eval()
    processor = GraftProcessor(
        tokenizer, tiny_image_processor(), model.config.image_seq_length, template=TEMPLATE
    )
    out = export_to_transformers(model, processor, tmp_path / "llava")
    llava = LlavaForConditionalGeneration.from_pretrained(out).eval()
    assert llava.lm_head.weight.data_ptr() == llava.get_input_embeddings().weight.data_ptr()
    assert _max_diff(model, llava, _train_batch(processor)) <= TOL


@pytest.mark.parametrize("reduction", ["pool", "pixel_shuffle"])
def test_export_refuses_token_reduction(tmp_path, reduction):
    model, processor = _tiny({"name": "mlp2x_gelu", "reduction": reduction})
    with pytest.raises(ValueError, match=r"connector\.reduction='" + reduction):
        export_to_transformers(model, processor, tmp_path / "llava")
    assert not (tmp_path / "llava").exists()


def test_export_refuses_connectors_llava_has_no_projector_for(tmp_path):
    model, processor = _tiny()
    model.config.connector = {"name": "qformer"}
    with pytest.raises(ExportError, match=r"connector\.name='qformer'"):
        export_to_transformers(model, processor, tmp_path / "llava")


def test_export_is_atomic_and_never_overwrites_silently(tmp_path, monkeypatch):
    model, processor = _tiny()
    out = tmp_path / "llava"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_to_transformers(model, processor, out)

    def broken_save(self, *args, **kwargs):
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr(LlavaProcessor, "save_pretrained", broken_save)
        with pytest.raises(OSError, match="disk full"):
            export_to_transformers(model, processor, out, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]  # the old folder is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["llava"]  # no temp folder left

    export_to_transformers(model, processor, out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "config.json").exists()


def test_export_hf_from_a_saved_graft_folder(tmp_path):
    model, processor = _tiny("linear")
    model.save_pretrained(tmp_path / "graft")
    processor.save_pretrained(tmp_path / "graft")
    out = export_hf(tmp_path / "graft", tmp_path / "llava")
    llava = LlavaForConditionalGeneration.from_pretrained(out).eval()
    assert _max_diff(model, llava, _train_batch(processor)) <= TOL


def test_exported_chat_template_renders_like_graft(tmp_path):
    model, processor = _tiny(template="vicuna_v1")
    out = export_to_transformers(model, processor, tmp_path / "llava")
    llava_processor = AutoProcessor.from_pretrained(out)
    chat = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is there a red circle?"}]}
    ]
    text = llava_processor.apply_chat_template(chat, add_generation_prompt=True)
    assert text == _prompt_text(processor)
    ours = processor.encode([Message("user", QUESTION)], [random_image(1)], add_generation_prompt=True)
    theirs = llava_processor(text=text, images=random_image(1), return_tensors="pt")
    assert theirs["input_ids"][0].tolist() == ours.input_ids


def test_export_refuses_a_chat_template_that_disagrees_with_graft(tmp_path):
    model, processor = _tiny()
    processor.template = dataclasses.replace(get_template("vicuna_v1"), chat_template="{{ 'USER: hi' }}")
    with pytest.raises(ExportError, match="chat_template"):
        export_to_transformers(model, processor, tmp_path / "llava")


def test_export_pad_to_square_becomes_llava_do_pad(tmp_path):
    model, processor = _tiny()
    processor.pad_to_square = True
    out = export_to_transformers(model, processor, tmp_path / "llava")
    image_processor = AutoProcessor.from_pretrained(out).image_processor
    assert type(image_processor).__name__ == "LlavaImageProcessorPil" and image_processor.do_pad
    wide = random_image(4, size=48).crop((0, 8, 48, 40))  # 48 x 32
    ours = processor.preprocess_images([wide])
    theirs = image_processor(images=[wide], return_tensors="pt")["pixel_values"]
    assert theirs.shape == ours.shape == (1, 3, 32, 32)
    # the padding colour differs by at most one grey level (graft rounds the mean, LLaVA floors it)
    assert (theirs - ours).abs().mean().item() < 0.01


def test_export_chatml_adds_no_bos_and_stops_at_im_end(tmp_path):
    tokenizer = tiny_tokenizer(extra_special=["<|im_start|>", "<|im_end|>"])
    model = compose(tiny_vision(), tiny_llm(len(tokenizer) + 1), tokenizer).eval()
    processor = GraftProcessor(tokenizer, tiny_image_processor(), model.config.image_seq_length, "chatml")
    out = export_to_transformers(model, processor, tmp_path / "llava")
    llava = LlavaForConditionalGeneration.from_pretrained(out).eval()
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in llava.generation_config.eos_token_id
    ours = processor.encode([Message("user", QUESTION)], [random_image(1)], add_generation_prompt=True)
    theirs = AutoProcessor.from_pretrained(out)(
        text=_prompt_text(processor), images=random_image(1), return_tensors="pt"
    )
    assert theirs["input_ids"][0].tolist() == ours.input_ids and ours.input_ids[0] != tokenizer.bos_token_id
    assert _max_diff(model, llava, _train_batch(processor)) <= TOL


# --- import ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("connector", ["linear", "mlp2x_gelu"])
def test_export_then_import_gives_back_the_same_model(tmp_path, connector):
    model, processor = _tiny(connector)
    out = export_to_transformers(model, processor, tmp_path / "llava")
    back, back_processor = import_from_hf(out, tmp_path / "graft", template=TEMPLATE)
    assert back.config.connector["name"] == connector
    batch = _train_batch(processor)
    assert _train_batch(back_processor)["input_ids"].tolist() == batch["input_ids"].tolist()
    assert _max_diff(model, back, batch) <= TOL
    # the saved graft folder loads like any other
    again = GraftForConditionalGeneration.from_pretrained(tmp_path / "graft").eval()
    assert GraftProcessor.from_pretrained(tmp_path / "graft").image_seq_length == 16
    assert _max_diff(model, again, batch) <= TOL


def test_import_asks_in_the_template_its_chat_template_renders(tmp_path, caplog):
    tokenizer = tiny_tokenizer(extra_special=["<|im_start|>", "<|im_end|>"])
    model = compose(tiny_vision(), tiny_llm(len(tokenizer) + 1), tokenizer).eval()
    for template in ("smollm2", "vicuna_v1"):
        processor = GraftProcessor(tokenizer, tiny_image_processor(), model.config.image_seq_length, template)
        out = export_to_transformers(model, processor, tmp_path / template)
        with caplog.at_level("WARNING", logger="graft.export.importer"):
            assert import_from_hf(out)[1].template.name == template
        # the export's own INFO line is captured once an earlier test (a CLI run) set graft's loggers to INFO
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    # told another template than the folder's chat template renders: done, but said
    with caplog.at_level("WARNING", logger="graft.export.importer"):
        assert import_from_hf(tmp_path / "smollm2", template="chatml")[1].template.name == "chatml"
    assert "its chat template renders '<|im_start|>system\\nYou are a helpful AI" in caplog.text
    assert "(template 'chatml')" in caplog.text


def test_import_of_a_folder_without_chat_template_says_which_template_it_assumes(tmp_path, caplog):
    model, processor = _tiny()  # llama_2: graft ships no chat template for it
    out = export_to_transformers(model, processor, tmp_path / "llava")
    with caplog.at_level("WARNING", logger="graft.export.importer"):
        assert import_from_hf(out)[1].template.name == "vicuna_v1"
    assert f"{out}: no chat template; asking it in 'vicuna_v1'" in caplog.text
    assert "pass --template" in caplog.text


@pytest.mark.parametrize("layout", ["transformers", "llava-hf"])
def test_import_of_a_llava_checkpoint_saved_by_transformers(tmp_path, layout):
    folder = _tiny_llava(tmp_path)
    if layout == "llava-hf":  # the key names of published llava-hf folders (transformers v4)
        state = LlavaForConditionalGeneration.from_pretrained(folder).state_dict()
        renames = [
            ("model.language_model.", "language_model.model."),
            ("lm_head.", "language_model.lm_head."),
            ("model.vision_tower.", "vision_tower.vision_model."),
            ("model.multi_modal_projector.", "multi_modal_projector."),
        ]
        legacy = {}
        for key, value in state.items():
            for old, new in renames:
                if key.startswith(old):
                    legacy[new + key[len(old) :]] = value.contiguous()
                    break
        assert len(legacy) == len(state)
        for path in folder.glob("*.safetensors"):
            path.unlink()
        save_file(legacy, str(folder / "model.safetensors"), metadata={"format": "pt"})
    llava = LlavaForConditionalGeneration.from_pretrained(folder).eval()
    model, processor = import_from_hf(folder, template="vicuna_v1")
    assert model.config.connector["name"] == "mlp2x_gelu"
    assert processor.image_token_id == llava.config.image_token_index
    batch = _train_batch(processor)
    assert _max_diff(llava, model, batch) <= TOL


def test_import_linear_projector_with_identity_linear_2(tmp_path):
    folder = _tiny_llava(tmp_path, act="linear", identity=True)
    llava = LlavaForConditionalGeneration.from_pretrained(folder).eval()
    model, processor = import_from_hf(folder)
    assert model.config.connector["name"] == "linear"
    assert _max_diff(llava, model, _train_batch(processor)) <= TOL


@pytest.mark.parametrize("act,identity", [("linear", False), ("gelu_pytorch_tanh", False)])
def test_import_refuses_projectors_graft_cannot_represent(tmp_path, act, identity):
    folder = _tiny_llava(tmp_path, act=act, identity=identity)
    with pytest.raises(ExportError, match=f"projector_hidden_act='{act}'"):
        import_from_hf(folder)
