"""Grounded word tokens (``graft.world.grounding``) and the connector fit that learns them
(``graft.train.snap.fit_connector``)."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from graft.connectors.registry import build_connector
from graft.remote.cells import cell_tokens
from graft.train.snap import FitSettings, TokenClasses, fit_connector
from graft.world.grounding import (
    CellLayout,
    cell_accuracy,
    cell_markers,
    cell_words,
    grid_side,
    grounding_classes,
    grounding_targets,
    marker_words,
    scenes_of_images,
    split_classes,
    tokens_per_cell,
    word_embedding,
)
from graft.world.labels import cell_classes, cell_labeller, centre_classes, object_class
from graft.world.scene import COLORS, SHAPES, Obj, Scene

from tiny import tiny_model_and_processor, tiny_tokenizer

torch.set_num_threads(1)


def _scene() -> Scene:
    # a large red circle centred on cell (row 0, col 0) and a small blue square in cell (2, 3)
    return Scene([Obj("circle", "red", "large", 0.2, 0.2), Obj("square", "blue", "small", 0.85, 0.6)])


def test_each_cell_says_its_objects_colour_and_shape_words_or_background():
    tokenizer = tiny_tokenizer()
    table = torch.randn(len(tokenizer), 8)
    targets = grounding_targets([_scene()], 16, tokenizer, table)
    assert targets.shape == (1, 16, 8)

    def words(*names: str) -> torch.Tensor:
        return torch.stack([word_embedding(tokenizer, table, f" {n}") for n in names]).mean(0)

    classes = cell_classes(_scene(), 4)
    assert classes[0] == 1 + SHAPES.index("circle") * len(COLORS) + list(COLORS).index("red")
    assert torch.allclose(targets[0, 0], words("red", "circle"))
    assert torch.allclose(targets[0, 2 * 4 + 3], words("blue", "square"))
    # far from both objects: the background word (the tiny vocabulary splits it into pieces)
    assert torch.allclose(targets[0, 3 * 4 + 0], word_embedding(tokenizer, table, " background"))
    ids = tokenizer.encode(" background", add_special_tokens=False)
    assert torch.allclose(word_embedding(tokenizer, table, " background"), table[ids].mean(0))
    assert {int(c) for c in classes} == {0, int(classes[0]), int(classes[11])}


def test_two_tokens_per_cell_say_the_colour_word_then_the_shape_word():
    tokenizer = tiny_tokenizer()
    table = torch.randn(len(tokenizer), 8)
    targets = grounding_targets([_scene()], 32, tokenizer, table, layout=CellLayout(2))
    assert targets.shape == (1, 32, 8)

    def word(name: str) -> torch.Tensor:
        return word_embedding(tokenizer, table, f" {name}")

    # cell 0 holds the red circle, cell 11 the blue square, cell 1 nothing
    for token, name in ((0, "red"), (1, "circle"), (22, "blue"), (23, "square"), (2, "background")):
        assert torch.allclose(targets[0, token], word(name)), name
    assert torch.allclose(targets[0, 3], word("background"))
    words = cell_words(tokenizer, table, layout=CellLayout(2))
    assert len(words) == 1 + len(COLORS) + len(SHAPES)
    classes = centre_classes(_scene(), 4)
    assert torch.equal(words[split_classes(classes)], targets[0])
    assert tokens_per_cell({"name": "swiglu", "tokens_per_group": 2}) == 2
    assert tokens_per_cell({"name": "swiglu"}) == 1
    with pytest.raises(ValueError, match="gives 3 per cell"):
        tokens_per_cell({"name": "swiglu", "tokens_per_group": 3})
    with pytest.raises(ValueError, match="2 token\\(s\\) per cell of a square grid; this connector gives 33"):
        grid_side(33, per_cell=2)


def test_markers_say_each_cells_row_and_column_as_digits_before_its_words():
    tokenizer = tiny_tokenizer()
    table = torch.randn(len(tokenizer), 8)
    targets = grounding_targets([_scene()], 64, tokenizer, table, layout=CellLayout(2, 4))

    def word(name: str) -> torch.Tensor:
        return word_embedding(tokenizer, table, name)

    # cell 0 (row 1, column 1) holds the red circle, cell 11 (row 3, column 4) the blue square
    said = {0: "1", 1: "1", 2: " red", 3: " circle", 4: "1", 5: "2", 6: " background", 44: "3", 45: "4"}
    said |= {46: " blue", 47: " square"}
    for token, name in said.items():
        assert torch.allclose(targets[0, token], word(name)), (token, name)
    words = cell_words(tokenizer, table, layout=CellLayout(2, 4))
    assert len(words) == 1 + len(COLORS) + len(SHAPES) + 4
    assert cell_markers({"name": "swiglu", "marker_grid": 4}) == 4 and cell_markers({"name": "swiglu"}) == 0
    with pytest.raises(ValueError, match="markers of a 3x3 grid on a 4x4 grid of cells"):
        grounding_targets([_scene()], 64, tokenizer, table, layout=CellLayout(2, 3))
    with pytest.raises(ValueError, match="4 token\\(s\\) per cell of a square grid; this connector gives 32"):
        grounding_targets([_scene()], 32, tokenizer, table, layout=CellLayout(2, 4))
    # a marker wrong counts in marker_acc alone, a word wrong in the cell's accuracy alone
    classes = grounding_classes([_scene()], 64, layout=CellLayout(2, 4))
    wrong = classes.clone()
    wrong[0, 5] = wrong[0, 4]  # cell 1's column marker says "1", not "2"
    wrong[0, 47] = wrong[0, 3]  # the blue square's shape word says circle
    result = cell_accuracy(words[wrong], words[classes], words, layout=CellLayout(2, 4))
    assert result == pytest.approx(
        {"cell_acc": 15 / 16, "object_shape_acc": 1 / 2, "object_colour_acc": 1.0, "marker_acc": 31 / 32}
    )


def test_markers_after_follow_each_cells_words_as_the_projector_writes_them():
    tokenizer = tiny_tokenizer()
    table = torch.randn(len(tokenizer), 8)
    after = CellLayout(2, 4, markers_after=True)
    spec = {"name": "swiglu", "tokens_per_group": 2, "marker_grid": 4, "markers_after": True}
    assert CellLayout.of(spec) == after
    assert CellLayout.of({"name": "swiglu", "marker_grid": 4}) == CellLayout(1, 4)
    targets = grounding_targets([_scene()], 64, tokenizer, table, layout=after)
    said = {0: " red", 1: " circle", 2: "1", 3: "1", 4: " background", 6: "1", 7: "2"}
    said |= {44: " blue", 45: " square", 46: "3", 47: "4"}
    for token, name in said.items():
        assert torch.allclose(targets[0, token], word_embedding(tokenizer, table, name)), (token, name)
    # the projector writes the same order: markers set to the digits, each group's words its targets'
    projector = build_connector(
        {"name": "linear", "tokens_per_group": 2, "marker_grid": 4, "markers_after": True}, 8, 8
    )
    projector.markers.data.copy_(marker_words(tokenizer, table, 4))
    words = targets[0].view(16, 4, 8)[:, :2].reshape(1, 16, 16)
    assert torch.allclose(cell_tokens(words, 2, projector.markers, projector.markers_after), targets)
    # a marker wrong counts in marker_acc alone, a word wrong in the cell's accuracy alone
    vocabulary = cell_words(tokenizer, table, after)
    classes = grounding_classes([_scene()], 64, layout=after)
    wrong = classes.clone()
    wrong[0, 7] = wrong[0, 6]  # cell 1's column marker says "1", not "2"
    wrong[0, 45] = wrong[0, 1]  # the blue square's shape word says circle
    result = cell_accuracy(vocabulary[wrong], vocabulary[classes], vocabulary, after)
    assert result == pytest.approx(
        {"cell_acc": 15 / 16, "object_shape_acc": 1 / 2, "object_colour_acc": 1.0, "marker_acc": 31 / 32}
    )
    with pytest.raises(ValueError, match="markers_after .* needs them"):
        build_connector({"name": "linear", "markers_after": True}, 8, 8)


def test_a_cell_of_two_tokens_is_right_only_when_both_are():
    words = torch.eye(1 + len(COLORS) + len(SHAPES))
    truth = split_classes(torch.tensor([[0, 1, 2, 1 + len(COLORS)]]))  # background, then three objects
    said = truth.clone()
    said[0, 3] = 1 + len(COLORS) + 1  # the second object's shape wrong, its colour right
    said[0, 6] = 2  # the third object's colour wrong, its shape right
    result = cell_accuracy(words[said], words[truth], words, layout=CellLayout(2))
    assert result == pytest.approx({"cell_acc": 0.5, "object_shape_acc": 2 / 3, "object_colour_acc": 2 / 3})


def test_centre_cells_name_each_object_once_and_cover_cells_once_per_cell_it_covers():
    tokenizer = tiny_tokenizer()
    table = torch.randn(len(tokenizer), 8)
    circle, square = _scene().objects
    cover, centre = cell_classes(_scene(), 4), centre_classes(_scene(), 4)
    # the large circle spans x, y in [0.03, 0.37]: it paints cells 0, 1, 4, 5; its centre is in cell 0
    assert [int(i) for i in cover.nonzero()] == [0, 1, 4, 5, 11]
    assert [int(i) for i in centre.nonzero()] == [0, 11]
    assert centre[0] == object_class(circle) and centre[11] == object_class(square)
    targets = grounding_targets([_scene()], 16, tokenizer, table, cells="centre")
    background = word_embedding(tokenizer, table, " background")
    assert torch.allclose(targets[0, 1], background)  # covered by the circle, not its centre
    assert not torch.allclose(
        grounding_targets([_scene()], 16, tokenizer, table, cells="cover")[0, 1], background
    )
    # two centres in one cell (1, 1): the larger object keeps it; of two alike, the first
    small, large = Obj("circle", "red", "small", 0.3, 0.3), Obj("square", "blue", "large", 0.45, 0.45)
    for objects, kept in (([small, large], large), ([large, small], large), ([small, small], small)):
        classes = centre_classes(Scene(list(objects)), 4)
        assert classes.nonzero().flatten().tolist() == [5] and classes[5] == object_class(kept)
    with pytest.raises(ValueError, match="unknown cell targets 'middle'; valid: cover, centre"):
        cell_labeller("middle")
    with pytest.raises(ValueError, match="unknown cell targets"):
        grounding_targets([_scene()], 16, tokenizer, table, cells="middle")


def test_grounding_refuses_what_is_no_square_grid_and_images_the_world_does_not_know(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="17 tokens per image"):
        grid_side(17)
    with pytest.raises(ValueError, match="does not split into a 5x5 grid"):
        cell_classes(_scene(), 5)
    with pytest.raises(ValueError, match="does not split into a 5x5 grid"):
        centre_classes(_scene(), 5)
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "train.jsonl").write_text(
        json.dumps({"id": "0", "image": "images/train/0.png", "scene": _scene().to_dict()}) + "\n"
    )
    assert scenes_of_images(tmp_path, ["images/train/0.png"])[0].objects == _scene().objects
    assert scenes_of_images(tmp_path, [tmp_path / "images/train/0.png"])[0].objects == _scene().objects
    monkeypatch.chdir(tmp_path.parent)  # as a dataset names it: relative to the working folder
    here = f"{tmp_path.name}/images/train/0.png"
    assert scenes_of_images(tmp_path.name, [here])[0].objects == _scene().objects
    with pytest.raises(KeyError, match="images/train/1.png: no scene"):
        scenes_of_images(tmp_path, ["images/train/1.png"])


def _toy_cells(noise: float):
    """A tiny swiglu model and 400 toy images whose cells' features are their class's code (every
    patch of a cell: pixel shuffle groups 2x2 patches per cell) plus ``noise``; with the classes
    ``[400, cells]``, the LLM's embedding table and the generator, to draw more from."""
    model, processor = tiny_model_and_processor(
        {"name": "swiglu", "reduction": "pixel_shuffle", "reduction_factor": 2, "layer_norm": True}
    )
    side = grid_side(model.config.image_seq_length)
    d_vis, patches = model.config.vision_config.hidden_size, model.num_patches
    g = torch.Generator().manual_seed(0)
    codes = torch.randn(1 + len(SHAPES) * len(COLORS), d_vis, generator=g)
    classes = torch.randint(0, len(codes), (400, side, side), generator=g)
    grid = classes.repeat_interleave(2, 1).repeat_interleave(2, 2).reshape(400, patches)
    features = codes[grid] + noise * torch.randn(400, patches, d_vis, generator=g)
    table = model.get_input_embeddings().weight.detach().float()
    return model, processor, features, classes.reshape(400, -1), table, g


