"""The Ray Train per-worker loop: DDP over the ranks, online mixing, rank-0 checkpoints."""

from __future__ import annotations

import logging
import math
import os
import signal
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load as load_safetensors

from pipelines import storage
from pipelines.mixing import Mixer, MixedLoss, MixOutput, mixing_hidden
from pipelines.models import build_model, mix_points, plain_state_dict
from pipelines.seeding import torch_generator
from pipelines.tasks import CLASSIFICATION, Task, get_task
from pipelines.data import MixedDataset, StoredSplit
from pipelines.training.batching import mixing_seed
from pipelines.training.inputs import MemoryInput, StreamedInput
from pipelines.training.determinism import use_deterministic_kernels
from pipelines.training.job import TrainJob
from pipelines.training.optim import build_optimizer, lr_at_epoch, set_lr
from pipelines.training.state import TrainState, load_train_state, save_train_state
from pipelines.vector_math import warm_vector_math


log = logging.getLogger("mixpipe.train")
TrainInput = MemoryInput | StreamedInput


def _quiet_ray_worker_logs() -> None:
    """Keep the worker console to warnings plus our own progress lines.

    Ray Train's per-report INFO line comes from a logger named by file path, so LoggingConfig does
    not reach it; it lands on the root logger. Our progress uses its own logger at INFO (a logger's
    level is checked where a record starts, so the root's WARNING does not filter it).
    """
    logging.getLogger().setLevel(logging.WARNING)
    log.setLevel(logging.INFO)


def _sum_across_ranks(values: list[float], device: torch.device) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


@torch.no_grad()
def validate(
    model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], task: Task = CLASSIFICATION,
) -> list[float]:
    """The task's validation sums (:meth:`Task.validation_sums`) over this rank's share of the
    validation set, given as ``batches`` (``evaluate.batch_size`` rows per forward, at least one
    batch); summed across ranks, :meth:`Task.summarise` makes them (val_loss, val_score).

    In the model's own precision, without autocast: the numbers that prune trials and pick the
    best one are the numbers the evaluate stage would report.
    """
    model.eval()
    totals: list[float] = []
    for inputs, labels in batches:
        sums = task.validation_sums(model(inputs), labels)
        totals = [a + b for a, b in zip(totals, sums, strict=True)] if totals else sums
    return totals


@dataclass(frozen=True)
class StepMixing:
    """How a worker turns a batch into a loss: online mixing (``mixer``) or the label pairs of
    offline shards (``y_partner``/``lam`` per training row, inputs already mixed)."""

    mixer: Mixer
    loss: MixedLoss
    num_classes: int
    smoothing: float
    y_partner: torch.Tensor | None = None
    lam: torch.Tensor | None = None

    @classmethod
    def for_job(cls, job: TrainJob, arrays: dict[str, np.ndarray] | None = None, device: torch.device | None = None) -> StepMixing:
        """The job's mixer and loss; with ``y_partner_train``/``lam_train`` in ``arrays`` (shards),
        the recorded pairs instead of online mixing."""
        arrays = arrays or {}
        offline = "lam_train" in arrays
        return cls(
            mixer=job.mixing.build(),
            loss=job.mixing.build_loss(),
            num_classes=job.card.num_classes,
            smoothing=job.mixing.label_smoothing,
            y_partner=torch.tensor(arrays["y_partner_train"], device=device) if offline else None,
            lam=torch.tensor(arrays["lam_train"], device=device) if offline else None,
        )

    def batch_loss(
        self, model: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor,
        generator: torch.Generator, use_amp: bool,
    ) -> torch.Tensor:
        if self.lam is not None:
            out = MixOutput(x=inputs, index=rows, lam=self.lam[rows])  # index unused: pairs are given
            partner_labels = self.y_partner[rows]
        else:
            out = self.mixer(inputs, labels, generator=generator)
            partner_labels = labels[out.index]
        batch = len(labels)
        forward, hidden = out.x, out
        if self.loss.needs_clean:
            # one forward over [mixed; clean]: DDP expects one forward per backward. The clean half
            # partners itself at lam 1, so a hidden mix point leaves it clean.
            forward = torch.cat([out.x, inputs])
            hidden = MixOutput(
                x=forward, layer=out.layer,
                index=torch.cat([out.index, torch.arange(batch, 2 * batch, device=inputs.device)]),
                lam=torch.cat([out.lam, torch.ones_like(out.lam)]),
            )
        with mixing_hidden(mix_points(model), hidden), torch.autocast(inputs.device.type, torch.bfloat16, enabled=use_amp):
            logits = model(forward)
        clean_logits = logits[batch:] if self.loss.needs_clean else None
        return self.loss(
            logits[:batch], labels, partner_labels, out.lam, num_classes=self.num_classes,
            smoothing=self.smoothing, clean_logits=clean_logits,
        )


