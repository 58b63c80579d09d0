"""A graft model built from a BLIP-2 / InstructBLIP checkpoint's visual half and another LLM."""

import logging

import pytest
import torch
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    BlipImageProcessorPil,
    InstructBlipConfig,
    InstructBlipForConditionalGeneration,
)
from typer.testing import CliRunner

from graft.blip2 import compose_from_blip2
from graft.cli import app
from graft.modeling import GraftForConditionalGeneration
from graft.processing import GraftProcessor
from graft.templates import Message

from tiny import IMAGE_SIZE, random_image, save_tiny_backbones, tiny_tokenizer

torch.set_num_threads(1)

VISION = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=IMAGE_SIZE,
    patch_size=8,
)
QFORMER = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    cross_attention_frequency=1,
    vocab_size=512,
)


def _text_config(hidden_size: int) -> dict:
    # the checkpoint's own LLM (dropped by the graft); hidden_size sets language_projection's output
    return dict(
        model_type="llama",
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=600,
    )


def _tiny_blip2(directory, instruct: bool = False, text_hidden_size: int = 64, seed: int = 0):
    """Save a tiny BLIP-2 (or InstructBLIP) checkpoint folder like a published one."""
    torch.manual_seed(seed)
    config_class, model_class = (
        (InstructBlipConfig, InstructBlipForConditionalGeneration)
        if instruct
        else (Blip2Config, Blip2ForConditionalGeneration)
    )
    config = config_class(
        vision_config=VISION,
        qformer_config=QFORMER,
        text_config=_text_config(text_hidden_size),
        num_query_tokens=4,
    )
    model = model_class(config).eval()
    with torch.no_grad():  # BLIP-2 zero-initialises its queries; make them matter
        model.query_tokens.normal_()
        model.vision_model.post_layernorm.weight.uniform_(0.5, 1.5)
        model.vision_model.post_layernorm.bias.normal_(0, 0.1)
    model.save_pretrained(directory)
    BlipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(directory)
    if instruct:
        tiny_tokenizer().save_pretrained(directory / "qformer_tokenizer")
    return model


def _pixels(image_processor, n: int = 2) -> torch.Tensor:
    images = [random_image(seed) for seed in range(n)]
    return image_processor(images, return_tensors="pt")["pixel_values"]


def _batch(model, tokenizer, image_processor, instruction_tokenizer=None):
    processor = GraftProcessor(
        tokenizer, image_processor, model.config.image_seq_length, instruction_tokenizer=instruction_tokenizer
    )
    turns = [Message("user", "<image>\nHow many objects are there?"), Message("assistant", "There are 3.")]
    return processor, processor.collate([processor.encode(turns, [random_image(3)])])


def test_blip2_query_outputs_and_projection_match_transformers(tmp_path):
    source = _tiny_blip2(tmp_path / "blip2")
    _, llm = save_tiny_backbones(tmp_path)  # a Llama of hidden size 64, as the checkpoint's text model
    model, tokenizer, image_processor, qformer_tokenizer = compose_from_blip2(
        str(tmp_path / "blip2"), str(llm)
    )
    model.eval()
    assert qformer_tokenizer is None
    assert model.config.image_seq_length == 4
    assert type(model.vision_tower).__name__ == "Blip2VisionModel"
    pixels = _pixels(image_processor)
    with torch.no_grad():
        reference = source.get_image_features(pixel_values=pixels)
        queries = model.connector.query_outputs(model.select_vision_features(pixels))
        soft_tokens = model.get_image_features(pixel_values=pixels)
    expected_queries = reference.qformer_outputs.last_hidden_state
    assert queries.shape == expected_queries.shape == (2, 4, 32)
    assert (queries - expected_queries).abs().max() <= 1e-5
    assert (soft_tokens - reference.pooler_output).abs().max() <= 1e-5
    # without the post_layernorm (BLIP-2's ln_vision) the queries would differ
    model.connector.vision_layernorm = None
    with torch.no_grad():
        plain = model.connector.query_outputs(model.select_vision_features(pixels))
    assert (plain - expected_queries).abs().max() > 1e-3


def test_instructblip_query_outputs_match_transformers(tmp_path):
    source = _tiny_blip2(tmp_path / "iblip", instruct=True)
    _, llm = save_tiny_backbones(tmp_path)
    model, tokenizer, image_processor, qformer_tokenizer = compose_from_blip2(
        str(tmp_path / "iblip"), str(llm), connector="qformer_instruct"
    )
    model.eval()
    assert qformer_tokenizer is not None
    words = qformer_tokenizer(
        ["How many objects?", "Is there a red circle above?"], padding=True, return_tensors="pt"
    )
    pixels = _pixels(image_processor)
    with torch.no_grad():
        reference = source.get_image_features(
            pixel_values=pixels,
            qformer_input_ids=words["input_ids"],
            qformer_attention_mask=words["attention_mask"],
        )
        queries = model.connector.query_outputs(
            model.select_vision_features(pixels),
            instruction_ids=words["input_ids"],
            instruction_mask=words["attention_mask"],
        )
        soft_tokens = model.connector.language_projection(queries)
    expected = reference.qformer_outputs.last_hidden_state[:, :4]
    assert (queries - expected).abs().max() <= 1e-5
    assert (soft_tokens - reference.pooler_output).abs().max() <= 1e-5
    # and the whole model runs with the processor's instruction rows
    _, batch = _batch(model, tokenizer, image_processor, qformer_tokenizer)
    assert "instruction_ids" in batch
    with torch.no_grad():
        assert torch.isfinite(model(**batch).logits).all()


