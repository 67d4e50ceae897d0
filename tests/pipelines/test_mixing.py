import math

import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from pipelines.errors import ConfigError, UnknownNameError
from pipelines.mixing import (
    MIXERS,
    MixingSpec,
    base,
    decoupled_mixup_loss,
    get_mixer,
    mix,
    mixed_targets,
    mixup_ranking_loss,
    smoothed_one_hot,
    soft_target_cross_entropy,
)
from pipelines.mixing.boxes import box_masks, box_sides, box_volumes, uniform_centres
from pipelines.mixing.sampling import beta_sample
from pipelines.seeding import torch_generator
from rounding import U32, assert_within, lerp_bound


def batch(b=16, shape=(3, 8, 8), seed=0):
    g = torch_generator(seed)
    return torch.randn(b, *shape, generator=g), torch.randint(0, 10, (b,), generator=g)


@pytest.mark.parametrize("name", MIXERS.names())
@pytest.mark.parametrize("mode", ["elem", "batch"])
@pytest.mark.parametrize("b", [1, 7, 16])
@pytest.mark.parametrize("draws", ["stream", "tensor ops"])
def test_contract_every_method(name, mode, b, draws, monkeypatch):
    """Both ways of drawing: the seeded stream (CPU generators) and the tensor ops a GPU generator
    gets, here on CPU tensors."""
    if draws == "tensor ops":
        monkeypatch.setattr(base, "draws_from_stream", lambda generator: False)
    x, y = batch(b)
    out = mix(name, x, y, generator=torch_generator(1), alpha=1.0, mode=mode, prob=1.0)
    assert out.x.shape == x.shape and out.x.dtype == x.dtype and out.x.device == x.device
    assert out.index.dtype == torch.int64 and out.index.shape == (b,)
    if MIXERS.get(name).partners_are_a_permutation:
        assert sorted(out.index.tolist()) == list(range(b))
    else:
        assert bool(((out.index >= 0) & (out.index < b)).all())
    assert out.lam.shape == (b,) and out.lam.dtype == torch.float32
    assert bool(((out.lam >= 0) & (out.lam <= 1)).all())
    again = mix(name, x, y, generator=torch_generator(1), alpha=1.0, mode=mode, prob=1.0)
    assert torch.equal(out.x, again.x) and torch.equal(out.lam, again.lam) and torch.equal(out.index, again.index)
    if mode == "batch":
        drawn = get_mixer(name, mode="batch").draw(b, torch_generator(1), x.device).lam
        assert drawn.unique().numel() == 1
        if name == "saliencymix":  # one lambda, but each box sits at its partner's peak and clips there
            assert bool((out.lam >= drawn - 1e-6).all())
        else:
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
    lam, partner = out.lam.view(-1, 1, 1, 1).double(), x[out.index]
    assert_within(out.x, lam * x.double() + (1 - lam) * partner.double(), lerp_bound(x, partner))


def test_interpolation_is_exact_at_the_ends():
    from pipelines.mixing.base import interpolate

    x, partner = torch.randn(3, 2, 5, generator=torch_generator(0)), torch.randn(3, 2, 5, generator=torch_generator(1))
    out = interpolate(x, partner.clone(), torch.tensor([1.0, 0.0, 0.25]))
    assert torch.equal(out[0], x[0]) and torch.equal(out[1], partner[1])
    assert_within(out[2], 0.25 * x[2].double() + 0.75 * partner[2].double(), lerp_bound(x[2], partner[2]))


@pytest.mark.parametrize("name", ["cutmix", "fmix", "saliencymix"])
@pytest.mark.parametrize("shape", [(2, 40), (3, 8, 8), (1, 6, 5, 4)])
def test_mask_methods_take_each_element_from_self_or_partner_and_lam_is_exact(name, shape):
    x, y = batch(64, shape, seed=5)
    out = mix(name, x, y, generator=torch_generator(6), alpha=1.0)
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
    spots = torch.rand(4, 2, dtype=torch.float64, generator=torch_generator(0))
    sides, centres = box_sides(lam, (16, 16)), uniform_centres(spots, (16, 16))
    boxes = box_masks(sides, centres, (16, 16))
    assert box_volumes(sides, centres, (16, 16)).tolist() == boxes.flatten(1).sum(1).tolist()
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
    with pytest.raises(UnknownNameError, match="known: cmixup, cutmix, fmix, manifold_mixup, mixup, none, resizemix, saliencymix"):
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


