import pytest
import torch

from graft.eval.image_reliance import image_reliance

from tiny import tiny_world


@pytest.fixture
def world(tmp_path):
    return tiny_world(tmp_path / "world", n_images=7)


def test_swapped_images_change_the_loss_and_batches_weigh_by_token(tiny, world):
    model, processor = tiny
    whole = image_reliance(model, processor, world["data"], world["root"], batch_size=8)
    split = image_reliance(model, processor, world["data"], world["root"], batch_size=3)  # 3 + 4
    assert whole["records"] == split["records"] == 7  # the two-image and text-only records are left out
    assert whole["loss_own"] == pytest.approx(split["loss_own"], rel=1e-5)
    assert whole["gain"] != 0.0


def test_a_connector_blind_to_its_input_gains_nothing(tiny, world):
    model, processor = tiny
    last = [m for m in model.connector.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
    result = image_reliance(model, processor, world["data"], world["root"], limit=4, batch_size=4)
    assert result["records"] == 4
    assert result["gain"] == pytest.approx(0.0, abs=1e-6)


def test_errors_name_the_parameter_and_the_file(tiny, world, tmp_path):
    model, processor = tiny
    with pytest.raises(ValueError, match="batch_size"):
        image_reliance(model, processor, world["data"], world["root"], batch_size=1)
    with pytest.raises(ValueError, match="at least 2 single-image records"):
        image_reliance(model, processor, world["data"], world["root"], limit=1)
