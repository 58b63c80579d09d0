"""The ``qformer`` (BLIP-2) and ``qformer_instruct`` (InstructBLIP) connectors."""

import pytest
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import (
    Blip2QFormerConfig,
    Blip2QFormerModel,
    InstructBlipQFormerConfig,
    InstructBlipQFormerModel,
    PreTrainedTokenizerFast,
)

from graft.backbones import compose
from graft.connectors import build_connector
from graft.export import export_hf
from graft.export.model import ExportError
from graft.modeling import GraftForConditionalGeneration
from graft.processing import GraftProcessor
from graft.templates import Message

from tiny import random_image, tiny_image_processor, tiny_llm, tiny_tokenizer, tiny_vision

torch.set_num_threads(1)

QFORMER = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2, "intermediate_size": 64}
INSTRUCT = {**QFORMER, "vocab_size": 64, "max_position_embeddings": 64}
WORDS = "is there a red blue green circle square triangle what how many objects the image and this".split()


def _tiny_instruction_tokenizer() -> PreTrainedTokenizerFast:
    """A BERT-style WordPiece tokenizer ([CLS] ... [SEP]), like InstructBLIP's Q-Former's."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    vocab = {tok: i for i, tok in enumerate(specials + WORDS + ["?", ".", ","])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"
    )


def _tiny_model(
    connector: dict, instruction: bool = False
) -> tuple[GraftForConditionalGeneration, GraftProcessor]:
    tokenizer = tiny_tokenizer()
    model = compose(tiny_vision(0), tiny_llm(len(tokenizer) + 1, 0), tokenizer, connector=connector).eval()
    processor = GraftProcessor(
        tokenizer,
        tiny_image_processor(),
        model.config.image_seq_length,
        instruction_tokenizer=_tiny_instruction_tokenizer() if instruction else None,
    )
    return model, processor


def _features(n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 17, 32, generator=torch.Generator().manual_seed(seed))


def test_qformer_matches_blip2_qformer_model():
    torch.manual_seed(1)
    reference = Blip2QFormerModel(Blip2QFormerConfig(**QFORMER, encoder_hidden_size=32)).eval()
    connector = build_connector({"name": "qformer", "num_query_tokens": 5, "qformer_config": QFORMER}, 32, 64)
    connector.qformer.load_state_dict(reference.state_dict())
    connector.eval()
    features = _features()
    queries = connector.query_tokens.expand(3, -1, -1)
    with torch.no_grad():
        # exactly as Blip2ForConditionalGeneration.get_image_features calls it
        expected = reference(
            query_embeds=queries,
            encoder_hidden_states=features,
            encoder_attention_mask=torch.ones(features.shape[:2], dtype=torch.long),
        ).last_hidden_state
        got = connector.query_outputs(features)
        soft = connector(features)
    assert got.shape == (3, 5, 32)
    assert (got - expected).abs().max() <= 1e-5
    assert torch.allclose(soft, connector.language_projection(expected), atol=1e-5)


def test_qformer_instruct_matches_instructblip_qformer_model():
    torch.manual_seed(2)
    reference = InstructBlipQFormerModel(InstructBlipQFormerConfig(**INSTRUCT, encoder_hidden_size=32)).eval()
    spec = {"name": "qformer_instruct", "num_query_tokens": 4, "qformer_config": INSTRUCT}
    connector = build_connector(spec, 32, 64)
    connector.qformer.load_state_dict(reference.state_dict())
    connector.eval()
    features = _features()
    ids = torch.tensor([[2, 5, 6, 7, 3, 0], [2, 8, 3, 0, 0, 0], [2, 9, 10, 11, 12, 3]])
    mask = (torch.arange(6) < torch.tensor([[5], [3], [6]])).long()
    queries = connector.query_tokens.expand(3, -1, -1)
    with torch.no_grad():
        # exactly as InstructBlipModel.get_image_features calls it
        out = reference(
            input_ids=ids,
            attention_mask=torch.cat([torch.ones(3, 4, dtype=torch.long), mask], dim=1),
            query_embeds=queries,
            encoder_hidden_states=features,
            encoder_attention_mask=torch.ones(features.shape[:2], dtype=torch.long),
        ).last_hidden_state[:, :4]
        got = connector.query_outputs(features, instruction_ids=ids, instruction_mask=mask)
        other = connector.query_outputs(features, instruction_ids=ids.roll(1, dims=0), instruction_mask=mask)
    assert (got - out).abs().max() <= 1e-5
    assert not torch.allclose(got, other)  # the instruction matters
    with pytest.raises(ValueError, match="instruction"):
        connector(features)


def test_num_tokens_is_the_number_of_queries_whatever_the_image():
    connector = build_connector({"name": "qformer", "qformer_config": QFORMER}, 32, 64)
    assert connector.num_tokens(16) == connector.num_tokens(576) == 32
    assert connector(_features(2)).shape == (2, 32, 64)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"name": "qformer", "qformer_config": QFORMER, "num_queries": 8}, "unknown options: num_queries"),
        (
            {"name": "qformer", "qformer_config": {**QFORMER, "hiden_size": 8}},
            "unknown qformer_config keys hiden_size",
        ),
        (
            {"name": "qformer", "qformer_config": {**QFORMER, "encoder_hidden_size": 48}},
            "encoder_hidden_size=48",
        ),
        (
            {"name": "qformer", "qformer_config": QFORMER, "num_query_tokens": 0},
            "num_query_tokens must be >= 1",
        ),
    ],
)
def test_bad_qformer_specs_are_clear_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        build_connector(spec, 32, 64)


def test_qformer_model_trains_saves_and_reloads(tmp_path):
    model, processor = _tiny_model({"name": "qformer", "num_query_tokens": 6, "qformer_config": QFORMER})
    assert model.config.image_seq_length == processor.image_seq_length == 6
    turns = [Message("user", "<image>\nWhat is it?"), Message("assistant", "A circle.")]
    batch = processor.collate([processor.encode(turns, [random_image(1)])])
    assert int((batch["input_ids"] == model.config.image_token_id).sum()) == 6
    out = model(**batch)
    out.loss.backward()
    assert model.connector.query_tokens.grad is not None and model.connector.query_tokens.grad.abs().sum() > 0
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = GraftForConditionalGeneration.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, loaded(**batch).logits)
    with pytest.raises(ExportError, match="connector.name='qformer'"):
        export_hf(tmp_path, tmp_path / "llava")


def test_instruct_model_gives_each_image_its_samples_latest_user_turn(tmp_path):
    spec = {"name": "qformer_instruct", "num_query_tokens": 4, "qformer_config": INSTRUCT}
    model, processor = _tiny_model(spec, instruction=True)
    first = [
        Message("user", "<image> and <image>: what objects?"),
        Message("assistant", "A circle."),
        Message("user", "How many red objects?"),
        Message("assistant", "Two."),
    ]
    second = [Message("user", "Is there a blue square in <image>?"), Message("assistant", "Yes.")]
    images = [[random_image(1), random_image(2)], [random_image(3)]]
    samples = [processor.encode(c, i) for c, i in zip([first, second], images, strict=True)]
    batch = processor.collate(samples)
    words = processor.instruction_tokenizer
    assert samples[0].instruction_ids == words("How many red objects?")["input_ids"]
    assert samples[1].instruction_ids == words("Is there a blue square in ?")["input_ids"]
    assert batch["instruction_ids"].shape[0] == 2 and batch["instruction_mask"].sum(1).tolist() == [7, 9]

    with torch.no_grad():
        embeds = model.embed_inputs(
            batch["input_ids"],
            batch["pixel_values"],
            instruction_ids=batch["instruction_ids"],
            instruction_mask=batch["instruction_mask"],
        )
        features = model.select_vision_features(batch["pixel_values"])
        rows = torch.tensor([0, 0, 1])  # images 0 and 1 are sample 0's, image 2 is sample 1's
        expected = model.connector(
            features,
            instruction_ids=batch["instruction_ids"][rows],
            instruction_mask=batch["instruction_mask"][rows],
        )
    mask = batch["input_ids"] == model.config.image_token_id
    assert torch.equal(embeds[mask].view(3, 4, -1), expected)

    # the Q-Former's tokenizer travels with the model folder
    processor.save_pretrained(tmp_path)
    again = GraftProcessor.from_pretrained(tmp_path)
    assert again.encode(first, images[0]).instruction_ids == samples[0].instruction_ids


def test_instruct_generation_reads_the_instruction_at_prefill():
    spec = {"name": "qformer_instruct", "num_query_tokens": 4, "qformer_config": INSTRUCT}
    model, processor = _tiny_model(spec, instruction=True)
    prompts = processor.prompts(
        [[Message("user", "<image> What objects?")], [Message("user", "How many red objects in <image>?")]],
        [[random_image(1)], [random_image(2)]],
    )
    assert "instruction_ids" in prompts
    settings = {"max_new_tokens": 4, "do_sample": False}
    cached = model.generate(**prompts, **settings)
    uncached = model.generate(**prompts, **settings, use_cache=False)
    assert torch.equal(cached, uncached)
    with pytest.raises(ValueError, match="instruction_ids"):
        model(**{k: v for k, v in prompts.items() if not k.startswith("instruction")})


def test_instruct_connector_trains_through_the_loop_with_the_instruction(tmp_path):
    from graft.train import train
    from graft.train.recipe import recipe_from_dict

    from tiny import tiny_recipe, tiny_world

    world = tiny_world(tmp_path / "world", n_images=4)
    model, processor = _tiny_model({"name": "qformer_instruct", "qformer_config": INSTRUCT}, instruction=True)
    model.save_pretrained(tmp_path / "start")
    processor.save_pretrained(tmp_path / "start")
    raw = tiny_recipe(
        world,
        tmp_path / "out",
        **{"model": {"init_from": str(tmp_path / "start")}, "llm.mode": "frozen", "max_steps": 2},
    )
    seen = []  # the loop builds its own model from the folder: spy on the connector class
    original = type(model.connector).forward

    def spy(self, *args, **kwargs):
        seen.append(kwargs)
        return original(self, *args, **kwargs)

    type(model.connector).forward = spy
    try:
        result = train(recipe_from_dict(raw))
    finally:
        type(model.connector).forward = original
    assert seen and all("instruction_ids" in kw and "instruction_mask" in kw for kw in seen)
    assert result.steps == 2 and torch.isfinite(torch.tensor(result.final_loss))
