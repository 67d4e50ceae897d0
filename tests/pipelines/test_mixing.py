import math

import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from pipelines.errors import ConfigError, UnknownNameError
from pipelines.mixing import MIXERS, MixingSpec, get_mixer, mix, mixed_targets, smoothed_one_hot, soft_target_cross_entropy
from pipelines.mixing.boxes import random_boxes
from pipelines.mixing.sampling import beta_sample
from pipelines.seeding import torch_generator


def batch(b=16, shape=(3, 8, 8), seed=0):
    g = torch_generator(seed)
    return torch.randn(b, *shape, generator=g), torch.randint(0, 10, (b,), generator=g)


@pytest.mark.parametrize("name", MIXERS.names())
@pytest.mark.parametrize("mode", ["elem", "batch"])
@pytest.mark.parametrize("b", [1, 7, 16])
def test_contract_every_method(name, mode, b):
    x, y = batch(b)
    out = mix(name, x, y, generator=torch_generator(1), alpha=1.0, mode=mode, prob=1.0)
    assert out.x.shape == x.shape and out.x.dtype == x.dtype and out.x.device == x.device
    assert out.index.dtype == torch.int64 and sorted(out.index.tolist()) == list(range(b))
    assert out.lam.shape == (b,) and out.lam.dtype == torch.float32
    assert bool(((out.lam >= 0) & (out.lam <= 1)).all())
    again = mix(name, x, y, generator=torch_generator(1), alpha=1.0, mode=mode, prob=1.0)
    assert torch.equal(out.x, again.x) and torch.equal(out.lam, again.lam) and torch.equal(out.index, again.index)
    if mode == "batch":
        assert out.lam.unique().numel() == 1


@pytest.mark.parametrize("name", [n for n in MIXERS.names() if n != "none"])
def test_different_seeds_give_different_mixes(name):
    x, y = batch(32)
    a = mix(name, x, y, generator=torch_generator(1))
    b = mix(name, x, y, generator=torch_generator(2))
    assert not torch.equal(a.index, b.index)


@pytest.mark.parametrize("name", MIXERS.names())
def test_prob_zero_leaves_every_sample_alone(name):
    x, y = batch(16)
    out = mix(name, x, y, generator=torch_generator(3), prob=0.0)
    assert torch.equal(out.x, x)
    assert torch.equal(out.lam, torch.ones(16))


def test_mixup_is_the_convex_combination():
    x, y = batch(9)
    out = mix("mixup", x, y, generator=torch_generator(4), alpha=0.4)
    lam = out.lam.view(-1, 1, 1, 1)
    assert torch.equal(out.x, x * lam + x[out.index] * (1 - lam))


@pytest.mark.parametrize("shape", [(2, 40), (3, 8, 8), (1, 6, 5, 4)])
def test_cutmix_pixels_come_from_self_or_partner_and_lam_is_exact(shape):
    x, y = batch(64, shape, seed=5)
    out = mix("cutmix", x, y, generator=torch_generator(6), alpha=1.0)
    own = out.x == x
    partner = out.x == x[out.index]
    assert bool((own | partner).all())
    # the same spatial mask for every channel
    taken = (out.x != x)
    assert bool((taken == taken[:, :1]).all())
    spatial = math.prod(shape[1:])
    from_partner = (~own).any(dim=1).flatten(1).sum(1)
    distinct = (x != x[out.index]).any(dim=1).flatten(1).all(1)  # partner differs everywhere (not itself)
    expected = 1 - from_partner.double() / spatial
    assert torch.equal(out.lam[distinct], expected[distinct].float())
    assert (out.lam < 1).any() and (out.lam > 0).any()


def test_random_boxes_are_boxes():
    lam = torch.tensor([0.0, 0.25, 0.5, 1.0])
    boxes = random_boxes(lam, (16, 16), torch_generator(0))
    for mask in boxes:
        rows = mask.any(1).nonzero().flatten()
        cols = mask.any(0).nonzero().flatten()
        if rows.numel():
            # a filled rectangle: every row in the span covers the same column span
            assert mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()
            assert mask.sum() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert boxes[3].sum() == 0  # lam = 1: nothing cut
    assert boxes[0].sum() >= 64  # lam = 0: a 16x16 box centred anywhere keeps at least a quarter


@pytest.mark.parametrize("alpha", [0.2, 1.0, 2.0])
def test_lambda_follows_beta(alpha):
    draws = beta_sample(alpha, alpha, 20_000, torch_generator(11), dtype=torch.float64)
    assert stats.kstest(draws.numpy(), stats.beta(alpha, alpha).cdf).pvalue > 0.01
    # the float32 lambdas the mixers use are the same draws, rounded
    assert torch.equal(beta_sample(alpha, alpha, 20_000, torch_generator(11)), draws.float())


def test_elem_lambda_per_sample_and_prob_fraction():
    x, y = batch(4000, (1, 2, 2))
    out = mix("mixup", x, y, generator=torch_generator(12), alpha=1.0, prob=0.3)
    mixed = (out.lam < 1).double().mean().item()
    assert abs(mixed - 0.3) < 4 * math.sqrt(0.3 * 0.7 / 4000)
    assert out.lam[out.lam < 1].unique().numel() > 100


def test_soft_targets_sum_to_one_and_match_by_hand():
    y = torch.tensor([0, 2])
    x = torch.zeros(2, 1, 2, 2)
    out = mix("mixup", x, y, generator=torch_generator(0))
    targets = mixed_targets(y, out, num_classes=3, smoothing=0.3)
    assert torch.allclose(targets.sum(1), torch.ones(2))
    one_hot = smoothed_one_hot(torch.tensor([1]), 4, smoothing=0.2)
    assert torch.allclose(one_hot, torch.tensor([[0.05, 0.85, 0.05, 0.05]]))
    lam = out.lam[0].item()
    partner = y[out.index[0]].item()
    expected = lam * smoothed_one_hot(y[:1], 3, 0.3)[0] + (1 - lam) * smoothed_one_hot(torch.tensor([partner]), 3, 0.3)[0]
    assert torch.allclose(targets[0], expected)


def test_soft_target_cross_entropy_equals_ce_on_one_hot():
    logits = torch.randn(6, 5, generator=torch_generator(0))
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    assert torch.allclose(soft_target_cross_entropy(logits, F.one_hot(y, 5).float()), F.cross_entropy(logits, y))


def test_bad_parameters_name_the_key():
    with pytest.raises(ConfigError, match="mixing.alpha must be > 0, got -1"):
        get_mixer("mixup", alpha=-1)
    with pytest.raises(ConfigError, match="mixing.prob must be in"):
        get_mixer("cutmix", prob=2)
    with pytest.raises(ConfigError, match="does not take"):
        get_mixer("mixup", beta=3)
    with pytest.raises(UnknownNameError, match="known: cutmix, mixup, none"):
        get_mixer("fmixx")
    with pytest.raises(ValueError, match="1-3 spatial axes"):
        mix("cutmix", torch.zeros(4, 1), torch.zeros(4), generator=torch_generator(0))


def test_spec_builds_the_configured_mixer():
    mixer = MixingSpec("cutmix", alpha=0.5, mode="batch", prob=0.7).build()
    assert (type(mixer).name, mixer.alpha, mixer.mode, mixer.prob) == ("cutmix", 0.5, "batch", 0.7)


def test_no_global_rng_is_used():
    x, y = batch(8)
    state = torch.random.get_rng_state()
    for name in MIXERS.names():
        mix(name, x, y, generator=torch_generator(0))
    assert torch.equal(torch.random.get_rng_state(), state)