def test_fmix_keeps_round_lambda_n_own_elements():
    x, y = batch(32, (3, 9, 7), seed=1)
    mixer = get_mixer("fmix", alpha=0.5)
    out = mixer(x, y, generator=torch_generator(2))
    counts = (out.lam.double() * 63).round()
    assert torch.equal(out.lam, (counts / 63).float())  # float32 of k / N for integer k
    # the same draws: lam_i was round(Beta draw * N) / N
    draws = mixer.draw(32, torch_generator(2), x.device, extra=mixer.extra_draws(x.shape))
    assert torch.equal(out.lam, (torch.round(draws.lam.double() * 63) / 63).float())


def test_fmix_masks_are_low_frequency():
    """Neighbouring positions agree far more often than in a random mask of the same size."""
    from pipelines.mixing.fourier import low_frequency_noise, rank_masks

    noise = low_frequency_noise(200, (32, 32), 3.0, torch_generator(0)).reshape(200, -1)
    own = torch.full((200,), 512)
    masks = rank_masks(noise, own, torch.zeros(200, dtype=torch.long)).reshape(200, 32, 32)
    shuffled = masks.flatten(1)[:, torch.randperm(1024, generator=torch_generator(1))].reshape(200, 32, 32)

    def boundary(m):
        return ((m[:, 1:] != m[:, :-1]).double().mean() + (m[:, :, 1:] != m[:, :, :-1]).double().mean()) / 2

    assert torch.equal(masks.flatten(1).sum(1), torch.full((200,), 512.0, dtype=masks.dtype))
    assert boundary(masks) < 0.2 * boundary(shuffled)


def test_fmix_soft_edges_blend_and_keep_the_mean():
    b = 16
    # float64 inputs: the mask comes back exactly; only its own float32 values and lam's float32
    # rounding remain, each off by at most U32 (mask values and lam are at most 1)
    x = torch.arange(1.0, b + 1, dtype=torch.float64).view(b, 1, 1, 1).expand(b, 1, 12, 12).contiguous()
    out = mix("fmix", x, torch.zeros(b), generator=torch_generator(4), alpha=1.0, max_soft=0.1)
    differs = out.index != torch.arange(b)
    partner = x[out.index]
    weight = (out.x - partner)[differs] / (x - partner)[differs]  # the mask, recovered
    assert bool(((weight >= -1e-6) & (weight <= 1 + 1e-6)).all())
    assert ((weight > 1e-6) & (weight < 1 - 1e-6)).any()  # some soft values
    assert_within(weight.flatten(1).mean(1), out.lam[differs], 2 * U32)


def test_fmix_parameters_are_checked():
    with pytest.raises(ConfigError, match="mixing.decay_power must be > 0, got 0"):
        get_mixer("fmix", decay_power=0)
    with pytest.raises(ConfigError, match="mixing.max_soft must be in \\[0, 0.5\\], got 0.7"):
        get_mixer("fmix", max_soft=0.7)


