import math

import pytest

from pipelines import storage
from pipelines.config import OptimParams
from pipelines.errors import MixpipeError
from pipelines.mixing import MixingSpec
from pipelines.models import ModelCard
from pipelines.training import TrainJob
from pipelines.tuning import grid, trial_job
from pipelines.tuning.sweep import RungResult, ledger_file, read_rung_result, rung_epochs, survivors


def test_grid_is_the_ordered_product_with_stable_names():
    points = grid(["mixup", "cutmix"], [0.2, 1.0])
    assert [p.name for p in points] == ["t00-mixup-a0.2", "t01-mixup-a1", "t02-cutmix-a0.2", "t03-cutmix-a1"]
    assert [(p.method, p.alpha) for p in points] == [("mixup", 0.2), ("mixup", 1.0), ("cutmix", 0.2), ("cutmix", 1.0)]


def test_trial_jobs_differ_only_in_mixing_seed_name_and_rung():
    template = TrainJob("tune-abc", ModelCard("cnn", (1, 8, 8), 10, 0), epochs=3, batch_size=16, optim=OptimParams(),
                        mixing=MixingSpec("none", 1.0, "elem", 0.5), seed=9, storage_path="/tmp/x", init_weights=b"w")
    first, second = (trial_job(template, p, "/tmp/x/tune-abc", 2) for p in grid(["cutmix"], [0.4, 2.0]))
    assert (first.run_name, first.storage_path) == ("t00-cutmix-a0.4", "/tmp/x/tune-abc")
    assert first.mixing == MixingSpec("cutmix", 0.4, "elem", 0.5)
    assert first.seed != second.seed != template.seed
    assert (first.epochs, first.stop_after_epoch, first.last_epoch, first.init_weights) == (3, 2, 2, b"w")
    assert first.params_key == "tune"


@pytest.mark.parametrize(
    ("epochs", "grace", "eta", "rungs"),
    [(4, 2, 2, [2, 4]), (2, 1, 2, [1, 2]), (27, 1, 3, [1, 3, 9, 27]), (10, 1, 3, [1, 3, 9, 10]), (5, 5, 2, [5])],
)
def test_rungs_are_grace_times_powers_of_eta_then_the_last_epoch(epochs, grace, eta, rungs):
    assert rung_epochs(epochs, grace, eta) == rungs


def test_rungs_reject_an_impossible_schedule():
    with pytest.raises(ValueError, match="grace_period <= epochs"):
        rung_epochs(2, 3, 2)


def result(name, score, loss=1.0):
    return RungResult(name, 2, score, loss, f"/ckpt/{name}")


def test_survivors_are_the_best_fraction_by_score_then_loss_then_name():
    results = [result("t00", 0.5), result("t01", 0.9), result("t02", 0.9, loss=0.5), result("t03", 0.7)]
    assert survivors(results, 2) == ["t02", "t01"]
    assert survivors(results, 3) == ["t02"]
    assert survivors(results, 4) == ["t02"]  # always at least one
    # the order the results arrive in does not matter: that is what makes the sweep deterministic
    assert survivors(list(reversed(results)), 2) == ["t02", "t01"]
    tied = [result("t01", 0.9), result("t00", 0.9)]
    assert survivors(tied, 2) == ["t00"]


def test_a_diverged_trial_ranks_last():
    results = [result("t00", math.nan, math.nan), result("t01", 0.1)]
    assert survivors(results, 2) == ["t01"]


def test_ledger_entries_round_trip_and_a_broken_one_is_a_clear_error(tmp_path):
    url = ledger_file(str(tmp_path), "t00-mixup-a0.2", 4)
    assert url.endswith("ledger/t00-mixup-a0.2-e004.json")
    assert read_rung_result(url) is None
    entry = RungResult("t00-mixup-a0.2", 4, 0.875, 0.4, "/ckpt")
    storage.write_json(url, entry.__dict__)
    assert read_rung_result(url) == entry
    storage.write_json(url, {"trial": "t00"})
    with pytest.raises(MixpipeError, match="not a sweep ledger entry"):
        read_rung_result(url)
