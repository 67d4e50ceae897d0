"""Weight matching (Git Re-Basin): planted permutations are recovered, functions are unchanged."""

import pytest
import torch

from pipelines.errors import ConfigError
from pipelines.merging import merge
from pipelines.merging.alignment import permute_state, sequential_spec, weight_matching
from pipelines.models import build_model
from rounding import U32, assert_within

ZOO = [("mlp", (1, 8, 8)), ("cnn", (1, 8, 8)), ("cnn1d", (1, 40))]


def planted(spec, seed):
    generator = torch.Generator().manual_seed(seed)
    return {group: torch.randperm(size, generator=generator) for group, size in spec.sizes.items()}


def outputs(name, shape, state, x):
    """The model's outputs computed in float64: a permuted model then differs from the original only
    in the order of float64 sums (~1e-16 relative on outputs of order 1), so 1e-12 is far above that
    and far below a wrong permutation (order 1)."""
    model = build_model(name, shape, 10, seed=0).double()
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():
        return model(x.double())


def test_spec_of_the_cnn_groups_units_and_reads_the_flatten_in_blocks():
    spec = sequential_spec(build_model("cnn", (1, 8, 8), 10, seed=0).state_dict())
    assert spec.sizes == {"P0": 32, "P2": 64, "P5": 64, "P9": 128}
    assert spec.axes["2.weight"] == ((1, "P0", 1), (0, "P2", 1))
    assert spec.axes["9.weight"] == ((1, "P5", 16), (0, "P9", 1))  # 64 channels x 4x4 positions, flattened
    assert spec.axes["11.weight"] == ((1, "P9", 1),)  # the classes are never permuted
    assert "11.bias" not in spec.axes


@pytest.mark.parametrize(("name", "shape"), ZOO)
def test_a_planted_permutation_is_recovered_exactly_and_keeps_the_function(name, shape):
    reference = build_model(name, shape, 10, seed=3).state_dict()
    spec = sequential_spec(reference)
    permuted = permute_state(spec, reference, planted(spec, seed=11))
    assert any(not torch.equal(permuted[k], reference[k]) for k in reference)
    x = torch.randn(16, *shape, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(outputs(name, shape, permuted, x), outputs(name, shape, reference, x), rtol=0, atol=1e-12)
    aligned = permute_state(spec, permuted, weight_matching(spec, reference, permuted, seed=0))
    assert all(torch.equal(aligned[k], reference[k]) for k in reference)


def test_alignment_of_an_independent_model_keeps_its_function_and_brings_it_closer():
    name, shape = "mlp", (1, 8, 8)
    a, b = build_model(name, shape, 10, seed=1).state_dict(), build_model(name, shape, 10, seed=2).state_dict()
    spec = sequential_spec(a)
    perms = weight_matching(spec, a, b, seed=0)
    aligned = permute_state(spec, b, perms)
    x = torch.randn(16, *shape, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(outputs(name, shape, aligned, x), outputs(name, shape, b, x), rtol=0, atol=1e-12)

    def inner(state):
        return sum((a[k].double() * state[k].double()).sum() for k in a)

    assert inner(aligned) > inner(b)
    for group, perm in perms.items():
        assert sorted(perm.tolist()) == list(range(spec.sizes[group]))


def test_weight_matching_merge_averages_aligned_models():
    name, shape = "cnn1d", (1, 40)
    reference = build_model(name, shape, 10, seed=3).state_dict()
    spec = sequential_spec(reference)
    copies = [permute_state(spec, reference, planted(spec, seed)) for seed in (1, 2)]
    merged = merge("weight_matching", [reference, *copies])
    for key, tensor in reference.items():  # the mean of three equal values: two roundings at most
        assert_within(merged[key], tensor, 2 * U32 * tensor.abs().double())
    plain = merge("uniform_soup", [reference, *copies])
    assert not torch.allclose(plain["0.weight"], reference["0.weight"])  # without alignment, averaging blurs units


def test_weight_matching_refuses_models_that_are_not_chains():
    resnet = build_model("resnet18_cifar", (3, 32, 32), 10, seed=0).state_dict()
    with pytest.raises(ConfigError, match="aligns sequential models"):
        sequential_spec(resnet)
