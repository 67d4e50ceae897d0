"""Intervals and paired tests: golden values by hand, equivalence with the plain metrics, and
coverage in seeded simulations."""

import math

import numpy as np
import pytest
import torch

from pipelines.evaluation import expected_calibration_error, mcnemar_p, paired_p, wilson_interval
from pipelines.evaluation.metrics import classification_metrics, regression_metrics
from pipelines.evaluation.uncertainty import (
    SampleTerms,
    intervals,
    percentile_interval,
    resample_indices,
    resampled_metrics,
)
from pipelines.seeding import torch_generator


def test_wilson_interval_by_hand():
    # 8 of 10, z = 1.959964, z² = 3.841459: centre (0.8 + z²/20) / (1 + z²/10) = 0.716740, half-width
    # z * sqrt(0.016 + z²/400) / (1 + z²/10) = 0.226578, i.e. (0.4902, 0.9433) as tabulated (6 digits kept)
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.716740 - 0.226578, abs=2e-6) and hi == pytest.approx(0.716740 + 0.226578, abs=2e-6)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(11, 10)


def test_mcnemar_exact_by_hand():
    a = torch.tensor([1, 0, 0, 0, 0, 0, 1, 1], dtype=torch.bool)  # a right, b wrong once
    b = torch.tensor([0, 1, 1, 1, 1, 1, 1, 1], dtype=torch.bool)  # b right, a wrong five times
    # discordant 1 vs 5 of n = 6: p = 2 * (C(6,0) + C(6,1)) / 2^6 = 14 / 64
    assert mcnemar_p(a, b) == 14 / 64
    assert mcnemar_p(a, a) == 1.0
    # 0 vs 15 discordant: p = 2 * C(15,0) / 2^15
    assert mcnemar_p(torch.zeros(15, dtype=torch.bool), torch.ones(15, dtype=torch.bool)) == 2 / 2**15
    # thousands of discordant pairs: exact integers, no underflow to a wrong 0 or nan
    big = mcnemar_p(torch.arange(4000) < 1950, torch.arange(4000) >= 1950)
    assert 0 < big < 1 and math.isfinite(big)


def test_paired_bootstrap_p_by_hand():
    assert paired_p(torch.zeros(100)) == 1.0  # identical models
    assert paired_p(torch.tensor([1.0, 2.0, 3.0, -1.0])) == 0.8  # 2 * (min(1, 3) + 1) / (4 + 1)
    assert paired_p(torch.ones(50)) == 2 / 51  # every resample above 0: the smallest p 50 resamples can give


def _terms(n, seed, classes=4):
    g = torch_generator(seed)
    logits = torch.randn(n, classes, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, classes, (n,), generator=g)
    return logits, y


def test_resampled_metrics_on_the_identity_resample_equal_the_plain_metrics():
    logits, y = _terms(257, 0)
    terms = SampleTerms.of(logits, y, "classification", ece_bins=15)
    got = terms.metrics(torch.arange(257).unsqueeze(0))
    want = classification_metrics(logits, y, 15)
    # both float64; only the order of summation differs: rel 1e-12 is ~1e4 ulps of headroom
    for name in want:
        assert got[name].item() == pytest.approx(want[name], rel=1e-12, abs=1e-15), name
    assert got["ece"].item() == pytest.approx(expected_calibration_error(logits, y, 15), rel=1e-12)

    prediction = torch.randn(99, generator=torch_generator(1), dtype=torch.float64)
    target = prediction + torch.randn(99, generator=torch_generator(2), dtype=torch.float64)
    regression = SampleTerms.of(prediction, target, "regression", target_scale=3.0)
    got = regression.metrics(torch.arange(99).unsqueeze(0))
    for name, value in regression_metrics(prediction, target, scale=3.0).items():
        assert got[name].item() == pytest.approx(value, rel=1e-12), name


def test_resamples_are_seeded_and_shared():
    first, again, other = (resample_indices(50, 300, s) for s in (7, 7, 8))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], other[0])
    assert sum(len(c) for c in first) == 300 and all(c.shape[1] == 50 for c in first)


def test_wilson_interval_covers_the_true_accuracy_at_about_the_nominal_rate():
    rng = np.random.default_rng(20261201)
    p, n, draws = 0.9, 200, 200
    covered = sum(lo <= p <= hi for lo, hi in (wilson_interval(int(rng.binomial(n, p)), n) for _ in range(draws)))
    # Wilson's coverage at n=200, p=0.9 is ~0.95; 200 draws have a binomial sd of 1.5 points, so
    # [0.90, 0.98] is about +-3 sd around it
    assert 0.90 <= covered / draws <= 0.98


def test_bootstrap_interval_covers_the_true_mean_at_about_the_nominal_rate():
    g = torch_generator(20261201)
    n, draws, covered = 200, 200, 0
    for draw in range(draws):
        # per-sample losses ~ Exponential(1): the true mean loss is 1
        losses = -torch.log(torch.rand(n, generator=g, dtype=torch.float64))
        terms = SampleTerms("classification", {"correct": torch.ones(n, dtype=torch.float64), "nll": losses,
                                               "brier": losses, "confidence": torch.full((n,), 0.5, dtype=torch.float64),
                                               "bin": torch.zeros(n, dtype=torch.int64)})
        lo, hi = percentile_interval(resampled_metrics(terms, resample_indices(n, 1000, draw))["nll"])
        covered += lo <= 1.0 <= hi
    # the percentile bootstrap of a skewed mean at n=200 covers ~0.93-0.95; same +-3 sd band
    assert 0.90 <= covered / draws <= 0.98


def test_intervals_hold_their_point_and_shrink_with_more_samples():
    widths = []
    for n in (100, 1600):
        logits, y = _terms(n, 3)
        terms = SampleTerms.of(logits, y, "classification")
        bounds = intervals(terms, resampled_metrics(terms, resample_indices(n, 500, 0)))
        point = classification_metrics(logits, y)
        for name in ("accuracy", "nll", "brier"):
            assert bounds[f"{name}_lo"] <= point[name] <= bounds[f"{name}_hi"], name
        widths.append(bounds["accuracy_hi"] - bounds["accuracy_lo"])
    # the width goes as 1/sqrt(n): 16x the samples, about a quarter of the width
    assert widths[1] == pytest.approx(widths[0] / 4, rel=0.25)
