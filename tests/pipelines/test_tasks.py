"""Tasks, regression metrics, interpolation curves, peak memory and merge-search helpers."""

import numpy as np
import pytest
import torch

from pipelines.evaluation import HeldOutObjective, interpolation_curve, loss_barrier, regression_metrics
from pipelines.evaluation.interpolation import interpolate_states
from pipelines.memory import peak_rss_above_start
from pipelines.models import ModelCard, build_model
from pipelines.tasks import CLASSIFICATION, REGRESSION, get_task
from pipelines.merging.search import SearchPoint, best_point, grid_points


def test_validation_sums_add_up_across_ranks_to_the_whole_split():
    outputs = torch.tensor([[0.5], [2.0], [-1.0], [0.0]])
    y = torch.tensor([1.0, 2.0, -2.0, 1.0])
    whole = REGRESSION.loss_and_score(outputs, y)
    halves = [REGRESSION.validation_sums(outputs[s], y[s]) for s in (slice(0, 1), slice(1, 4))]
    assert REGRESSION.summarise([a + b for a, b in zip(*halves, strict=True)]) == pytest.approx(whole)
    # SSE 0.25 + 0 + 1 + 1 = 2.25; mean 0.5, SST 0.25 + 2.25 + 6.25 + 0.25 = 9
    assert whole == pytest.approx((2.25 / 4, 1 - 2.25 / 9))
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]], dtype=torch.float64)  # float64: a sum vs a mean, ~1e-16 apart
    loss, accuracy = CLASSIFICATION.summarise(CLASSIFICATION.validation_sums(logits, torch.tensor([0, 0, 0])))
    assert accuracy == pytest.approx(2 / 3)
    assert loss == pytest.approx(torch.nn.functional.cross_entropy(logits, torch.tensor([0, 0, 0])).item())
    assert get_task("regression").score_column == "val_r2"


def test_regression_metrics_in_target_units():
    prediction, y = torch.tensor([1.0, 2.0, 4.0]), torch.tensor([1.0, 3.0, 2.0])
    metrics = regression_metrics(prediction, y, scale=10.0)
    # errors 0, -1, 2 -> SSE 5, MSE 5/3; SST about the mean 2: 1 + 1 + 0 = 2
    assert metrics == pytest.approx({"r2": 1 - 5 / 2, "mse": 5 / 3 * 100, "rmse": (5 / 3) ** 0.5 * 10, "mae": 10.0})


def test_interpolation_curve_ends_at_the_two_models_and_barrier_is_measured_against_the_chord():
    card = ModelCard("mlp", (1, 4, 4), 3, seed=0)
    a, b = (build_model("mlp", (1, 4, 4), 3, seed=s).state_dict() for s in (1, 2))
    assert all(torch.equal(interpolate_states(a, b, 0.0)[k], a[k]) for k in a)
    assert all(torch.equal(interpolate_states(a, b, 1.0)[k], b[k]) for k in a)
    x = np.random.default_rng(0).normal(size=(30, 1, 4, 4)).astype(np.float32)
    y = np.arange(30) % 3
    curve = interpolation_curve(card, a, b, {"val": (x, y)}, points=25)
    assert list(curve.columns) == ["t", "val_loss", "val_accuracy"] and len(curve) == 25
    assert curve["t"].iloc[12] == 0.5
    objective = HeldOutObjective(card, x, y)
    assert (curve["val_accuracy"].iloc[0], curve["val_loss"].iloc[0]) == pytest.approx(objective(a))
    assert (curve["val_accuracy"].iloc[-1], curve["val_loss"].iloc[-1]) == pytest.approx(objective(b))
    t = np.linspace(0, 1, 5)
    assert loss_barrier(t, np.array([1.0, 2.0, 3.0, 2.5, 2.0])) == pytest.approx(3.0 - 1.5)
    assert loss_barrier(t, 1 + t) == pytest.approx(0.0)


def test_peak_memory_counts_what_the_block_allocates():
    with peak_rss_above_start() as small:
        pass
    with peak_rss_above_start() as large:
        block = np.ones(64 * 1024**2 // 8)  # 64 MiB, touched
        del block
    assert large.mib >= 60 and small.mib < 16


def test_grid_points_and_best_point():
    assert grid_points({"scale": [0.5, 1.0], "density": [0.1, 0.2]}) == [
        {"density": 0.1, "scale": 0.5}, {"density": 0.1, "scale": 1.0},
        {"density": 0.2, "scale": 0.5}, {"density": 0.2, "scale": 1.0},
    ]
    points = [SearchPoint({"s": 1}, 0.9, 0.3), SearchPoint({"s": 2}, 0.95, 0.4), SearchPoint({"s": 3}, 0.95, 0.2),
              SearchPoint({"s": 4}, 0.95, 0.2)]
    assert best_point(points).params == {"s": 3}  # best score, then lowest loss, then the first