def test_a_projector_fitted_to_grounded_targets_names_held_out_cells():
    """Cells whose (toy) features carry their class: the fitted projector's tokens land nearest
    their own words on held-out images, where the untrained one's do not."""
    model, processor, features, classes, table, _ = _toy_cells(0.05)
    words = cell_words(processor.tokenizer, table)
    targets = words[classes]
    held = features[:64]
    with torch.no_grad():
        before = cell_accuracy(model.connector(held), targets[:64], words)
    settings = FitSettings(steps=300, batch_size=32, heldout=64, lr=3e-3)
    result = fit_connector(
        model.connector, features, targets, table, settings, lambda t, y: cell_accuracy(t, y, words)
    )
    assert result["cell_acc"] > 0.9 > before["cell_acc"] + 0.5
    assert result["object_shape_acc"] > 0.9 and result["object_colour_acc"] > 0.9
    with pytest.raises(ValueError, match="400 images' features but 3 images' target tokens"):
        fit_connector(model.connector, features, targets[:3], table, settings)


@pytest.mark.parametrize("steps", [1, 2, 20, 21])
def test_a_fit_of_any_length_runs(steps):
    """20 steps once crashed inside torch's one-cycle schedule (its 5 % warm-up ended at step 0)."""
    model, processor, features, classes, table, _ = _toy_cells(0.05)
    targets = cell_words(processor.tokenizer, table)[classes]
    settings = FitSettings(steps=steps, batch_size=8, heldout=16)
    assert fit_connector(model.connector, features, targets, table, settings)["final_loss"] > 0


