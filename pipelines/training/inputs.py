"""A worker's batches: from splits held in memory, or streamed part by part through Ray Data.

Both give the same batches in the same order for a seed (:mod:`pipelines.training.batching`),
with the raw inputs (uint8 images or float32) normalised on the worker's device, batch by batch.
The streamed path holds one shuffle window of raw rows (plus Ray Data's prefetch), whatever the
split's size; the in-memory path holds the whole split on the device and gathers each batch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipelines import storage
from pipelines.data import ArrayDataset, Normalisation, StoredSplit, contiguous_share
from pipelines.data.io import part_arrays
from pipelines.errors import DataError
from pipelines.tasks import get_task
from pipelines.training.batching import epoch_plan, rank_positions

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

    def val_batches(self, world: int, rank: int, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        share = contiguous_share(len(self.x), world, rank)
        xs, ys = self.x[share], self.y[share]
        for start in range(0, max(len(xs), 1), batch_size):  # an empty share still yields one (empty) batch
            yield ready(xs[start : start + batch_size], self.normalisation, self.precision), ys[start : start + batch_size]


@dataclass
class StreamedInput:
    """A split read through Ray Data, part by part in each epoch's order.

    Attributes:
        split: where the parts lie (a URL every node of the cluster reads).
        window_rows: rows per shuffle window (what one worker holds).
        read_cpus: CPUs each Ray Data read task reserves.
        prefetch: blocks Ray Data reads ahead of the loop.
    """

    split: StoredSplit
    device: torch.device
    precision: str
    window_rows: int
    read_cpus: float = 0.5
    prefetch: int = 2

    def __len__(self) -> int:
        return self.split.rows

    def _blocks(self, parts: Sequence[int]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(x, y)`` of the rows of ``parts``, in that order, one part per block.

        Ray Data reads the parts in its tasks (``input.read_cpus`` each) ahead of the loop. The
        parts are Ray Data rows mapped to their contents, not a ``read_parquet`` of the files:
        given the files in the epoch's order, ``read_parquet`` (with ``preserve_order``) returned
        a later file's rows first on 60k CIFAR images (the order check below caught it), so a
        worker's batches would have depended on timing. Ordered items through ``map_batches``
        with ``preserve_order`` keep the epoch's part order.
        """
        import ray.data

        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False  # the loop prints one line per epoch; Ray Data would add several
        context.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        items = [{"part": int(p), "url": self.split.part_url(p)} for p in parts]
        dataset = ray.data.from_items(items, override_num_blocks=max(len(items), 1)).map_batches(
            _read_parts, batch_size=1, batch_format="pyarrow", num_cpus=self.read_cpus,
        )
        expected, part, left = iter(parts), None, 0
        for table in dataset.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=self.prefetch):
            tags = table["part"].to_numpy()
            starts = np.flatnonzero(np.r_[True, tags[1:] != tags[:-1]])
            for run, count in zip(tags[starts], np.diff(np.r_[starts, len(tags)]), strict=True):
                if left == 0:  # a new part begins: it must be the next of the epoch's order
                    part = next(expected, None)
                    left = self.split.parts[part].rows if part is not None else 0
                if run != part or count > left:
                    raise DataError(f"{self.split.url}: Ray Data returned rows of part {run} where part {part} was due; "
                                    "the epoch order would differ")
                left -= count
            x, y, _ = part_arrays(self.split, table.drop_columns(["part"]))
            yield x, y

    def train_batches(self, per_worker_batch: int, world: int, rank: int, seed: int, epoch: int) -> Iterator[Batch]:
        rows = self.split.rows
        plan = epoch_plan(self.split.part_rows, self.window_rows, seed, epoch)
        positions = rank_positions(rows, per_worker_batch, world, rank)
        if not len(positions):
            return
        last_window = int(positions[-1]) // self.window_rows
        shape, dtype = self.split.input_shape, np.dtype(self.split.dtype)
        window = 0
        size = min(self.window_rows, rows)
        buffer_x, buffer_y = np.empty((size, *shape), dtype), None
        filled = 0
        pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        held = 0
        for x, y in self._blocks(plan.part_order):
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
        share = contiguous_share(self.split.rows, world, rank)
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
                yield self._on_device(bx, by, None)[:2]
        if not yielded:  # an empty share still yields one (empty) batch
            empty = np.empty((0, *self.split.input_shape), np.dtype(self.split.dtype))
            yield self._on_device(empty, np.empty(0, get_task(self.split.task).target_dtype), None)[:2]

    def _on_device(self, x: np.ndarray, y: np.ndarray, rows: np.ndarray | None) -> Batch:
        inputs = ready(to_device(x, self.device), self.split.normalisation, self.precision)
        labels = to_device(y, self.device)
        return inputs, labels, to_device(rows, self.device) if rows is not None else labels[:0]


def _read_parts(batch: Any) -> Any:
    """A Ray Data task: the ``dataset`` rows of the parts named in ``batch`` (a pyarrow table of
    ``part`` and ``url``), tagged with their part."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for part, url in zip(batch["part"].to_pylist(), batch["url"].to_pylist(), strict=True):
        fs, path = storage.filesystem(url)
        with fs.open(path, "rb") as handle:
            table = pq.read_table(handle, columns=["sample_id", "x", "y"])
        tables.append(table.append_column("part", pa.array(np.full(table.num_rows, part, np.int64))))
    return pa.concat_tables(tables)


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