@pytest.mark.parametrize("shape", [(2, 40), (3, 12, 10), (1, 6, 8, 10)])
def test_resizemix_pastes_the_resized_partner_and_keeps_the_rest(shape):
    x, y = batch(12, shape, seed=8)
    out = mix("resizemix", x, y, generator=torch_generator(9), alpha=1.0, scope=(0.3, 0.7))
    spatial = shape[1:]
    size = math.prod(spatial)
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(spatial)]
    for i in range(12):
        taken = (out.x[i] != x[i]).any(0)
        where = taken.nonzero()
        if out.index[i] == i or where.numel() == 0:
            continue
        low, high = where.min(0).values, where.max(0).values + 1
        box = tuple(slice(int(a), int(b)) for a, b in zip(low, high, strict=True))
        region = torch.zeros_like(taken)
        region[box] = True
        assert torch.equal(out.x[i][:, ~region], x[i][:, ~region])  # outside the box: own values
        assert out.lam[i] == pytest.approx(1 - region.sum().item() / size)
        expected = F.interpolate(x[out.index[i]].unsqueeze(0), size=tuple((high - low).tolist()), mode=mode,
                                 align_corners=False)[0]
        # float32 sampling grids: ~1e-5 off F.interpolate; a wrong mapping is off by O(1)
        torch.testing.assert_close(out.x[i][(slice(None), *box)], expected, rtol=1e-4, atol=1e-4)


def test_resizemix_scale_stays_in_scope():
    x, y = batch(500, (1, 20, 20), seed=3)
    out = mix("resizemix", x, y, generator=torch_generator(5), scope=(0.2, 0.5))
    area = 1 - out.lam
    assert area.min() >= 0.2**2 - 0.01 and area.max() <= 0.5**2 + 0.03
    with pytest.raises(ConfigError, match="mixing.scope must satisfy"):
        get_mixer("resizemix", scope=(0.5, 0.2))


def test_saliency_peak_finds_a_planted_blob():
    from pipelines.mixing.saliency import saliency_peaks

    x = torch.zeros(3, 3, 32, 32) + 0.01 * torch.randn(3, 3, 32, 32, generator=torch_generator(0))
    spots = [(5, 7), (20, 25), (28, 3)]
    for i, (r, c) in enumerate(spots):
        x[i, :, r - 1 : r + 2, c - 1 : c + 2] += 1.0
    peaks = saliency_peaks(x)
    for (r, c), peak in zip(spots, peaks.tolist(), strict=True):
        assert abs(peak[0] - r) <= 2 and abs(peak[1] - c) <= 2


def test_saliencymix_centres_the_box_on_the_partner_peak():
    from pipelines.mixing.saliency import saliency_peaks

    x, y = batch(16, (3, 24, 24), seed=2)
    x[:, :, 4:7, 15:18] += 3.0  # every image's salient spot
    out = mix("saliencymix", x, y, generator=torch_generator(3), alpha=1.0)
    peaks = saliency_peaks(x[out.index])
    for i in range(16):
        taken = (out.x[i] != x[i]).any(0)
        if taken.any():
            assert taken[tuple(peaks[i].tolist())]  # the partner's peak lies inside the pasted box


def test_decoupled_loss_with_eta_zero_is_the_mixup_cross_entropy():
    x, y = batch(32)
    out = mix("mixup", x, y, generator=torch_generator(1))
    logits = torch.randn(32, 10, generator=torch_generator(2))
    plain = soft_target_cross_entropy(logits, mixed_targets(y, out, 10))
    assert torch.equal(decoupled_mixup_loss(logits, y, out, 10, eta=0.0), plain)


def test_decoupled_regulariser_by_hand():
    logits = torch.tensor([[2.0, 0.5, -1.0, 0.0], [0.3, 0.3, 0.3, 0.3], [1.0, 2.0, 3.0, 4.0]])
    y = torch.tensor([0, 2, 0])
    from pipelines.mixing import MixOutput

    # sample 0 mixes classes 0 and 2; sample 1 mixes 2 and 0; sample 2 is paired with itself
    out = MixOutput(x=torch.zeros(3), index=torch.tensor([1, 0, 2]), lam=torch.tensor([0.7, 0.4, 0.6]))
    eta = 0.5

    def log_softmax_without(row, keep, drop):
        others = [k for k in range(4) if k != drop]
        return logits[row, keep] - torch.logsumexp(logits[row, others], 0)

    expected = []
    for row, (a, b, lam) in enumerate([(0, 2, 0.7), (2, 0, 0.4), (0, 0, 0.6)]):
        ce = -(lam * torch.log_softmax(logits[row], 0)[a] + (1 - lam) * torch.log_softmax(logits[row], 0)[b])
        extra = 0.0 if a == b else -(log_softmax_without(row, a, b) + log_softmax_without(row, b, a))
        expected.append(ce + eta * extra)
    assert torch.allclose(decoupled_mixup_loss(logits, y, out, 4, eta=eta), torch.stack(expected).mean())


