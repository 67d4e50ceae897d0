"""The library's Ray paths against one local Ray instance shared by the module."""

from __future__ import annotations

import tempfile

import numpy as np
import pytest
import torch

from pipelines.augmentation import build_shards, mix_shard, shard_seed
from pipelines.cluster import ray_session
from pipelines.config import OptimParams
from pipelines.data import contiguous_share, load_dataset, normalise, channel_stats, stratified_split
from pipelines.mixing import MixingSpec
from pipelines.models import ModelCard
from pipelines.training import TrainJob, run_training
from pipelines.tuning import grid, run_sweep

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ray_local():
    with ray_session(num_cpus=2, temp_dir=tempfile.mkdtemp(prefix="mp-ray-", dir="/tmp")) as connection:
        yield connection


@pytest.fixture(scope="module")
def splits():
    data = stratified_split(load_dataset("digits"), 0.15, 0.15, seed=0)
    mean, std = channel_stats(data.train)
    return normalise(data.train, mean, std), normalise(data.val, mean, std)


def job(storage, name, **changes):
    settings = dict(
        run_name=name, card=ModelCard("cnn", (1, 8, 8), 10, seed=1), epochs=2, batch_size=32,
        optim=OptimParams(lr=0.05, warmup_epochs=0), mixing=MixingSpec("mixup", alpha=0.4), seed=3,
        storage_path=str(storage), num_workers=2, cpus_per_worker=1.0, use_gpu="auto",
    )
    return TrainJob(**{**settings, **changes})


def test_local_instance_is_loopback_only(ray_local):
    import ray

    assert ray_local.started_local and ray_local.cpus == 2 and ray_local.nodes == 1
    assert {node["NodeManagerAddress"] for node in ray.nodes()} == {"127.0.0.1"}


def test_shard_tasks_write_what_the_direct_path_writes(ray_local, splits):
    train, _ = splits
    spec = MixingSpec("cutmix", alpha=1.0)
    shards = build_shards(train, spec, num_shards=3, seed=5)
    assert [s.rows for s in shards] == [420, 420, 419]
    for i, shard in enumerate(shards):
        part = train.subset(np.arange(len(train))[contiguous_share(len(train), 3, i)])
        assert shard.seed == shard_seed(5, "cutmix", i)
        assert shard.data == mix_shard(part, spec, shard.seed)


def test_two_workers_at_b_match_one_worker_at_2b(ray_local, splits, tmp_path):
    """Same seed, same data order, mixing off: only float32 summation order differs.

    At a moderate learning rate the trajectories agree to ~1e-6 (measured); a large one makes
    training chaotic enough to amplify rounding, which is not what this test is about.
    """
    train, val = splits
    settings = {"mixing": MixingSpec("none"), "optim": OptimParams(lr=0.02, warmup_epochs=0)}
    two = run_training(job(tmp_path, "ddp2", batch_size=16, num_workers=2, **settings), train, val)
    one = run_training(job(tmp_path, "ddp1", batch_size=32, num_workers=1, **settings), train, val)
    assert [r["world_size"] for r in two.history] == [2, 2] and [r["world_size"] for r in one.history] == [1, 1]
    for a, b in zip(two.history, one.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
    # Weights drift a little further than losses: a rounding-level difference can flip which input
    # wins a max-pool, routing that gradient elsewhere. A real sharding or averaging bug shows at ~1e-2.
    for key, tensor in one.state_dict.items():
        torch.testing.assert_close(two.state_dict[key], tensor, rtol=0, atol=1e-4)


def test_a_killed_worker_resumes_from_the_last_checkpoint_and_a_stopped_run_resumes_exactly(ray_local, splits, tmp_path):
    """Fault drill: the rank-0 worker SIGKILLs itself after epoch 2 of 3.

    With ``max_failures=1`` Ray Train restarts the group from the last checkpoint; with 0 the run
    stops, and running it again under the same name resumes it. All randomness is derived from
    (seed, rank, epoch, step) and the optimizer state is checkpointed, so both end on exactly the
    weights of an uninterrupted run (so independent runs of the same job are deterministic), and a
    finished run asked for again returns its checkpoint without training.
    """
    import ray.train

    train, val = splits
    full = run_training(job(tmp_path, "full", epochs=3), train, val)
    assert {r["world_size"] for r in full.history} == {2} and full.history[-1]["val_accuracy"] > 0.5
    again = run_training(job(tmp_path, "full", epochs=3), train, val)
    assert again.history == full.history
    assert all(torch.equal(t, again.state_dict[k]) for k, t in full.state_dict.items())
    killed = run_training(job(tmp_path, "killed", epochs=3, max_failures=1, crash_after_epoch=2), train, val)
    epochs = [r["epoch"] for r in killed.history]
    attempts = [r["attempt"] for r in killed.history]
    assert epochs == [1, 2, 3] and attempts[0] == 0 and attempts[-1] == 1 and attempts == sorted(attempts)
    assert attempts.index(1) in (1, 2)  # resumed from epoch 1 or 2: redid at most the epoch it was killed after
    with pytest.raises(ray.train.TrainingFailedError):
        run_training(job(tmp_path, "stopped", epochs=3, max_failures=0, crash_after_epoch=2), train, val)
    resumed = run_training(job(tmp_path, "stopped", epochs=3, max_failures=0), train, val)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3] and resumed.history[-1]["attempt"] == 1
    for outcome in (killed, resumed):
        for key, tensor in full.state_dict.items():
            assert torch.equal(tensor, outcome.state_dict[key]), key


