"""A worker's batches: from splits held in memory, or streamed part by part through Ray Data.

Both give the same batches in the same order for a seed (:mod:`pipelines.training.batching`),
with the raw inputs (uint8 images or float32) normalised on the worker's device, batch by batch.
The streamed path holds one shuffle window of raw rows (plus Ray Data's prefetch), whatever the
split's size; the in-memory path holds the whole split on the device and gathers each batch.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pipelines.data import ArrayDataset, Normalisation, StoredSplit, contiguous_share
from pipelines.data.streaming import stream_parts
from pipelines.errors import DataError
from pipelines.tasks import get_task
from pipelines.training.batching import EpochPlan, epoch_plan, rank_positions

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # inputs, labels, global rows


def host_tensor(values: np.ndarray) -> torch.Tensor:
    """A tensor over ``values`` (copied when numpy's buffer is read-only, as Arrow's are)."""
    return torch.from_numpy(np.ascontiguousarray(values)) if values.flags.writeable else torch.tensor(values)


def to_device(values: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """On ``device``, as stored: for CUDA, staged through pinned host memory and copied without
    blocking the host."""
    host = values if isinstance(values, torch.Tensor) else host_tensor(values)
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


def ready(x: torch.Tensor, normalisation: Normalisation | None, precision: str) -> torch.Tensor:
    """Raw inputs as the model takes them: normalised to float32 (then ``precision``)."""
    if normalisation is not None:
        x = normalisation.apply_torch(x)
    return x.to(getattr(torch, precision))


@dataclass
class MemoryInput:
    """A split on the device, raw, gathered batch by batch."""

    x: torch.Tensor
    y: torch.Tensor
    normalisation: Normalisation | None
    precision: str
    part_rows: Sequence[int] | None = None
    window_rows: int | None = None

    @classmethod
    def of(cls, data: ArrayDataset, device: torch.device, precision: str, part_rows: Sequence[int] | None = None,
           window_rows: int | None = None) -> MemoryInput:
        return cls(to_device(data.x, device), to_device(data.y, device), data.normalisation, precision, part_rows,
                   window_rows)

    def __len__(self) -> int:
        return len(self.x)

    def train_batches(self, per_worker_batch: int, world: int, rank: int, seed: int, epoch: int) -> Iterator[Batch]:
        positions = rank_positions(len(self.x), per_worker_batch, world, rank)
        plan = epoch_plan(self.part_rows or [len(self.x)], self.window_rows or max(len(self.x), 1), seed, epoch)
        for rows in torch.from_numpy(plan.order[positions]).split(per_worker_batch):
            rows = rows.to(self.x.device)
            yield ready(self.x[rows], self.normalisation, self.precision), self.y[rows], rows

    def read_ahead(self, seed: int, epoch: int) -> None:
        """Nothing to read: the split is in memory (the streamed input's counterpart)."""

    def read_share_ahead(self, world: int, rank: int) -> None:
        """Nothing to read: the split is in memory (the streamed input's counterpart)."""

    def val_batches(self, world: int, rank: int, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        share = contiguous_share(len(self.x), world, rank)
        xs, ys = self.x[share], self.y[share]
        for start in range(0, max(len(xs), 1), batch_size):  # an empty share still yields one (empty) batch
            yield ready(xs[start : start + batch_size], self.normalisation, self.precision), ys[start : start + batch_size]


@dataclass
class StreamedInput:
    """A split read through Ray Data, part by part in each epoch's order.

    An epoch's parts are read by a thread of their own, started by :meth:`read_ahead` before
    the epoch (while the model is built, or while the previous epoch validates and saves its
    checkpoint) and kept at most a window ahead of the loop: a worker holds up to two windows,
    plus its validation share when that fits a window (read in the background from the start).

    Attributes:
        split: where the parts lie (a URL every node of the cluster reads).
        window_rows: rows per shuffle window.
        read_cpus: CPUs each Ray Data read task reserves.
        prefetch: blocks Ray Data reads ahead of the reading thread.
    """

    split: StoredSplit
    device: torch.device
    precision: str
    window_rows: int
    read_cpus: float = 0.5
    prefetch: int = 2
    _held: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)
    _ahead: dict[int | tuple, _ReadAhead] = field(default_factory=dict, repr=False)  # epoch, or ("share", world, rank)

    def __len__(self) -> int:
        return self.split.rows

    def _blocks(self, parts: Sequence[int]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return stream_parts(self.split, parts, self.read_cpus, self.prefetch)

    def read_ahead(self, seed: int, epoch: int) -> None:
        """Start reading ``epoch``'s parts in the background (once per epoch)."""
        if epoch not in self._ahead:
            parts = epoch_plan(self.split.part_rows, self.window_rows, seed, epoch).part_order
            per_window = -(-self.window_rows // max(self.split.part_rows, default=1))
            self._ahead[epoch] = _ReadAhead(self._blocks(parts), per_window + 1)

    def train_batches(self, per_worker_batch: int, world: int, rank: int, seed: int, epoch: int) -> Iterator[Batch]:
        plan = epoch_plan(self.split.part_rows, self.window_rows, seed, epoch)
        positions = rank_positions(self.split.rows, per_worker_batch, world, rank)
        self.read_ahead(seed, epoch)
        reader = self._ahead.pop(epoch)
        try:
            yield from self._windows(reader, plan, positions, per_worker_batch, epoch)
        finally:
            reader.close()  # the stream's tail is the dropped partial batch, or the loop stopped

    def _windows(
        self, blocks: Iterator[tuple[np.ndarray, np.ndarray]], plan: EpochPlan, positions: np.ndarray,
        per_worker_batch: int, epoch: int,
    ) -> Iterator[Batch]:
        """This rank's batches: each window of the stream filled from ``blocks``, permuted, and
        cut at the rank's ``positions`` in the epoch order."""
        rows = self.split.rows
        last_window = int(positions[-1]) // self.window_rows
        shape, dtype = self.split.input_shape, np.dtype(self.split.dtype)
        window = 0
        size = min(self.window_rows, rows)
        buffer_x, buffer_y = np.empty((size, *shape), dtype), None
        filled = 0
        pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        held = 0
        for x, y in blocks:
            if buffer_y is None:
                buffer_y = np.empty(size, y.dtype)
            used = 0
            while used < len(x):
                take = min(size - filled, len(x) - used)
                buffer_x[filled : filled + take] = x[used : used + take]
                buffer_y[filled : filled + take] = y[used : used + take]
                filled, used = filled + take, used + take
                if filled < size:
                    continue
                # window complete: this rank's rows of it, in the window's permuted order
                start = window * self.window_rows
                mine = positions[(positions >= start) & (positions < start + size)] - start
                local = plan.permutations[window][mine]
                pending.append((buffer_x[local], buffer_y[local], plan.stream[start + local]))
                held += len(local)
                while held >= per_worker_batch:
                    batch, pending, held = _cut(pending, per_worker_batch)
                    yield self._on_device(*batch)
                if window == last_window:
                    return  # the rest of the epoch is the dropped partial batch
                window += 1
                size = min(self.window_rows, rows - window * self.window_rows)
                filled = 0
        raise DataError(f"{self.split.url}: the stream ended at window {window} of epoch {epoch}; parts are shorter than "
                        "the manifest says")

    def val_batches(self, world: int, rank: int, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's share of the split in batches, as :meth:`MemoryInput.val_batches` gives
        them. A share no larger than a shuffle window (the memory a worker has for its data) is
        read once and kept for the following epochs; a larger one is streamed every epoch."""
        held = self._held.get((world, rank))
        if held is None:
            share = contiguous_share(self.split.rows, world, rank)
            if (share.stop - share.start) > self.window_rows:
                yield from self._stream_val(share, batch_size)
                return
            self.read_share_ahead(world, rank)
            batches = list(self._ahead.pop(("share", world, rank)))
            held = self._held[(world, rank)] = tuple(np.concatenate(column) for column in zip(*batches))
        x, y = held
        for start in range(0, max(len(x), 1), batch_size):
            yield self._on_device(x[start : start + batch_size], y[start : start + batch_size], None)[:2]

    def read_share_ahead(self, world: int, rank: int) -> None:
        """Start reading this rank's share in the background, when it is one :meth:`val_batches`
        keeps (no larger than a window): the first validation then finds it read, instead of
        waiting for Ray Data to start and read it after the first epoch's training."""
        share = contiguous_share(self.split.rows, world, rank)
        key = ("share", world, rank)
        if (world, rank) in self._held or key in self._ahead or (share.stop - share.start) > self.window_rows:
            return
        whole = max(share.stop - share.start, 1)  # one block: the share is kept as one array
        self._ahead[key] = _ReadAhead(self._stream_val(share, whole, on_device=False), depth=2)

    def _stream_val(self, share: slice, batch_size: int, on_device: bool = True) -> Iterator[tuple]:
        """Rows ``share`` of the split, ``batch_size`` at a time (on the device, or as host arrays)."""
        offsets = np.concatenate([[0], np.cumsum(self.split.part_rows)])
        parts = [p for p in range(len(self.split.parts)) if offsets[p] < share.stop and offsets[p + 1] > share.start]
        position = int(offsets[parts[0]]) if parts else 0
        pending: list[tuple[np.ndarray, ...]] = []
        held, yielded = 0, False
        for x, y in self._blocks(parts):
            low, high = max(share.start - position, 0), min(share.stop - position, len(x))
            position += len(x)
            if low < high:
                pending.append((x[low:high], y[low:high]))
                held += high - low
            while held >= batch_size or (held and position >= share.stop):
                (bx, by), pending, held = _cut(pending, min(held, batch_size))
                yielded = True
                yield self._on_device(bx, by, None)[:2] if on_device else (bx, by)
        if not yielded:  # an empty share still yields one (empty) batch
            empty = np.empty((0, *self.split.input_shape), np.dtype(self.split.dtype))
            labels = np.empty(0, get_task(self.split.task).target_dtype)
            yield self._on_device(empty, labels, None)[:2] if on_device else (empty, labels)

    def _on_device(self, x: np.ndarray, y: np.ndarray, rows: np.ndarray | None) -> Batch:
        inputs = ready(to_device(x, self.device), self.split.normalisation, self.precision)
        labels = to_device(y, self.device)
        return inputs, labels, to_device(rows, self.device) if rows is not None else labels[:0]


class _ReadAhead:
    """Blocks of a stream, read by a daemon thread into a queue of at most ``depth`` blocks, so
    the reads overlap the training; iterating gives the blocks in order (and the reader's error)."""

    _END = object()

    def __init__(self, blocks: Iterator[Any], depth: int) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(blocks,), daemon=True, name="mixpipe-read-ahead")
        self._thread.start()

    def _read(self, blocks: Iterator[Any]) -> None:
        try:
            for block in blocks:
                if not self._put(block):
                    return
            self._put(self._END)
        except BaseException as error:  # handed to the loop, which raises it
            self._put(error)
        finally:
            close = getattr(blocks, "close", None)
            if close is not None:
                close()  # ends Ray Data's execution of a stream left unfinished

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[Any]:
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        """Stop reading: the rest of the stream is not wanted."""
        self._stop.set()


def _cut(pending: list[tuple[np.ndarray, ...]], count: int) -> tuple[tuple[np.ndarray, ...], list, int]:
    """The first ``count`` rows of ``pending`` (a list of column tuples), and what remains."""
    taken, rest, need = [], [], count
    for piece in pending:
        if need == 0:
            rest.append(piece)
        elif len(piece[0]) <= need:
            taken.append(piece)
            need -= len(piece[0])
        else:
            taken.append(tuple(c[:need] for c in piece))
            rest.append(tuple(c[need:] for c in piece))
            need = 0
    columns = tuple(np.concatenate(c) for c in zip(*taken))
    return columns, rest, sum(len(p[0]) for p in rest)