def test_ranking_loss_penalises_overconfident_mixed_samples():
    clean = torch.tensor([[4.0, 0.0], [0.0, 0.0]])  # confidences ~0.982 and 0.5
    calm = torch.tensor([[0.0, 0.0], [0.0, 0.0]])  # 0.5 each
    assert mixup_ranking_loss(calm, clean, margin=0.0).item() == 0.0  # sample 1: 0.5 - 0.5 = 0
    loud = torch.tensor([[9.0, 0.0], [3.0, 0.0]])
    conf = torch.softmax(loud, -1).max(-1).values
    clean_conf = torch.softmax(clean, -1).max(-1).values
    expected = torch.relu(conf - clean_conf + 0.1).mean()
    assert mixup_ranking_loss(loud, clean, margin=0.1) == pytest.approx(expected.item())
    assert expected > 0


def test_mixture_per_sample_takes_each_sample_from_its_pick():
    from pipelines.mixing import mixture

    x, y = batch(400, (1, 6, 6), seed=4)
    combined = mixture({"mixup": 1.0, "cutmix": 3.0}, per="elem", params={"mixup": {"alpha": 0.5}})
    out = combined(x, y, generator=torch_generator(7))
    assert sorted(out.index.tolist()) == list(range(400))
    partner = x[out.index]
    self_or_partner = ((out.x == x) | (out.x == partner)).flatten(1).all(1)  # cutmix rows
    assert 0.65 < self_or_partner.double().mean().item() < 0.85  # about 3 in 4 are cutmix
    again = combined(x, y, generator=torch_generator(7))
    assert torch.equal(out.x, again.x) and torch.equal(out.lam, again.lam)
    # mixup rows follow the mixup formula with their own lambda
    rows = ~self_or_partner
    lam = out.lam[rows].view(-1, 1, 1, 1)
    assert torch.allclose(out.x[rows], x[rows] * lam + partner[rows] * (1 - lam))


def test_mixture_per_batch_uses_one_method():
    from pipelines.mixing import mixture

    x, y = batch(64, (1, 6, 6))
    for seed in range(6):
        out = mixture({"mixup": 1.0, "cutmix": 1.0}, per="batch")(x, y, generator=torch_generator(seed))
        cut = ((out.x == x) | (out.x == x[out.index])).flatten(1).all(1)
        assert bool(cut.all()) or int(cut.sum()) <= 2  # all cutmix, or mixup (rare exact ties aside)


def test_mixture_can_leave_samples_unmixed():
    from pipelines.mixing import mixture

    x, y = batch(200, (1, 4, 4))
    out = mixture({"none": 1.0, "mixup": 1.0})(x, y, generator=torch_generator(5))
    kept = out.lam == 1
    assert 60 < int(kept.sum()) < 140
    assert torch.equal(out.x[kept], x[kept])


def test_mixture_errors():
    from pipelines.mixing import mixture

    with pytest.raises(ConfigError, match="weights must be >= 0"):
        mixture({"mixup": -1.0, "cutmix": 1.0})
    with pytest.raises(ConfigError, match="not in the mixture: \\['fmix'\\]"):
        mixture({"mixup": 1.0}, params={"fmix": {}})
    with pytest.raises(UnknownNameError):
        mixture({"mixupp": 1.0})


