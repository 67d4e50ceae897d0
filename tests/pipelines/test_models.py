import pytest
import torch

from pipelines.errors import DataError, UnknownNameError
from pipelines.models import MODELS, ModelCard, build_model, load_model, save_checkpoint
from pipelines.models.checkpoints import plain_state_dict

SHAPE = (1, 8, 8)
# parameter counts worked out by hand from the layer shapes
PARAMS = {
    "mlp": (64 * 256 + 256) + (256 * 256 + 256) + (256 * 10 + 10),
    "cnn": (1 * 32 * 9 + 32) + (32 * 64 * 9 + 64) + (64 * 64 * 9 + 64) + (64 * 16 * 128 + 128) + (128 * 10 + 10),
}


@pytest.mark.parametrize("name", MODELS.names())
def test_registry_models_forward_backward_and_init(name):
    model = build_model(name, SHAPE, 10, seed=3)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]
    x = torch.randn(5, *SHAPE)
    logits = model(x)
    assert logits.shape == (5, 10)
    logits.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    same = build_model(name, SHAPE, 10, seed=3)
    other = build_model(name, SHAPE, 10, seed=4)
    for (k, a), b, c in zip(model.state_dict().items(), same.state_dict().values(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
        assert not torch.equal(a, c), k


def test_init_matches_pytorch_default_scale():
    # Kaiming-uniform(a=sqrt(5)) gives bound 1/sqrt(fan_in) for weights, as for biases
    model = build_model("mlp", SHAPE, 10, seed=0)
    first = model[1]
    bound = 1 / 64**0.5
    assert first.weight.abs().max() <= bound and first.weight.abs().max() > 0.95 * bound
    assert first.bias.abs().max() <= bound


def test_unknown_model_and_bad_shapes():
    with pytest.raises(UnknownNameError, match="train.model"):
        build_model("vit", SHAPE, 10, seed=0)
    with pytest.raises(ValueError, match="cnn takes"):
        build_model("cnn", (40,), 10, seed=0)


def test_checkpoint_round_trip(tmp_path):
    model = build_model("cnn", SHAPE, 10, seed=1)
    card = ModelCard("cnn", SHAPE, 10, seed=1, info={"val_accuracy": 0.5})
    save_checkpoint(str(tmp_path / "ckpt"), plain_state_dict(model), card)
    loaded, loaded_card = load_model(str(tmp_path / "ckpt"))
    assert loaded_card == card
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    wrong = ModelCard("mlp", SHAPE, 10, seed=1)
    save_checkpoint(str(tmp_path / "wrong"), plain_state_dict(model), wrong)
    with pytest.raises(DataError, match="do not fit model 'mlp'"):
        load_model(str(tmp_path / "wrong"))
    with pytest.raises(DataError, match="no model card"):
        load_model(str(tmp_path / "missing"))