def diverged_marker(job: TrainJob) -> str:
    """Where rank 0 leaves the record of the epoch whose loss stopped being finite (Ray Train's
    result only carries the metrics of a run's last checkpoint)."""
    return storage.join(job.storage_path, job.run_name, "mixpipe-diverged.json")


def train_epoch(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, mixing: StepMixing, data: TrainInput,
    job: TrainJob, rank: int, world: int, epoch: int, use_amp: bool,
) -> tuple[float, int]:
    """One epoch over this rank's batches of ``data``; returns (sum of batch losses x batch sizes, samples).

    Needs no Ray for data in memory: the benchmark runs it in a plain process as the baseline of
    the Ray worker.
    """
    model.train()
    loss_sum, seen = 0.0, 0
    for step, (inputs, labels, rows) in enumerate(data.train_batches(job.batch_size, world, rank, job.seed, epoch)):
        generator = torch_generator(mixing_seed(job.seed, rank, epoch, step), inputs.device)
        loss = mixing.batch_loss(model, inputs, labels, rows, generator, use_amp)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.item() * len(labels)
        seen += len(labels)
    return loss_sum, seen


def worker_inputs(
    job: TrainJob, data: Any, device: torch.device,
) -> tuple[TrainInput, TrainInput, dict[str, np.ndarray]]:
    """This worker's train and val inputs from what the driver sent, and the offline label pairs
    (``y_partner_train``/``lam_train``) when training on shards."""
    import ray

    if isinstance(data, tuple) and all(isinstance(d, StoredSplit) for d in data):
        train, val = (StreamedInput(s, device, job.precision, job.window_rows or s.rows, job.read_cpus) for s in data)
        return train, val, {}
    train, val = ray.get(data)
    arrays = {"y_partner_train": train.y_partner, "lam_train": train.lam} if isinstance(train, MixedDataset) else {}
    return (MemoryInput.of(train, device, job.precision, job.part_rows, job.window_rows),
            MemoryInput.of(val, device, job.precision), arrays)


