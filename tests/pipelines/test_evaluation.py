import math

import numpy as np
import pytest
import torch

from pipelines.evaluation import (
    NamedModel,
    accuracy,
    brier,
    evaluate_models,
    expected_calibration_error,
    nll,
    reliability,
)
from pipelines.models import build_model


def logits_for(probs):
    return torch.log(torch.tensor(probs, dtype=torch.float64))


def test_metrics_by_hand():
    logits = logits_for([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.25, 0.25, 0.5], [0.9, 0.05, 0.05]])
    y = torch.tensor([0, 2, 2, 1])
    assert accuracy(logits, y) == 0.5
    assert nll(logits, y) == pytest.approx(-(math.log(0.7) + math.log(0.3) + math.log(0.5) + math.log(0.05)) / 4)
    squared = [0.09 + 0.04 + 0.01, 0.01 + 0.36 + 0.49, 0.0625 + 0.0625 + 0.25, 0.81 + 0.9025 + 0.0025]
    assert brier(logits, y) == pytest.approx(sum(squared) / 4)
    # confidences 0.7, 0.6, 0.5, 0.9 fall in four different bins of 10:
    # |1 - 0.7| + |0 - 0.6| + |1 - 0.5| + |0 - 0.9| over 4
    assert expected_calibration_error(logits, y, bins=10) == pytest.approx((0.3 + 0.6 + 0.5 + 0.9) / 4)


def test_ece_bins_are_left_open():
    # with 15 bins, bin 5 is (5/15, 6/15] = (0.333, 0.4]: a confidence of exactly 0.4 belongs to it
    logits = logits_for([[0.4, 0.3, 0.3]])
    table = reliability(logits, torch.tensor([0]), bins=15)
    assert table.count.nonzero().flatten().tolist() == [5]
    assert table.upper[5].item() == pytest.approx(0.4)


def test_perfectly_calibrated_predictions_have_zero_ece():
    # 10 samples at confidence 0.8, 8 of them right
    logits = logits_for([[0.8, 0.2]] * 10)
    y = torch.tensor([0] * 8 + [1] * 2)
    assert expected_calibration_error(logits, y, bins=15) == pytest.approx(0.0, abs=1e-12)


def test_evaluate_models_gives_a_validated_table():
    x = np.random.default_rng(0).normal(size=(40, 1, 8, 8)).astype(np.float32)
    y = np.arange(40) % 10
    models = [NamedModel("a", "base", build_model("cnn", (1, 8, 8), 10, 0)), NamedModel("b", "merged", build_model("mlp", (1, 8, 8), 10, 0))]
    table, bins = evaluate_models(models, x, y, ece_bins=15, batch_size=16)
    assert table["model"].tolist() == ["a", "b"]
    assert table["num_samples"].tolist() == [40, 40]
    assert len(bins) == 30 and bins.groupby("model")["count"].sum().tolist() == [40, 40]
