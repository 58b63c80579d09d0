"""The word-alignment objective (``graft.word_alignment``), its stage in the training loop and the
``lexical`` connector whose tokens are words."""

from __future__ import annotations

import pytest
import torch
from accelerate.utils import set_seed

from graft.export.model import ExportError, export_architecture
from graft.modeling import GraftForConditionalGeneration
from graft.train import build_model, train
from graft.train.recipe import RecipeError, recipe_from_dict
from graft.word_alignment import content_words, word_alignment_loss

from tiny import bytelevel_tokenizer, tiny_model_and_processor, tiny_recipe, tiny_world

torch.set_num_threads(1)


def test_content_words_are_what_an_image_can_show():
    tok = bytelevel_tokenizer("a red circle and the blue square, in the image. ")
    keep = content_words(tok)
    ids = {
        w: tok.encode(w, add_special_tokens=False)
        for w in (" red", " circle", " blue", " the", " and", ",", ".", " image")
    }
    assert all(len(i) == 1 for i in ids.values()), ids
    assert [bool(keep[ids[w][0]]) for w in ids] == [True, True, True, False, False, False, False, False]
    assert not keep[tok.all_special_ids].any()


def _caption(words: list[int], length: int = 8) -> torch.Tensor:
    """A label row: an unsupervised prompt, then the words, then an unsupervised pad."""
    row = torch.full((length,), -100)
    row[2 : 2 + len(words)] = torch.tensor(words)
    return row


def test_the_loss_puts_each_images_tokens_on_its_captions_words():
    torch.manual_seed(0)
    table = torch.randn(50, 16)
    tokens = torch.nn.Parameter(torch.randn(3, 4, 16))  # 3 images, 4 tokens each
    samples = torch.tensor([0, 1, 1])  # sample 1 has two images
    labels = torch.stack([_caption([3, 7, 40]), _caption([11, 12])])
    words = torch.isin(labels, torch.tensor([3, 7, 11, 12]))  # 40 is, say, a function word
    opt = torch.optim.Adam([tokens], lr=0.05)
    first = None
    for _ in range(300):
        loss = word_alignment_loss(tokens, samples, labels, words, table)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first / 4
    unit = torch.nn.functional.normalize
    nearest = (unit(tokens.detach(), dim=-1) @ unit(table, dim=-1).T).argmax(-1)  # [3, 4]
    # a bag of words: each of a sample's words is some token's word (the function word is none);
    # a token that no word needs keeps the word it started nearest to
    assert {3, 7} <= set(nearest[0].tolist()) and 40 not in nearest[0]
    assert {11, 12} <= set(nearest[1:].flatten().tolist())  # shared over the sample's two images


def test_a_token_ends_on_its_word_not_only_pointing_at_it():
    torch.manual_seed(0)
    table = torch.randn(50, 64)
    token = torch.nn.Parameter(3.0 * torch.randn(1, 1, 64))  # three times a word's size
    labels = _caption([3]).unsqueeze(0)
    opt = torch.optim.Adam([token], lr=0.05)
    for _ in range(300):
        loss = word_alignment_loss(token, torch.tensor([0]), labels, labels >= 0, table)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert (token.detach()[0, 0] - table[3]).norm() / table[3].norm() < 0.05


def test_a_sample_without_content_words_adds_nothing():
    torch.manual_seed(0)
    table, tokens = torch.randn(50, 16), torch.randn(2, 4, 16)
    labels = torch.stack([_caption([3, 7]), _caption([40])])
    words = torch.isin(labels, torch.tensor([3, 7]))
    both = word_alignment_loss(tokens, torch.tensor([0, 1]), labels, words, table, num_items=1)
    alone = word_alignment_loss(tokens[:1], torch.tensor([0]), labels[:1], words[:1], table, num_items=1)
    assert torch.allclose(both, alone)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, str]:
    return tiny_world(tmp_path_factory.mktemp("world"))


def test_the_word_alignment_stage_trains_the_connector_alone(tmp_path, world):
    raw = tiny_recipe(world, tmp_path / "out", **{"llm.mode": "frozen", "objective": "word_alignment"})
    raw["max_steps"] = 6
    recipe = recipe_from_dict(raw)
    set_seed(recipe.seed)
    before, _ = build_model(recipe)
    result = train(recipe)
    after = result.model.state_dict()
    for name, tensor in before.state_dict().items():
        assert torch.equal(tensor, after[name]) != name.startswith("connector."), name
    assert all(loss == loss and loss > 0 for loss in result.losses)


def test_word_alignment_refuses_a_stage_that_trains_the_llm(tmp_path, world):
    raw = tiny_recipe(world, tmp_path / "out", objective="word_alignment")
    with pytest.raises(RecipeError, match="word_alignment trains the connector alone"):
        recipe_from_dict(raw)
    with pytest.raises(RecipeError, match="objective must be one of"):
        recipe_from_dict(tiny_recipe(world, tmp_path / "out", objective="contrastive"))


def test_lexical_tokens_are_mixtures_of_the_llms_own_embeddings(tmp_path):
    spec = {"name": "lexical", "reduction": "pixel_shuffle", "reduction_factor": 2, "layer_norm": True}
    model, _ = tiny_model_and_processor(spec)
    table = model.get_input_embeddings().weight
    features = torch.randn(2, model.num_patches, model.config.vision_config.hidden_size)
    with torch.no_grad():
        tokens = model.get_image_features(vision_features=features)
        model.connector.word_scale = 1e4  # so sharp that each token is one embedding row
        sharp = model.get_image_features(vision_features=features)
    assert tokens.shape == (2, model.config.image_seq_length, table.shape[1])
    rows = (sharp.flatten(0, 1)[:, None, :] - table[None]).norm(dim=-1).min(dim=1).values
    assert rows.max() < 1e-4
    # the connector holds no copy of the table: a saved model has swiglu's weights only
    assert not any("embed" in name for name in model.connector.state_dict())
    model.connector.word_scale = 30.0
    model.save_pretrained(tmp_path / "m")
    again = GraftForConditionalGeneration.from_pretrained(tmp_path / "m")
    with torch.no_grad():
        assert torch.allclose(again.get_image_features(vision_features=features), tokens, atol=1e-6)
    with pytest.raises(ExportError, match=r"connector\.name='lexical'"):
        export_architecture(again)
