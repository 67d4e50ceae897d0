"""The streamed input path against the in-memory one, on a local Ray instance: the same batches
in the same order, the same runs bit for bit, DDP equivalence and resume as on the in-memory path."""

from __future__ import annotations

import tempfile
from dataclasses import replace

import numpy as np
import pytest
import torch

from pipelines.cluster import ray_session
from pipelines.config import OptimParams
from pipelines.data import ArrayDataset, normalisation, read_split, write_split
from pipelines.errors import ConfigError
from pipelines.mixing import MixingSpec
from pipelines.models import ModelCard
from pipelines.training import TrainJob, run_training
from pipelines.training.inputs import MemoryInput, StreamedInput

pytestmark = pytest.mark.integration

ROWS, SHAPE = 613, (3, 4, 4)
ROW_BYTES = int(np.prod(SHAPE))
PART_ROWS = 90  # 7 parts, the last one short
WINDOW = 130  # windows straddle parts; 5 windows, the last one short


@pytest.fixture(scope="module")
def ray_local():
    # three logical CPUs on this 2-core machine: two single-CPU workers and their streaming reads
    with ray_session(num_cpus=3, temp_dir=tempfile.mkdtemp(prefix="mp-stream-", dir="/tmp")) as connection:
        yield connection


def images(rows: int, seed: int) -> ArrayDataset:
    """uint8 images whose class is readable from their mean, so that a model learns something."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, rows)
    x = np.clip(rng.normal(60.0 * y[:, None, None, None], 40.0, (rows, *SHAPE)), 0, 255).astype(np.uint8)
    return ArrayDataset(x, y, np.arange(1000 * seed, 1000 * seed + rows), 4)


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    root = tmp_path_factory.mktemp("prepared")
    train, val = images(ROWS, 1), images(151, 2)
    stats = normalisation(train)
    part_mib = PART_ROWS * ROW_BYTES / (1 << 20)
    return tuple(write_split(str(root / name), replace(split, normalisation=stats), part_mib=part_mib)
                 for name, split in (("train", train), ("val", val)))


def test_streamed_batches_are_the_in_memory_batches(ray_local, stored):
    train, val = stored
    assert len(train.parts) == 7
    cpu = torch.device("cpu")
    memory = MemoryInput.of(read_split(train.url), cpu, "float32", train.part_rows, WINDOW)
    memory_val = MemoryInput.of(read_split(val.url), cpu, "float32")
    streamed = StreamedInput(train, cpu, "float32", WINDOW)
    streamed_val = StreamedInput(val, cpu, "float32", WINDOW)
    orders = []
    # one stream per rank and epoch (each a Ray Data execution of a second or two): one worker over
    # two epochs, and three ranks of one epoch
    for world, batch, epochs in ((1, 64, (0, 1)), (3, 20, (1,))):
        for rank in range(world):
            for epoch in epochs:
                expected = list(memory.train_batches(batch, world, rank, seed=7, epoch=epoch))
                got = list(streamed.train_batches(batch, world, rank, seed=7, epoch=epoch))
                assert len(got) == len(expected) == ROWS // (batch * world)
                for (x, y, rows), (ex, ey, erows) in zip(got, expected, strict=True):
                    assert torch.equal(x, ex) and torch.equal(y, ey) and torch.equal(rows, erows)
                if world == 1:
                    orders.append(torch.cat([rows for _, _, rows in got]))
            for _ in range(2):  # read and kept (a share within a window), then from what was kept
                for (x, y), (ex, ey) in zip(streamed_val.val_batches(world, rank, 16),
                                            memory_val.val_batches(world, rank, 16), strict=True):
                    assert torch.equal(x, ex) and torch.equal(y, ey)
            # a share larger than the window is streamed every time, in the same batches
            small = StreamedInput(val, cpu, "float32", 10)
            for (x, y), (ex, ey) in zip(small.val_batches(world, rank, 16), memory_val.val_batches(world, rank, 16),
                                        strict=True):
                assert torch.equal(x, ex) and torch.equal(y, ey)
            assert not small._held
    # epochs differ in order, and the windows mix rows of different parts
    assert not torch.equal(orders[0], orders[1])
    first_window = orders[0][:WINDOW] // PART_ROWS
    assert len(set(first_window.tolist())) > 1


def job(storage, name, **changes) -> TrainJob:
    settings = dict(
        run_name=name, card=ModelCard("mlp", SHAPE, 4, seed=1), epochs=2, batch_size=16,
        optim=OptimParams(lr=0.05, warmup_epochs=0), mixing=MixingSpec("mixup", alpha=0.4), seed=3,
        storage_path=str(storage), num_workers=2, cpus_per_worker=1.0, use_gpu=False, precision="float64",
        window_rows=WINDOW, read_cpus=0.5,
    )
    return TrainJob(**{**settings, **changes})


@pytest.fixture(scope="module")
def streamed_run(ray_local, stored, tmp_path_factory):
    train, val = stored
    return run_training(job(tmp_path_factory.mktemp("stream"), "s2", part_rows=tuple(train.part_rows)), train, val)


def test_a_streamed_run_is_the_in_memory_run_bit_for_bit(streamed_run, stored, tmp_path):
    train, val = stored
    memory = run_training(job(tmp_path, "m2", part_rows=tuple(train.part_rows)), read_split(train.url), read_split(val.url))
    for a, b in zip(streamed_run.history, memory.history, strict=True):
        assert (a["train_loss"], a["val_loss"], a["val_accuracy"]) == (b["train_loss"], b["val_loss"], b["val_accuracy"])
    for key, tensor in memory.state_dict.items():
        assert torch.equal(streamed_run.state_dict[key], tensor), key


def test_streamed_ddp_equivalence_and_resume(streamed_run, stored, tmp_path):
    """As on the in-memory path (tests/integration/test_ray_library.py): 2 workers at b equal 1 at
    2b up to float64 summation order (the tolerance argued there), with mixing off; and a run
    whose rank-0 worker is killed after epoch 1 resumes from its checkpoint to the uninterrupted
    run's weights exactly."""
    train, val = stored
    plain = {"mixing": MixingSpec("none", alpha=1.0), "part_rows": tuple(train.part_rows)}
    two = run_training(job(tmp_path, "d2", **plain), train, val)
    one = run_training(job(tmp_path, "d1", **plain, batch_size=32, num_workers=1), train, val)
    for a, b in zip(two.history, one.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-10, abs=0)
    for key, tensor in one.state_dict.items():
        torch.testing.assert_close(two.state_dict[key], tensor, rtol=1e-10, atol=1e-12)
    killed = run_training(job(tmp_path, "k2", part_rows=tuple(train.part_rows), max_failures=1, crash_after_epoch=1),
                          train, val)
    assert [r["epoch"] for r in killed.history] == [1, 2] and killed.history[-1]["attempt"] == 1
    for key, tensor in streamed_run.state_dict.items():
        assert torch.equal(tensor, killed.state_dict[key]), key


def test_streaming_refuses_workers_that_leave_no_cpu_for_reads(ray_local, stored, tmp_path):
    train, val = stored
    with pytest.raises(ConfigError, match=r"^train.cpus_per_worker: 2 worker\(s\) x 1.5 CPU leave 0 of the cluster's 3 "
                                          r"CPUs for streaming reads, which need input.read_cpus=0.5; "):
        run_training(job(tmp_path, "starved", cpus_per_worker=1.5), train, val)