def test_other_llm_width_gets_a_fresh_projection(tmp_path, caplog):
    source = _tiny_blip2(tmp_path / "blip2", text_hidden_size=48)
    _, llm = save_tiny_backbones(tmp_path)
    with caplog.at_level(logging.WARNING, logger="graft.blip2"):
        model, *_ = compose_from_blip2(str(tmp_path / "blip2"), str(llm))
    assert "fresh projection" in caplog.text
    assert model.connector.language_projection.out_features == 64
    # the Q-Former itself still came over
    assert torch.equal(model.connector.query_tokens, source.query_tokens)


def test_vpgc_at_init_gives_the_qformer_logits_and_round_trips(tmp_path):
    _tiny_blip2(tmp_path / "blip2")
    _, llm = save_tiny_backbones(tmp_path)
    # the same seed: the image token's new embedding rows are drawn at random (mean resizing)
    torch.manual_seed(0)
    base, tokenizer, image_processor, _ = compose_from_blip2(str(tmp_path / "blip2"), str(llm))
    torch.manual_seed(0)
    vpgc, *_ = compose_from_blip2(str(tmp_path / "blip2"), str(llm), connector="vpgc", guidance_layer=1)
    base.eval(), vpgc.eval()
    assert vpgc.connector.layer_index == 1
    assert torch.equal(vpgc.connector.q_new, base.connector.query_tokens)
    processor, batch = _batch(base, tokenizer, image_processor)
    with torch.no_grad():
        logits = base(**batch).logits
        diff = (vpgc(**batch).logits - logits).abs().max()
        assert diff <= 1e-6, diff
        # a non-zero guidance changes them: the hook really acts on the loaded Q-Former
        vpgc.connector.w_o.weight.normal_(0, 0.1)
        assert not torch.allclose(vpgc(**batch).logits, logits, atol=1e-4)
    for name, model in (("base", base), ("vpgc", vpgc)):
        model.save_pretrained(tmp_path / name)
        loaded = GraftForConditionalGeneration.from_pretrained(tmp_path / name).eval()
        with torch.no_grad():
            assert torch.equal(loaded(**batch).logits, model(**batch).logits)


def test_wrong_connector_for_the_checkpoint_is_a_clear_error(tmp_path):
    _tiny_blip2(tmp_path / "blip2")
    _, llm = save_tiny_backbones(tmp_path)
    with pytest.raises(ValueError, match="goes into connector 'qformer'"):
        compose_from_blip2(str(tmp_path / "blip2"), str(llm), connector="qformer_instruct")
    with pytest.raises(ValueError, match="unknown connector 'mlp2x_gelu'"):
        compose_from_blip2(str(tmp_path / "blip2"), str(llm), connector="mlp2x_gelu")
    with pytest.raises(ValueError, match="not a BLIP-2"):
        compose_from_blip2(str(llm), str(llm))


def test_compose_blip2_verb_saves_a_loadable_model(tmp_path):
    _tiny_blip2(tmp_path / "iblip", instruct=True)
    _, llm = save_tiny_backbones(tmp_path)
    out = tmp_path / "m"
    args = ["compose-blip2", "--blip2", str(tmp_path / "iblip"), "--llm", str(llm), "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--connector", "vpgc", "--guidance-layer", "1"])
    assert result.exit_code == 0, result.output
    model = GraftForConditionalGeneration.from_pretrained(out).eval()
    processor = GraftProcessor.from_pretrained(out)
    assert model.config.connector["vpg"]["name"] == "qformer_instruct"
    assert processor.instruction_tokenizer is not None and processor.image_seq_length == 4
    turns = [Message("user", "<image>\nIs there a red circle?")]
    batch = processor.collate([processor.encode(turns, [random_image(0)])])
    with torch.no_grad():
        assert torch.isfinite(model(**batch).logits).all()
    result = CliRunner().invoke(app, [*args, "--connector", "qformer"])
    assert result.exit_code != 0 and "qformer_instruct" in result.output


def test_compose_blip2_refuses_a_non_empty_out_and_names_missing_sources(tmp_path):
    _tiny_blip2(tmp_path / "blip2")
    _, llm = save_tiny_backbones(tmp_path)
    out = tmp_path / "run"
    out.mkdir()
    (out / "recipe.yaml").write_text("max_steps: 4\n")
    (out / "log.jsonl").write_text('{"step": 1}\n')
    args = ["compose-blip2", "--blip2", str(tmp_path / "blip2"), "--llm", str(llm), "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"--out {out} exists and is not empty; pass --overwrite to replace it" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["log.jsonl", "recipe.yaml"]
    result = CliRunner().invoke(app, [*args, "--overwrite"])
    assert result.exit_code == 0, result.output
    names = {p.name for p in out.iterdir()}
    assert "config.json" in names and not names & {"log.jsonl", "recipe.yaml"}

    (tmp_path / "emptyd").mkdir()
    for given, said in (
        (
            ["--llm", str(tmp_path / "nonexist")],
            f"the LLM '{tmp_path / 'nonexist'}': no such folder (nor is it a hub id",
        ),
        (["--blip2", str(tmp_path / "emptyd")], f"{tmp_path / 'emptyd'}: no config.json"),
        (["--llm", str(tmp_path / "emptyd")], f"the LLM '{tmp_path / 'emptyd'}'"),
        (["--connector", "mlp9"], "--connector 'mlp9' is not one of qformer"),
    ):
        options = dict(zip(args[1::2], args[2::2], strict=True)) | dict([given])
        options["--out"] = str(tmp_path / "new")
        result = CliRunner().invoke(app, ["compose-blip2", *[x for kv in options.items() for x in kv]])
        assert result.exit_code == 2 and said in result.output, result.output
        assert "Traceback" not in result.output and not (tmp_path / "new").exists()