def start_attempt(job: TrainJob) -> int:
    """Count this start of the run's workers (0 for the first) by a marker file per start under
    the run's storage, so restarts show in the history even when Ray restarts from no checkpoint.
    Rank 0 only."""
    folder = storage.join(job.storage_path, job.run_name, "mixpipe-attempts")
    attempt = len(storage.list_names(folder))
    storage.write_text(storage.join(folder, f"attempt-{attempt:04d}"), f"{time.time()}\n")
    return attempt


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker. ``config`` holds ``job`` (a :class:`TrainJob`) and ``data``:
    an object ref to the train and val :class:`ArrayDataset` (raw inputs; the train one a
    :class:`MixedDataset` when the rows come mixed from shards), or the two :class:`StoredSplit`
    to stream."""
    import ray
    import ray.train
    from ray.train.torch import get_device, prepare_model

    _quiet_ray_worker_logs()
    warm_vector_math()  # a worker given several CPUs runs torch's unary ops on several threads
    job: TrainJob = config["job"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = get_device()

    use_deterministic_kernels(job.deterministic)
    train_data, val_data, arrays = worker_inputs(job, config["data"], device)

    card = job.card
    task = get_task(card.task)
    model = build_model(card.model, card.input_shape, card.num_classes, card.seed).to(getattr(torch, job.precision))
    if job.init_weights is not None:
        model.load_state_dict(load_safetensors(job.init_weights))
    attempt = start_attempt(job) if rank == 0 else -1  # only rank 0 records history and runs the drill
    progress = TrainState(epoch=0, history=[], attempt=attempt)
    saved = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            saved = load_train_state(directory)
        model.load_state_dict(saved.weights)
        progress = TrainState(saved.progress.epoch, saved.progress.history, attempt)
    train_data.read_ahead(job.seed, progress.epoch)  # a streamed split starts reading while DDP sets up
    val_data.read_share_ahead(world, rank)  # and the validation share, read by the first validation
    model = prepare_model(model)
    optimizer = build_optimizer(model.parameters(), job.optim)
    if saved is not None:
        # after prepare_model, so the state is cast to the parameters' device
        optimizer.load_state_dict(saved.optimizer_state)

    mixing = StepMixing.for_job(job, arrays, device)
    use_amp = device.type == "cuda" and job.precision == "float32"
    history = list(progress.history)
    for epoch in range(progress.epoch, job.last_epoch):
        started = time.perf_counter()
        lr = lr_at_epoch(job.optim, epoch, job.epochs)
        set_lr(optimizer, lr)
        loss_sum, seen = train_epoch(model, optimizer, mixing, train_data, job, rank, world, epoch, use_amp)
        if epoch + 1 < job.last_epoch:
            train_data.read_ahead(job.seed, epoch + 1)  # while this epoch validates and checkpoints
        val_sums = validate(model, val_data.val_batches(world, rank, job.val_batch_size), task)
        totals = _sum_across_ranks([loss_sum, seen, *val_sums], device)
        val_loss, val_score = task.summarise(totals[2:])
        seconds = time.perf_counter() - started
        record = {
            "epoch": epoch + 1,
            "train_loss": totals[0] / totals[1],
            "val_loss": val_loss,
            task.score_column: val_score,
            "lr": lr,
            "samples_per_s": totals[1] / seconds,
            "epoch_seconds": seconds,
            "world_size": world,
            "attempt": progress.attempt,
        }
        if not (math.isfinite(record["train_loss"]) and math.isfinite(val_loss)):
            # Every rank sees the same all-reduced losses and stops here, without a checkpoint.
            # Returned from, not raised: Ray Train would retry a raised error from the last
            # checkpoint, and diverge again. The driver reads the marker and raises.
            if rank == 0:
                storage.write_json(diverged_marker(job), record)
            return
        history.append(record)
        if rank == 0:
            this_run = [r["epoch_seconds"] for r in history if r["attempt"] == progress.attempt]
            eta = sum(this_run) / len(this_run) * (job.last_epoch - epoch - 1)  # the mean epoch of this attempt
            log.info(
                "[%s] epoch %d/%d train_loss %.4f val_loss %.4f %s %.4f (%.0f samples/s, %.1fs/epoch, ETA %s)",
                job.run_name, epoch + 1, job.epochs, record["train_loss"], record["val_loss"],
                task.score_column, val_score, record["samples_per_s"], seconds, _duration(eta),
            )
            with tempfile.TemporaryDirectory(prefix="mixpipe-ckpt-") as directory:
                state = TrainState(epoch + 1, history, progress.attempt)
                save_train_state(directory, plain_state_dict(model), card, optimizer, state)
                ray.train.report(record, checkpoint=ray.train.Checkpoint.from_directory(directory))
        else:
            ray.train.report(record)
        if job.crash_after_epoch == epoch + 1 and progress.attempt == 0:
            log.warning("[%s] fault drill: killing the rank-0 worker after epoch %d", job.run_name, epoch + 1)
            os.kill(os.getpid(), signal.SIGKILL)


def _duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``: an ETA as people read it."""
    whole = int(round(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