def test_manifold_mixup_with_rankmixup_trains_under_ddp(ray_local, splits, tmp_path):
    """Hidden-layer mixing and the clean+mixed forward of RankMixup under two DDP workers: one
    forward per backward, so DDP's gradient hooks fire once per parameter and step."""
    train, val = splits
    spec = MixingSpec("manifold_mixup", alpha=1.0, options=(("layers", ("input", "conv1", "pool")),),
                      loss="rankmixup", loss_options=(("weight", 0.5),))
    outcome = run_training(job(tmp_path, "manifold", mixing=spec), train, val)
    assert [r["world_size"] for r in outcome.history] == [2, 2]
    assert outcome.history[-1]["val_accuracy"] > 0.5


def test_training_from_written_shards(ray_local, splits, tmp_path):
    from pipelines import storage
    from pipelines.augmentation import manifest
    from pipelines.data import read_shards

    train, val = splits
    spec = MixingSpec("cutmix", alpha=1.0)
    shards = build_shards(train, spec, num_shards=2, seed=5)
    for shard in shards:
        storage.write_bytes(str(tmp_path / "shards" / shard.file), shard.data)
    storage.write_json(str(tmp_path / "shards" / "manifest.json"), manifest("cutmix", spec, 5, shards))
    mixed = read_shards(str(tmp_path / "shards"))
    assert np.array_equal(mixed.ids, train.ids) and (mixed.lam < 1).mean() > 0.9
    outcome = run_training(job(tmp_path, "offline", epochs=2, num_workers=1), mixed, val)
    assert outcome.history[-1]["val_accuracy"] > 0.5


def test_sweep_runs_every_grid_point_and_keeps_checkpoints(ray_local, splits, tmp_path):
    train, val = splits
    base = run_training(job(tmp_path, "base", epochs=1), train, val)
    from pipelines.models.checkpoints import state_dict_bytes

    template = job(tmp_path, "sweep", num_workers=1, epochs=2, init_weights=state_dict_bytes(base.state_dict))
    points = grid(["mixup", "cutmix"], [0.5])
    outcomes = run_sweep(template, points, train, val, experiment_name="sweep", grace_period=1,
                         reduction_factor=2, max_concurrent_trials=2)
    assert [o.point for o in outcomes] == points
    for outcome in outcomes:
        assert outcome.epochs_run in (1, 2)
        assert 0 <= outcome.val_score <= 1
        assert outcome.weights.keys() == base.state_dict.keys()
        assert not all(torch.equal(outcome.weights[k], base.state_dict[k]) for k in base.state_dict)


def test_regression_trains_with_cmixup_under_ddp_and_reports_r2(ray_local, tmp_path):
    from pipelines.data import standardise_targets, target_stats

    data = stratified_split(load_dataset("diabetes"), 0.15, 0.15, seed=0)
    mean, std = channel_stats(data.train)
    target_mean, target_std = target_stats(data.train)
    train, val = (standardise_targets(normalise(s, mean, std), target_mean, target_std) for s in (data.train, data.val))
    card = ModelCard("mlp", (10, 1), 1, seed=1, task="regression")
    spec = MixingSpec("cmixup", alpha=1.0, options=(("bandwidth", 1.0),), loss="mse")
    outcome = run_training(
        job(tmp_path, "diabetes", card=card, mixing=spec, epochs=20, batch_size=16,
            optim=OptimParams(lr=0.01, warmup_epochs=0)), train, val,
    )
    history = outcome.history
    assert "val_accuracy" not in history[-1] and [r["world_size"] for r in history] == [2] * 20
    assert history[-1]["val_r2"] > 0.3 and history[-1]["val_loss"] < history[0]["val_loss"]
    # val_r2 is 1 - MSE / variance of the (standardised) validation targets
    assert history[-1]["val_r2"] == pytest.approx(1 - history[-1]["val_loss"] / float(np.var(val.y, dtype=np.float64)), rel=1e-6)
    with pytest.raises(Exception, match="'soft_ce' is a classification loss"):
        run_training(job(tmp_path, "wrong-loss", card=card, mixing=MixingSpec("mixup", alpha=1.0)), train, val)


def test_merge_search_evaluates_every_grid_point_with_ray_tune(ray_local, splits, tmp_path):
    from pipelines.evaluation import HeldOutObjective
    from pipelines.merging import merge
    from pipelines.models import build_model
    from pipelines.tuning.merge_search import best_point, search_merge_params

    train, val = splits
    card = ModelCard("mlp", (1, 8, 8), 10, seed=1)
    base = build_model("mlp", (1, 8, 8), 10, seed=1).state_dict()
    states = [build_model("mlp", (1, 8, 8), 10, seed=s).state_dict() for s in (2, 3)]
    objective = HeldOutObjective(card, val.x, val.y)
    space = {"scale": [0.0, 0.5], "density": [0.2, 1.0]}
    points = search_merge_params("ties", states, base, {}, space, objective, str(tmp_path), "search")
    assert [p.params for p in points] == [{"density": 0.2, "scale": 0.0}, {"density": 0.2, "scale": 0.5},
                                          {"density": 1.0, "scale": 0.0}, {"density": 1.0, "scale": 0.5}]
    for point in points:  # what each Tune trial reported is the objective of that merge, recomputed here
        assert (point.score, point.loss) == pytest.approx(objective(merge("ties", states, base, **point.params)))
    assert (points[0].score, points[0].loss) == pytest.approx(objective(base))  # scale 0 is the base
    best = best_point(points)
    assert best.score == max(p.score for p in points)
    assert best.loss == min(p.loss for p in points if p.score == best.score)
