"""Steady-state training throughput: one Ray Train worker against the same loop without Ray, and
two workers against one.

Usage:
    python tools/netns.py -- python benchmarks/bench_training.py [--dataset digits] [--model cnn]
        [--batch 32] [--epochs 6] [--method mixup]

Every variant runs the same epoch function (``pipelines.training.loop.train_epoch``), validation
and per-epoch checkpoint write on the same data, model and per-worker batch, one torch thread per
worker. The plain baseline runs them in this process. Ray runs are timed from the driver, twice
per variant (2 epochs and 2 + ``--epochs``), and the difference divided by ``--epochs`` is the
steady-state epoch time: start-up, worker-group creation and the first epoch cancel out, while
Ray's per-epoch costs (reporting, checkpoint upload, DDP) stay in.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from pipelines.cluster import ray_session
from pipelines.config import OptimParams
from pipelines.data import channel_stats, load_dataset, normalise, stratified_split
from pipelines.mixing import MixingSpec
from pipelines.models import ModelCard, build_model, plain_state_dict
from pipelines.training import TrainJob, run_training
from pipelines.training.batching import steps_per_epoch
from pipelines.training.loop import StepMixing, train_epoch, validate
from pipelines.training.optim import build_optimizer, lr_at_epoch, set_lr
from pipelines.training.state import TrainState, save_train_state


def plain_epoch_seconds(job: TrainJob, train, val, epochs: int) -> list[float]:
    """Wall time of each epoch of the loop without Ray (train, validate, write the checkpoint)."""
    torch.set_num_threads(1)  # what a Ray worker with one CPU gets
    card = job.card
    model = build_model(card.model, card.input_shape, card.num_classes, card.seed)
    optimizer = build_optimizer(model.parameters(), job.optim)
    mixing = StepMixing(job.mixing.build(), job.mixing.build_loss(), card.num_classes, job.mixing.label_smoothing)
    x, y = torch.tensor(train.x), torch.tensor(train.y)
    xv, yv = torch.tensor(val.x), torch.tensor(val.y)
    seconds = []
    for epoch in range(epochs):
        started = time.perf_counter()
        set_lr(optimizer, lr_at_epoch(job.optim, epoch, epochs))
        train_epoch(model, optimizer, mixing, x, y, job, 0, 1, epoch, use_amp=False)
        validate(model, xv, yv, 0, 1)
        with tempfile.TemporaryDirectory() as directory:
            save_train_state(directory, plain_state_dict(model), card, optimizer, TrainState(epoch + 1, [], 0))
        seconds.append(time.perf_counter() - started)
    return seconds


def ray_epoch_seconds(job: TrainJob, train, val, epochs: int) -> float:
    """Steady-state seconds per epoch of a Ray Train run, by differencing a short and a long run."""
    totals = {}
    for count in (2, 2 + epochs):
        started = time.perf_counter()
        run_training(TrainJob(**{**vars(job), "epochs": count, "run_name": f"{job.run_name}-{count}"}), train, val)
        totals[count] = time.perf_counter() - started
    return (totals[2 + epochs] - totals[2]) / epochs


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
        run_name="bench", card=ModelCard(args.model, train.input_shape, train.num_classes, seed=0), epochs=2,
        batch_size=args.batch, optim=OptimParams(lr=0.05), mixing=MixingSpec(args.method, alpha=0.2), seed=0,
        storage_path=storage, num_workers=1, cpus_per_worker=1.0, use_gpu="auto",
    )
    plain = statistics.median(plain_epoch_seconds(job, train, val, 1 + args.epochs)[1:])
    with ray_session(num_cpus=2, temp_dir=tempfile.mkdtemp(prefix="mp-ray-", dir="/tmp")):
        one = ray_epoch_seconds(TrainJob(**{**vars(job), "run_name": "one"}), train, val, args.epochs)
        two = ray_epoch_seconds(TrainJob(**{**vars(job), "run_name": "two", "num_workers": 2}), train, val, args.epochs)

    def samples(workers: int) -> int:
        return steps_per_epoch(len(train), args.batch, workers) * args.batch * workers

    rows = [
        ("plain loop, 1 process", samples(1) / plain, 1.0),
        ("Ray Train, 1 worker", samples(1) / one, plain / one),
        ("Ray Train, 2 workers (DDP)", samples(2) / two, (samples(2) / two) / (samples(1) / plain)),
    ]
    print(f"{args.dataset} / {args.model}, {args.method}, per-worker batch {args.batch}, {len(train)} train samples, "
          f"{torch.get_num_threads()} torch thread(s) per worker, steady state over {args.epochs} epochs")
    print(f"{'variant':30s} {'samples/s':>10s} {'vs plain':>9s}")
    for name, rate, ratio in rows:
        print(f"{name:30s} {rate:10,.0f} {ratio:8.2f}x")
    print(f"Ray overhead, 1 worker: {100 * (one / plain - 1):.1f}% of the plain epoch time")
    print(f"2 workers vs 1 worker: {one / two * samples(2) / samples(1):.2f}x samples/s")


if __name__ == "__main__":
    main()
