"""The training driver: builds the ``TorchTrainer`` for a :class:`TrainJob` and collects its result.

Callable on its own (the train stage) and from inside a Tune trial (the tune stage).
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from pipelines import storage, tables
from pipelines.cluster.resources import Demand, autoscaler_ceiling, ensure_feasible, free_for, queue_notice
from pipelines.cluster.session import scoped_env
from pipelines.data import ArrayDataset, StoredSplit
from pipelines.errors import ClusterError, ConfigError, DataError, TrainingDiverged
from pipelines.mixing import check_loss_task
from pipelines.mixing.manifold import INPUT
from pipelines.models import ModelCard, build_model, mix_points
from pipelines.training.batching import steps_per_epoch
from pipelines.cluster.devices import DevicePlan, plan_devices
from pipelines.training.job import TrainJob
from pipelines.training.loop import diverged_marker, train_loop_per_worker
from pipelines.training.state import load_train_state

# Ray Train's own bound on one attempt to place and start the worker group (its default is 60 s,
# retried forever); a user's setting of the variable wins.
WORKER_GROUP_START_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"


@dataclass(frozen=True)
class TrainOutcome:
    """The finished run: final weights, their card, the per-epoch history, where Ray kept the run
    and its last checkpoint (a path in the run storage's filesystem)."""

    state_dict: dict[str, torch.Tensor]
    card: ModelCard
    history: list[dict[str, Any]]
    run_path: str
    checkpoint_path: str


def check_fits(job: TrainJob, train: ArrayDataset | StoredSplit) -> None:
    """Fail before Ray starts: too few samples for a batch, a loss for the other task, or mix
    points the model lacks."""
    if train.task != job.card.task:
        raise ConfigError(f"the data are a {train.task} task but the model card says {job.card.task}")
    check_loss_task(job.mixing.build_loss(), job.mixing.loss, job.card.task, job.mixing.label_smoothing)
    if steps_per_epoch(len(train), job.batch_size, job.num_workers) == 0:
        raise DataError(
            f"{len(train)} training samples do not fill one global batch of "
            f"{job.batch_size} x {job.num_workers} workers; lower the batch size"
        )
    mixer = job.mixing.build()
    if mixer.mixes_hidden:
        card = job.card
        known = {INPUT, *mix_points(build_model(card.model, card.input_shape, card.num_classes, card.seed))}
        unknown = [layer for layer in mixer.layers if layer not in known]
        if unknown:
            raise ConfigError(
                f"mixing.options.{job.mixing.method}.layers: model {card.model!r} has no mix point(s) {unknown}; "
                f"it has {sorted(known)}"
            )


def worker_setup(
    job: TrainJob, gpus_up: float, ceiling: dict[str, float] | None = None,
) -> tuple[DevicePlan, dict[str, float], str]:
    """Whether workers use GPUs (and why), the resources each requests, and the DDP backend: NCCL
    with one GPU per worker, gloo on CPU (the loop autocasts to bf16 when its device is CUDA)."""
    plan = plan_devices(job.use_gpu, job.num_workers, gpus_up, ceiling, key=f"{job.params_key}.use_gpu")
    resources = {"CPU": job.cpus_per_worker, **({"GPU": 1.0} if plan.use_gpu else {})}
    return plan, resources, "nccl" if plan.use_gpu else "gloo"


def cluster_worker_setup(job: TrainJob) -> tuple[DevicePlan, dict[str, float], str]:
    """:func:`worker_setup` on the connected cluster, with its line printed if ``job`` reports it."""
    import ray

    setup = worker_setup(job, ray.cluster_resources().get("GPU", 0.0), autoscaler_ceiling())
    if job.report_devices:
        print(setup[0].line(f"{job.params_key}.use_gpu", job.num_workers), file=sys.stderr, flush=True)
    return setup


def cpus_left_for_reads(job: TrainJob, per_worker: dict[str, float], groups: int = 1) -> tuple[float, float]:
    """CPUs of the cluster (now, or once its autoscaler has grown it) left beside ``groups`` worker
    groups of ``job``, and the cluster's CPUs."""
    import ray

    ceiling = autoscaler_ceiling() or {}
    total = max(ray.cluster_resources().get("CPU", 0.0), ceiling.get("CPU", 0.0))
    return total - groups * job.num_workers * per_worker.get("CPU", 0.0), total


def check_read_cpus(job: TrainJob, per_worker: dict[str, float], groups: int = 1) -> None:
    """Streaming needs CPU beside the worker groups for Ray Data's read tasks: workers that hold
    every CPU starve the reads, and the run hangs (the known Ray Data and Train pitfall).

    Raises:
        ConfigError: naming ``<params_key>.cpus_per_worker``, when less than ``input.read_cpus`` is left.
    """
    left, total = cpus_left_for_reads(job, per_worker, groups)
    if left < job.read_cpus:
        raise ConfigError(
            f"{job.params_key}.cpus_per_worker: {groups * job.num_workers} worker(s) x {per_worker.get('CPU', 0.0):g} CPU "
            f"leave {max(left, 0):g} of the cluster's {total:g} CPUs for streaming reads, which need "
            f"input.read_cpus={job.read_cpus:g}; lower {job.params_key}.cpus_per_worker (a fraction works) or set "
            "input.mode: memory"
        )


def worker_demand(job: TrainJob, per_worker: dict[str, float]) -> Demand:
    """The worker group ``job`` asks the cluster for, named by its params."""
    return Demand(f"{job.params_key}.num_workers: {job.num_workers} worker(s)", per_worker, job.num_workers)


def _startup_failure(error: Exception) -> Exception | None:
    """The controller's reason when Train gave up starting the worker group, else None."""
    from ray.train.v2._internal.exceptions import WorkerGroupStartupFailedError, WorkerGroupStartupTimeoutError

    reason = getattr(error, "controller_failure", None)
    return reason if isinstance(reason, (WorkerGroupStartupTimeoutError, WorkerGroupStartupFailedError)) else None


def _first_failure(error: Exception) -> str:
    """The failing worker's error (the lowest rank's) in one line, not Ray's report of every
    worker's traceback (133 lines for one failed worker)."""
    failures = getattr(error, "worker_failures", None) or {}
    cause = failures[min(failures)] if failures else getattr(error, "controller_failure", None) or error
    lines = [line.strip() for line in str(cause).strip().splitlines() if line.strip()]
    # a worker's error text ends with the exception line under its traceback
    last = next((line for line in reversed(lines) if not line.startswith(("File ", "^", "~"))), type(cause).__name__)
    return f"{type(cause).__name__}: {last}"[:400]


def run_training(
    job: TrainJob, train: ArrayDataset | StoredSplit, val: ArrayDataset | StoredSplit, callbacks: Sequence[Any] = (),
) -> TrainOutcome:
    """Run ``job`` on the connected Ray cluster and return its final checkpoint's contents.

    A worker group the cluster cannot hold fails before anything waits (after up to
    ``job.resource_wait_s`` for a cluster to grow). One that fits waits in Ray's queue for what
    other jobs hold (its placement group pending, nothing polled here), and fails with the reason
    if it has not started within ``RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S`` (``queue_wait_s`` +
    ``resource_wait_s``), instead of Ray Train's retrying forever.

    Args:
        job: the run; its ``run_name`` decides whether an earlier run is resumed.
        train: training split (sharded per rank inside the loop): in memory (raw inputs, sent to
            every worker), or a :class:`StoredSplit` every worker streams through Ray Data. A
            :class:`MixedDataset` (offline shards) trains on its mixed inputs and label pairs,
            without mixing again.
        val: validation split (evaluated every epoch, shared across ranks), held as ``train`` is.
        callbacks: Ray Train callbacks.

    Raises:
        ClusterError: the worker group does not fit the cluster, or did not start in time.
    """
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from pipelines.training.rendezvous import NodeBoundTorchConfig

    check_fits(job, train)
    plan, per_worker, backend = cluster_worker_setup(job)
    demand = worker_demand(job, per_worker)
    ensure_feasible(demand, job.resource_wait_s)
    streamed = isinstance(train, StoredSplit)
    if streamed != isinstance(val, StoredSplit):
        raise TypeError("train and val must both be in memory or both be streamed")
    if streamed:
        check_read_cpus(job, per_worker)
    data = (train, val) if streamed else ray.put((train, val))
    filesystem, storage_path = storage.arrow_filesystem(job.storage_path)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": job, "data": data},
        torch_config=NodeBoundTorchConfig(backend=backend),
        scaling_config=ray.train.ScalingConfig(
            num_workers=job.num_workers, use_gpu=plan.use_gpu, resources_per_worker=per_worker
        ),
        run_config=ray.train.RunConfig(
            name=job.run_name,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            # worker failures restart up to max_failures; a group that cannot start is not retried
            failure_config=ray.train.FailureConfig(max_failures=job.max_failures, controller_failure_limit=0),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=job.checkpoints_to_keep),
            callbacks=list(callbacks),
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
    )
    marker_url = diverged_marker(job)
    fs, marker = storage.filesystem(marker_url)
    if fs.exists(marker):
        fs.rm(marker)  # left by a driver killed before it read it: this attempt reports afresh
    start_timeout = os.environ.get(WORKER_GROUP_START_ENV) or f"{job.queue_wait_s + job.resource_wait_s:g}"
    held = queue_notice(demand, ray.available_resources(), start_timeout)
    if held:
        print(f"mixpipe: {held}", file=sys.stderr, flush=True)
    try:
        with scoped_env(**{WORKER_GROUP_START_ENV: start_timeout}):  # Train passes it on to its controller
            result = trainer.fit()
    except ray.train.TrainingFailedError as error:
        reason = _startup_failure(error)
        if reason is None:
            raise ClusterError(
                f"{job.params_key}: run {job.run_name} failed (after {job.max_failures} restart(s) allowed by "
                f"{job.params_key}.max_failures): {_first_failure(error)}"
            ) from error
        raise ClusterError(
            f"{demand}: the worker group did not start within {start_timeout}s ({type(reason).__name__}: "
            f"{str(reason).splitlines()[0]}); free now: {free_for(demand, ray.available_resources())}"
        ) from None
    if fs.exists(marker):
        metrics = storage.read_json(marker_url)
        fs.rm(marker)
        kept = f"epoch {metrics['epoch'] - 1}'s checkpoint is kept in {result.path}" if result.checkpoint else "no checkpoint"
        raise TrainingDiverged(
            f"{job.params_key}: run {job.run_name} stopped at epoch {metrics['epoch']}: its loss is not finite "
            f"(train_loss {metrics['train_loss']}, val_loss {metrics['val_loss']}); {kept} and no model is written. "
            f"Lower {job.params_key}.optim.lr, or look for extreme values in the data"
        )
    if result.checkpoint is None:
        raise RuntimeError(f"training run {job.run_name} finished without a checkpoint")
    with tempfile.TemporaryDirectory(prefix="mixpipe-final-") as directory:
        result.checkpoint.to_directory(directory)
        saved = load_train_state(directory)
    return TrainOutcome(saved.weights, saved.card, saved.progress.history, str(result.path), str(result.checkpoint.path))


def history_frame(history: Sequence[dict[str, Any]], task: str = "classification") -> pd.DataFrame:
    """The per-epoch records as a ``train_history`` table of ``task`` (validated)."""
    spec = tables.table_for("train_history", task)
    frame = pd.DataFrame(list(history), columns=list(spec.columns))
    return tables.to_frame(tables.to_arrow(frame, spec))
