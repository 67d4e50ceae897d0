"""Which samples each rank trains on, per epoch and step, in an order a stream can follow.

A prepared split is a sequence of parts. Each epoch visits the parts in a seeded order (the
*stream*), cuts the stream into windows of ``window_rows`` rows and shuffles each window with a
seeded permutation: the epoch order. A reader that holds one window at a time produces exactly
the order an in-memory reader computes from the indices, so both paths give the same batches. A
split that fits in one window (every split of the bundled datasets) is fully shuffled, by the
same permutation it had before splits were streamed.

Global batch ``k`` is ``order[k*B : (k+1)*B]`` with ``B = per_worker_batch * world_size``, and
rank ``r`` takes the ``r``-th contiguous slice of it. DDP averages the ranks' mean gradients, so
``n`` workers at batch ``b`` see exactly the batches one worker at ``n*b`` sees. The last partial
global batch is dropped so every rank runs the same number of steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pipelines.seeding import derive_seed, torch_generator


def steps_per_epoch(num_samples: int, per_worker_batch: int, world_size: int) -> int:
    return num_samples // (per_worker_batch * world_size)


@dataclass(frozen=True)
class EpochPlan:
    """One epoch's order over a split.

    Attributes:
        part_order: the parts in the order the epoch reads them.
        stream: global row indices (rows of the parts concatenated in split order) as read.
        window_rows: rows per shuffle window of the stream.
        permutations: per window, the order its rows are taken in (positions within the window).
    """

    part_order: tuple[int, ...]
    stream: np.ndarray
    window_rows: int
    permutations: tuple[np.ndarray, ...]

    @property
    def order(self) -> np.ndarray:
        """Global row indices in the epoch's order."""
        if not self.permutations:
            return self.stream[:0]
        return np.concatenate([
            self.stream[w * self.window_rows : (w + 1) * self.window_rows][perm] for w, perm in enumerate(self.permutations)
        ])


def epoch_plan(part_rows: Sequence[int], window_rows: int, seed: int, epoch: int) -> EpochPlan:
    """The order of ``epoch`` over a split whose parts hold ``part_rows`` rows."""
    if window_rows < 1:
        raise ValueError(f"a shuffle window needs at least one row, got {window_rows}")
    offsets = np.concatenate([[0], np.cumsum(part_rows, dtype=np.int64)])
    parts = torch.randperm(len(part_rows), generator=torch_generator(derive_seed(seed, "part-order", epoch))).tolist()
    stream = np.concatenate([np.arange(offsets[p], offsets[p + 1], dtype=np.int64) for p in parts]) if parts else np.empty(0, np.int64)
    # one generator for the epoch's windows, drawn in stream order: one window is one randperm of
    # the split, the order every split had before parts and windows
    generator = torch_generator(derive_seed(seed, "epoch-order", epoch))
    permutations = tuple(
        torch.randperm(min(window_rows, len(stream) - start), generator=generator).numpy()
        for start in range(0, len(stream), window_rows)
    )
    return EpochPlan(tuple(parts), stream, window_rows, permutations)


def rank_positions(num_samples: int, per_worker_batch: int, world_size: int, rank: int) -> np.ndarray:
    """Positions in the epoch order that rank ``rank`` trains on, batch after batch.

    Raises:
        ValueError: fewer samples than one global batch, or a rank outside ``[0, world_size)``.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    global_batch = per_worker_batch * world_size
    steps = steps_per_epoch(num_samples, per_worker_batch, world_size)
    if steps == 0:
        raise ValueError(f"{num_samples} samples do not fill one global batch of {global_batch}")
    starts = np.arange(steps, dtype=np.int64) * global_batch + rank * per_worker_batch
    return (starts[:, None] + np.arange(per_worker_batch, dtype=np.int64)).reshape(-1)


def rank_batches(
    num_samples: int, per_worker_batch: int, world_size: int, rank: int, seed: int, epoch: int,
    part_rows: Sequence[int] | None = None, window_rows: int | None = None,
) -> list[torch.Tensor]:
    """Global row indices of this rank's batches in ``epoch`` (a split of one part and one window
    unless ``part_rows``/``window_rows`` say otherwise).

    Raises:
        ValueError: fewer samples than one global batch, or a rank outside ``[0, world_size)``.
    """
    positions = rank_positions(num_samples, per_worker_batch, world_size, rank)
    plan = epoch_plan(part_rows or [num_samples], window_rows or max(num_samples, 1), seed, epoch)
    rows = torch.from_numpy(plan.order[positions])
    return list(rows.split(per_worker_batch))


def mixing_seed(seed: int, rank: int, epoch: int, step: int) -> int:
    """The seed of one rank's mixing draws at one step: ranks never share λ or partners."""
    return derive_seed(seed, "mix", rank, epoch, step)