def test_cmixup_mixes_inputs_and_targets_with_near_partners():
    y = torch.cat([torch.zeros(50), torch.full((50,), 100.0)]) + torch.rand(100, generator=torch_generator(0))
    x = torch.randn(100, 2, 8, generator=torch_generator(1))
    out = mix("cmixup", x, y, generator=torch_generator(2), alpha=1.0, bandwidth=1.0)
    assert out.y is not None and out.y.shape == y.shape
    assert bool(((out.index < 50) == (torch.arange(100) < 50)).all())  # partners from the same cluster
    assert bool((out.index != torch.arange(100)).all())  # never itself
    lam = out.lam.double()
    assert_within(out.y, lam * y.double() + (1 - lam) * y[out.index].double(), lerp_bound(y, y[out.index]))
    lam = lam.view(-1, 1, 1)
    assert_within(out.x, lam * x.double() + (1 - lam) * x[out.index].double(), lerp_bound(x, x[out.index]))


def test_cmixup_wide_kernel_is_close_to_uniform():
    from pipelines.mixing.regression import label_kernel_partners

    y = torch.linspace(0, 1, 8)
    counts = torch.zeros(8, 8)
    generator = torch_generator(3)
    for _ in range(2000):
        partners = label_kernel_partners(y, 1e3, generator)
        counts[torch.arange(8), partners] += 1
    off_diagonal = counts[~torch.eye(8, dtype=torch.bool)]
    assert counts.diagonal().sum() == 0
    assert stats.chisquare(off_diagonal.numpy()).pvalue > 0.001
    with pytest.raises(ConfigError, match="mixing.bandwidth must be > 0"):
        get_mixer("cmixup", bandwidth=0)


def test_cutmix_minmax_draws_sides_in_range_and_keeps_boxes_inside():
    x, y = batch(300, (1, 16, 12), seed=6)
    out = mix("cutmix", x, y, generator=torch_generator(8), cutmix_minmax=(0.25, 0.5))
    taken = (out.x != x).any(1)  # [B, 16, 12]
    sides = []
    for i in range(300):
        if out.index[i] == i:
            continue
        rows, cols = taken[i].any(1).nonzero().flatten(), taken[i].any(0).nonzero().flatten()
        height, width = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
        assert 4 <= height <= 8 and 3 <= width <= 6  # floor(16 * [0.25, 0.5]), floor(12 * [0.25, 0.5])
        assert out.lam[i] == pytest.approx(1 - height * width / 192)  # never clipped
        sides.append((height, width))
    assert {h for h, _ in sides} == set(range(4, 9)) and {w for _, w in sides} == set(range(3, 7))
    with pytest.raises(ConfigError, match="mixing.cutmix_minmax must satisfy"):
        get_mixer("cutmix", cutmix_minmax=(0.6, 0.3))


def test_manifold_mixup_mixes_the_drawn_hidden_layer():
    from pipelines.mixing import mixing_hidden
    from pipelines.models import build_model, mix_points

    model = build_model("mlp", (1, 4, 4), 5, seed=0)
    points = mix_points(model)
    assert sorted(points) == ["hidden1", "hidden2"]
    x, y = batch(12, (1, 4, 4), seed=2)
    mixer = get_mixer("manifold_mixup", alpha=1.0, layers=["input", "hidden1", "hidden2"])
    picked = {}
    for seed in range(40):
        out = mixer(x, y, generator=torch_generator(seed))
        picked.setdefault(out.layer, out)
    assert set(picked) == {None, "hidden1", "hidden2"}  # every mix point gets drawn; input mixes x itself
    at_input = picked[None]
    lam4, partner = at_input.lam.view(-1, 1, 1, 1).double(), x[at_input.index]
    assert_within(at_input.x, lam4 * x.double() + (1 - lam4) * partner.double(), lerp_bound(x, partner))
    out = picked["hidden1"]
    assert torch.equal(out.x, x)
    model, x64 = model.double(), x.double()  # float64: the hook and the hand-mixed forward agree to ~1e-15
    with torch.no_grad():
        h = model[:3](x64)  # output of the hidden1 point (first ReLU)
        lam = out.lam.view(-1, 1).double()
        expected = model[3:](lam * h + (1 - lam) * h[out.index])
        with mixing_hidden(points, replace_x(out, x64)):
            logits = model(x64)
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-12)
    with torch.no_grad():
        assert not torch.allclose(model(x64), logits)  # the hook is gone after the block
    with pytest.raises(ConfigError, match="no mix point 'conv9'"), mixing_hidden(points, replace_layer(out, "conv9")):
        pass
    with pytest.raises(ConfigError, match="cannot be part of a mixture"):
        from pipelines.mixing import mixture

        mixture({"mixup": 1.0, "manifold_mixup": 1.0})


