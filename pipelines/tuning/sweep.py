"""Ray Tune over the training driver: a method x alpha grid of fine-tunes, pruned by ASHA.

Each trial is a Tune function that calls :func:`pipelines.training.run_training` (the same driver
the train stage uses) with the trial's mixing hyperparameters; Train's reports reach Tune through
``TuneReportCallback``, which also attaches each checkpoint's path.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from pipelines.data import ArrayDataset
from pipelines.errors import MixpipeError
from pipelines.mixing.spec import freeze
from pipelines.seeding import derive_seed
from pipelines.tasks import get_task
from pipelines.training import TrainJob, run_training
from pipelines.training.state import load_train_state

TRIAL_DRIVER_MEMORY = 256 * 1024**2


@dataclass(frozen=True)
class TrialPoint:
    """One grid point; ``name`` is stable across runs (it names the trial's outputs)."""

    name: str
    method: str
    alpha: float
    options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        # Tune hands the point back through JSON, as lists
        object.__setattr__(self, "options", freeze(self.options))


def grid(
    methods: list[str], alphas: list[float], options: Mapping[str, tuple[tuple[str, Any], ...]] | None = None
) -> list[TrialPoint]:
    """Every (method, alpha) pair, in params order, with names like ``t00-mixup-a0.2``.

    Args:
        options: method -> its own parameters (:attr:`MixingSpec.options`), given to its trials.
    """
    options = options or {}
    points = [(m, a) for m in methods for a in alphas]
    return [TrialPoint(f"t{i:02d}-{m}-a{a:g}", m, float(a), options.get(m, ())) for i, (m, a) in enumerate(points)]


@dataclass(frozen=True)
class TrialOutcome:
    """A finished trial; ``val_score`` is its last epoch's task score (accuracy, or R² for regression)."""

    point: TrialPoint
    epochs_run: int
    val_score: float
    val_loss: float
    checkpoint_path: str
    weights: dict[str, Any]


def trial_job(template: TrainJob, point: TrialPoint) -> TrainJob:
    """The template with this trial's mixing, its own seed and its own (stable) run name."""
    return replace(
        template,
        run_name=f"{template.run_name}-{point.name}",
        seed=derive_seed(template.seed, "trial", point.name),
        mixing=replace(template.mixing, method=point.method, alpha=point.alpha, options=point.options),
    )


def _run_trial(config: dict[str, Any], template: TrainJob, train: ArrayDataset, val: ArrayDataset) -> None:
    from ray.tune.integration.ray_train import TuneReportCallback

    point = TrialPoint(**config["point"])
    run_training(trial_job(template, point), train, val, callbacks=[TuneReportCallback()])


def _storage_filesystem(storage_path: str):
    import pyarrow.fs

    if "://" in storage_path:
        filesystem, _ = pyarrow.fs.FileSystem.from_uri(storage_path)
        return filesystem
    return pyarrow.fs.LocalFileSystem()


def run_sweep(
    template: TrainJob,
    points: list[TrialPoint],
    train: ArrayDataset,
    val: ArrayDataset,
    *,
    experiment_name: str,
    grace_period: int,
    reduction_factor: int,
    max_concurrent_trials: int,
) -> list[TrialOutcome]:
    """Run one fine-tune per grid point under ASHA and return every trial's last checkpoint.

    Trials stopped early by ASHA keep the checkpoint of their last epoch. An interrupted sweep
    with the same ``experiment_name`` and storage is restored rather than restarted.

    Raises:
        MixpipeError: a trial failed, or reported no checkpoint.
    """
    import ray.train
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    trainable = tune.with_parameters(_run_trial, template=template, train=train, val=val)
    # A trial only drives its Train run: the Train workers hold the CPUs. The trial reserves a
    # little memory instead, because Tune refuses a request with no resources at all.
    trainable = tune.with_resources(trainable, {"cpu": 0, "memory": TRIAL_DRIVER_MEMORY})
    path = f"{template.storage_path.rstrip('/')}/{experiment_name}"
    if tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={"point": tune.grid_search([vars(p) for p in points])},
            tune_config=tune.TuneConfig(
                metric=get_task(template.card.task).score_column,
                mode="max",
                scheduler=ASHAScheduler(
                    time_attr="training_iteration",
                    max_t=template.epochs,
                    grace_period=grace_period,
                    reduction_factor=reduction_factor,
                ),
                max_concurrent_trials=max_concurrent_trials,
            ),
            run_config=tune.RunConfig(name=experiment_name, storage_path=template.storage_path, verbose=1),
        )
    results = tuner.fit()
    filesystem = _storage_filesystem(template.storage_path)
    outcomes = []
    for result in results:
        point = TrialPoint(**result.config["point"])
        if result.error is not None:
            raise MixpipeError(f"tune: trial {point.name} failed: {result.error}")
        metrics = result.metrics or {}
        checkpoint_path = metrics.get("checkpoint_path")
        if not checkpoint_path:
            raise MixpipeError(f"tune: trial {point.name} reported no checkpoint")
        with tempfile.TemporaryDirectory(prefix="mixpipe-trial-") as directory:
            ray.train.Checkpoint(checkpoint_path, filesystem=filesystem).to_directory(directory)
            saved = load_train_state(directory)
        last = saved.progress.history[-1]
        outcomes.append(
            TrialOutcome(
                point=point,
                epochs_run=int(last["epoch"]),
                val_score=float(last[get_task(template.card.task).score_column]),
                val_loss=float(last["val_loss"]),
                checkpoint_path=str(checkpoint_path),
                weights=saved.weights,
            )
        )
    return sorted(outcomes, key=lambda o: o.point.name)
