"""Steady-state training throughput: one Ray Train worker against the same loop without Ray, and
two workers against one.

Usage:
    python tools/netns.py -- python benchmarks/bench_training.py [--dataset digits] [--model cnn]
        [--batch 32] [--epochs 6] [--method mixup]

Every variant runs the same epoch function (``pipelines.training.loop.train_epoch``) and
validation on the same data, model and per-worker batch, one torch thread per worker; the plain
baseline runs them in this process, without Ray or DDP. Steady-state samples/s is the median over
epochs 2.. of (training samples / seconds to train and validate the epoch), as the workers time it
themselves. The end-to-end column is the wall time of the whole run seen from here: Ray's start
of the worker group, per-epoch checkpoints and reports included.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace

import torch

from pipelines.cluster import ray_session
from pipelines.config import OptimParams
from pipelines.data import channel_stats, load_dataset, normalise, stratified_split
from pipelines.mixing import MixingSpec
from pipelines.models import ModelCard, build_model, plain_state_dict
from pipelines.training import TrainJob, run_training
from pipelines.training.batching import steps_per_epoch
from pipelines.training.inputs import MemoryInput
from pipelines.training.loop import StepMixing, train_epoch, validate
from pipelines.training.optim import build_optimizer, lr_at_epoch, set_lr
from pipelines.training.state import TrainState, save_train_state


def plain_run(job: TrainJob, train, val) -> tuple[float, float]:
    """The loop without Ray: median seconds per epoch (train + validate) over epochs 2.., and the
    whole run's seconds including a checkpoint write per epoch."""
    torch.set_num_threads(1)  # what a Ray worker with one CPU gets
    started = time.perf_counter()
    card = job.card
    model = build_model(card.model, card.input_shape, card.num_classes, card.seed)
    optimizer = build_optimizer(model.parameters(), job.optim)
    mixing = StepMixing.for_job(job)
    cpu = torch.device("cpu")
    data, val_data = MemoryInput.of(train, cpu, job.precision), MemoryInput.of(val, cpu, job.precision)
    seconds = []
    for epoch in range(job.epochs):
        epoch_started = time.perf_counter()
        set_lr(optimizer, lr_at_epoch(job.optim, epoch, job.epochs))
        train_epoch(model, optimizer, mixing, data, job, 0, 1, epoch, use_amp=False)
        validate(model, val_data.val_batches(1, 0, job.val_batch_size))
        seconds.append(time.perf_counter() - epoch_started)
        with tempfile.TemporaryDirectory() as directory:
            save_train_state(directory, plain_state_dict(model), card, optimizer, TrainState(epoch + 1, [], 0))
    return statistics.median(seconds[1:]), time.perf_counter() - started


def ray_run(job: TrainJob, train, val) -> tuple[float, float]:
    """A Ray Train run: median ``epoch_seconds`` (train + validate, timed in the workers) over
    epochs 2.., and the wall time of ``run_training``."""
    started = time.perf_counter()
    outcome = run_training(job, train, val)
    return statistics.median(r["epoch_seconds"] for r in outcome.history[1:]), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--batch", type=int, default=32, help="per worker")
    parser.add_argument("--epochs", type=int, default=6, help="steady-state epochs timed per variant")
    parser.add_argument("--method", default="mixup")
    args = parser.parse_args()

    data = stratified_split(load_dataset(args.dataset, seed=0), 0.15, 0.15, seed=0)
    mean, std = channel_stats(data.train)
    train, val = normalise(data.train, mean, std), normalise(data.val, mean, std)
    storage = tempfile.mkdtemp(prefix="mixpipe-bench-")
    job = TrainJob(
        run_name="bench", card=ModelCard(args.model, train.input_shape, train.num_classes, seed=0),
        epochs=1 + args.epochs, batch_size=args.batch, optim=OptimParams(lr=0.05),
        mixing=MixingSpec(args.method, alpha=0.2), seed=0, storage_path=storage, num_workers=1,
        cpus_per_worker=1.0, use_gpu="auto",
    )
    plain = plain_run(job, train, val)
    with ray_session(num_cpus=2, temp_dir=tempfile.mkdtemp(prefix="mp-ray-", dir="/tmp")):
        one = ray_run(replace(job, run_name="one"), train, val)
        two = ray_run(replace(job, run_name="two", num_workers=2), train, val)

    def rate(workers: int, seconds: float) -> float:
        return steps_per_epoch(len(train), args.batch, workers) * args.batch * workers / seconds

    rows = [("plain loop, 1 process", 1, plain), ("Ray Train, 1 worker", 1, one), ("Ray Train, 2 workers (DDP)", 2, two)]
    base = rate(1, plain[0])
    print(f"{args.dataset} / {args.model}, {args.method}, per-worker batch {args.batch}, {len(train)} train samples, "
          f"1 torch thread per worker, {1 + args.epochs} epochs")
    print(f"{'variant':28s} {'steady samples/s':>17s} {'vs plain':>9s} {'end-to-end s':>13s}")
    for name, workers, (epoch_seconds, total) in rows:
        print(f"{name:28s} {rate(workers, epoch_seconds):17,.0f} {rate(workers, epoch_seconds) / base:8.2f}x {total:13.1f}")
    print(f"Ray overhead, 1 worker: {100 * (one[0] / plain[0] - 1):+.1f}% of the plain epoch time")
    print(f"2 workers vs 1 worker: {rate(2, two[0]) / rate(1, one[0]):.2f}x samples/s")


if __name__ == "__main__":
    main()