def replace_layer(out, layer):
    from dataclasses import replace

    return replace(out, layer=layer)


def replace_x(out, x):
    from dataclasses import replace

    return replace(out, x=x)


def test_loss_registry_values():
    from pipelines.mixing import LOSSES, get_loss

    assert LOSSES.names() == ["decoupled", "mse", "rankmixup", "soft_ce"]
    x, y = batch(32, (2, 4, 4), seed=8)
    out = mix("mixup", x, y, generator=torch_generator(1), alpha=1.0)
    # float64 logits: the registry's loss and the hand-built sum differ only in float64 rounding (~1e-15)
    logits = torch.randn(32, 10, generator=torch_generator(2), dtype=torch.float64)
    clean = torch.randn(32, 10, generator=torch_generator(3), dtype=torch.float64)
    pair = (logits, y, y[out.index], out.lam)
    soft = get_loss("soft_ce")(*pair, num_classes=10, smoothing=0.1)
    assert torch.equal(soft, soft_target_cross_entropy(logits, mixed_targets(y, out, 10, 0.1)))
    assert torch.equal(get_loss("decoupled", eta=0.0)(*pair, num_classes=10), get_loss("soft_ce")(*pair, num_classes=10))
    assert torch.equal(get_loss("decoupled", eta=0.3)(*pair, num_classes=10), decoupled_mixup_loss(logits, y, out, 10, eta=0.3))
    rank = get_loss("rankmixup", margin=0.2, weight=0.5)
    assert rank.needs_clean and not get_loss("soft_ce").needs_clean
    expected = F.cross_entropy(clean, y) + 0.5 * mixup_ranking_loss(logits, clean, margin=0.2)
    torch.testing.assert_close(rank(*pair, num_classes=10, clean_logits=clean), expected, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="clean inputs"):
        rank(*pair, num_classes=10)
    with pytest.raises(ConfigError, match="mixing.loss_options: mixing loss 'rankmixup' does not take"):
        get_loss("rankmixup", eta=1.0)


def test_mse_loss_is_against_the_interpolated_target_and_checks_the_task():
    from pipelines.errors import ConfigError
    from pipelines.mixing import check_loss_task, get_loss

    y = torch.tensor([1.0, -2.0, 0.5])
    partner = torch.tensor([3.0, 2.0, 0.5])
    lam = torch.tensor([0.25, 1.0, 0.5])
    outputs = torch.tensor([[2.0], [-2.0], [1.5]])
    # targets: 0.25*1 + 0.75*3 = 2.5; -2; 0.5 -> squared errors 0.25, 0, 1
    loss = get_loss("mse")(outputs, y, partner, lam, num_classes=1)
    assert loss.item() == pytest.approx((0.25 + 0.0 + 1.0) / 3)
    # the same gradient as the lam-weighted pair of MSEs
    f = outputs.clone().requires_grad_()
    get_loss("mse")(f, y, partner, lam, num_classes=1).backward()
    g = outputs.clone().requires_grad_()
    (lam * (g[:, 0] - y) ** 2 + (1 - lam) * (g[:, 0] - partner) ** 2).mean().backward()
    assert torch.allclose(f.grad, g.grad)
    with pytest.raises(ConfigError, match=r"'soft_ce' is a classification loss .* use one of \['mse'\]"):
        check_loss_task(get_loss("soft_ce"), "soft_ce", "regression")
    with pytest.raises(ConfigError, match="label_smoothing must be 0 for regression"):
        check_loss_task(get_loss("mse"), "mse", "regression", smoothing=0.1)