def test_the_class_loss_separates_words_that_lie_close_together():
    """Words that differ little beside their size (as SmolLM2's shape words) and noisy features:
    by squared error alone the fitted tokens land almost as near another class's word as their
    own; with ``contrast`` each lands nearest its own."""
    model, _, features, labels, table, g = _toy_cells(1.0)
    size = table.norm(dim=-1).mean() / table.shape[1] ** 0.5
    words = table[0] + 0.05 * size * torch.randn(1 + len(SHAPES) * len(COLORS), table.shape[1], generator=g)
    accuracy = {}
    for contrast in (0.0, 0.3):
        settings = FitSettings(steps=300, batch_size=32, heldout=64, lr=3e-3, contrast=contrast)
        result = fit_connector(
            copy.deepcopy(model.connector),
            features,
            words[labels],
            table,
            settings,
            lambda t, y: cell_accuracy(t, y, words),
            TokenClasses(labels, words),
        )
        accuracy[contrast] = result["cell_acc"]
    assert accuracy[0.3] > 0.9 > accuracy[0.0] + 0.5
    with pytest.raises(ValueError, match="contrast needs the targets' classes"):
        fit_connector(model.connector, features, words[labels], table, FitSettings(contrast=0.3))


def test_the_grounding_sets_the_markers_to_their_digits_and_keeps_them_there(tmp_path):
    """ground_step with a marker_grid: the markers leave it as exactly the LLM's digits (fitted
    with the rest they stayed half their size), and the held-out markers are all read right."""
    from graft.modeling import GraftForConditionalGeneration
    from graft.pipelines.demo_fits import ground_step
    from graft.world import build_world

    world = tmp_path / "world"
    build_world(world, num_images=40, seed=0)
    spec = {"name": "mlp2x_gelu", "reduction": "pixel_shuffle", "tokens_per_group": 2, "marker_grid": 2}
    model, processor = tiny_model_and_processor(spec)
    model.save_pretrained(tmp_path / "m")
    processor.save_pretrained(tmp_path / "m")
    ground_step(tmp_path / "m", tmp_path / "g", world / "stage1.json", world, str(tmp_path / "cache"), 20, 0)
    grounded = GraftForConditionalGeneration.from_pretrained(tmp_path / "g")
    digits = marker_words(processor.tokenizer, grounded.get_input_embeddings().weight, 2)
    assert torch.equal(grounded.connector.markers.detach(), digits)
    assert torch.equal(
        digits[1, 1], word_embedding(processor.tokenizer, grounded.get_input_embeddings().weight, "2")
    )
    assert json.loads((tmp_path / "g" / "ground.json").read_text())["fidelity"]["marker_acc"] == 1.0
