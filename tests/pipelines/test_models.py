import pytest
import torch

from pipelines.errors import DataError, UnknownNameError
from pipelines.models import MODELS, ModelCard, build_model, load_model, save_checkpoint
from pipelines.models.checkpoints import plain_state_dict

SHAPE = (1, 8, 8)
SHAPES = {"cnn1d": (1, 40), "resnet18_cifar": (3, 32, 32)}


def _resnet18_cifar_params(classes: int) -> int:
    def bn(c):
        return 2 * c

    def block(cin, c):
        shortcut = cin * c + bn(c) if cin != c else 0
        return cin * c * 9 + bn(c) + c * c * 9 + bn(c) + shortcut

    widths = [64, 128, 256, 512]
    total = 3 * 64 * 9 + bn(64)
    cin = 64
    for c in widths:
        total += block(cin, c) + block(c, c)
        cin = c
    return total + 512 * classes + classes


# parameter counts worked out from the layer shapes
PARAMS = {
    "mlp": (64 * 256 + 256) + (256 * 256 + 256) + (256 * 10 + 10),
    "cnn": (1 * 32 * 9 + 32) + (32 * 64 * 9 + 64) + (64 * 64 * 9 + 64) + (64 * 16 * 128 + 128) + (128 * 10 + 10),
    "cnn1d": (1 * 32 * 5 + 32) + 2 * (32 * 32 * 3 + 32) + (32 * 5 * 10 + 10),  # 40 -> 19 -> 10 -> 5 points
    "resnet18_cifar": _resnet18_cifar_params(10),
}
MIX_POINTS = {
    "mlp": {"hidden1": (256,), "hidden2": (256,)},
    "cnn": {"conv1": (32, 8, 8), "pool": (64, 4, 4), "conv3": (64, 4, 4), "fc": (128,)},
    "cnn1d": {"conv1": (32, 19), "conv2": (32, 10), "conv3": (32, 5)},
    "resnet18_cifar": {"stem": (64, 32, 32), "layer1": (64, 32, 32), "layer2": (128, 16, 16), "layer3": (256, 8, 8)},
}


@pytest.mark.parametrize("name", MODELS.names())
def test_registry_models_forward_backward_and_init(name):
    shape = SHAPES.get(name, SHAPE)
    model = build_model(name, shape, 10, seed=3)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]
    x = torch.randn(5, *shape)
    logits = model(x)
    assert logits.shape == (5, 10)
    logits.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    fresh, same, other = (build_model(name, shape, 10, seed=s).state_dict() for s in (3, 3, 4))
    for key, tensor in fresh.items():
        assert torch.equal(tensor, same[key]), key
        if tensor.ndim >= 2:  # conv and linear weights follow the seed; batch norm starts constant
            assert not torch.equal(tensor, other[key]), key


@pytest.mark.parametrize("name", MODELS.names())
def test_registry_models_expose_mix_points(name):
    from pipelines.models import mix_points

    shape = SHAPES.get(name, SHAPE)
    model = build_model(name, shape, 10, seed=0).eval()
    points = mix_points(model)
    assert {n: None for n in points} == {n: None for n in MIX_POINTS[name]}
    seen = {}
    handles = [m.register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, tuple(o.shape[1:]))) for n, m in points.items()]
    model(torch.randn(2, *shape))
    for handle in handles:
        handle.remove()
    assert seen == MIX_POINTS[name]


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


def test_weights_load_in_name_order_whatever_the_file_order(tmp_path):
    """safetensors hands tensors back in an order that changes between processes; a merge over the
    whole model (PCB) would then differ from run to run in its last bits."""
    from pipelines.models.checkpoints import load_state_dict, state_dict_bytes

    names = ["layer2.10.weight", "fc.bias", "0.weight", "10.bias", "2.bias", "layer2.9.bias", "0.bias"]
    path = tmp_path / "model.safetensors"
    path.write_bytes(state_dict_bytes({n: torch.zeros(1) for n in names}))
    assert list(load_state_dict(str(path))) == [
        "0.bias", "0.weight", "2.bias", "10.bias", "fc.bias", "layer2.9.bias", "layer2.10.weight",
    ]