def test_a_bf16_hidden_mix_uses_the_float32_lambda_and_rounds_once():
    """Under autocast a hidden layer's output is bf16. Mixed with a bf16 λ, an activation is off
    from the exact ``λh + (1-λ)h'`` by λ's own rounding (up to 2^-9 |h - h'|, λ in [0, 1]) plus the
    output's; taken in float32 and rounded once, it is off by the output's rounding (half a bf16
    ulp: 2^-8 relative, 8 significant bits) plus float32 lerp's error (a few float32 ulps of
    |h| + |h'|; 2^-21 of it is ample)."""
    from pipelines.mixing.base import broadcast_per_sample, interpolate

    generator = torch.Generator().manual_seed(0)
    h = torch.randn(64, 32, generator=generator).bfloat16()
    partner = torch.randn(64, 32, generator=generator).bfloat16()
    lam = torch.rand(64, generator=generator)
    exact = torch.lerp(partner.double(), h.double(), broadcast_per_sample(lam.double(), h))
    mixed = interpolate(h, partner.clone(), lam)
    assert mixed.dtype == torch.bfloat16
    bound = exact.abs() * 2.0**-8 + (h.double().abs() + partner.double().abs()) * 2.0**-21
    assert bool(((mixed.double() - exact).abs() <= bound).all())
    rounded_lam = partner.clone().lerp_(h, broadcast_per_sample(lam.bfloat16(), h))
    assert int(((rounded_lam.double() - exact).abs() > bound).sum()) > 100  # of 2048


def test_fmix_bank_masks_are_distributed_as_fresh_ones():
    """A bank field shifted and mirrored at random is a fresh FMix field in distribution. The
    masks' boundary lengths without wrap-around (a shape statistic that a shift does change) from
    a bank and from fresh noise are one distribution by a two-sample KS test (2000 masks from 1024
    fields: nearly independent draws); one field alone, shifted and mirrored, gives hundreds of
    distinct masks, each a permutation of the ranks."""
    from pipelines.mixing.fourier import descending_ranks, draw_shifts, low_frequency_noise, rank_bank, shifted_ranks

    spatial, n, own = (16, 16), 2000, 128

    def boundaries(rank):
        masks = (rank < own).reshape(-1, *spatial)
        return ((masks[:, 1:] != masks[:, :-1]).sum((1, 2)) + (masks[:, :, 1:] != masks[:, :, :-1]).sum((1, 2))).numpy()

    def picks(count, seed):
        return torch.rand(count, 1 + 2 * len(spatial), dtype=torch.float64, generator=torch_generator(seed))

    banked = shifted_ranks(rank_bank(spatial, 3.0, 1024), spatial, *draw_shifts(1024, spatial, picks(n, 4)))
    fresh = descending_ranks(low_frequency_noise(n, spatial, 3.0, torch_generator(5)).reshape(n, -1))
    assert stats.ks_2samp(boundaries(banked), boundaries(fresh)).pvalue > 0.01
    one = shifted_ranks(rank_bank(spatial, 3.0, 1), spatial, *draw_shifts(1, spatial, picks(1000, 6)))
    assert one.unique(dim=0).shape[0] > 500  # of 16 x 16 shifts x 4 mirrorings = 1024
    assert torch.equal(one.sort(1).values, torch.arange(256).expand(1000, 256))


def test_fmix_without_a_bank_draws_fresh_noise_and_both_keep_exact_counts():
    x, y = batch(16, (3, 8, 8), seed=2)
    for bank_size in (0, 32):
        out = get_mixer("fmix", alpha=1.0, bank_size=bank_size)(x, y, generator=torch_generator(3))
        own = (out.x == x).all(1).flatten(1).sum(1)
        distinct = (x != x[out.index]).any(dim=1).flatten(1).all(1)
        assert torch.equal(own[distinct].double() / 64, out.lam[distinct].double())
    with pytest.raises(ConfigError, match="bank_size"):
        get_mixer("fmix", bank_size=-2)
