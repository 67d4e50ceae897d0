"""Reading a prepared split's parts through Ray Data, in a given order, a part per block."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np

from pipelines.data.io import StoredSplit, part_arrays
from pipelines.errors import DataError
from pipelines.part_reads import read_parts


def stream_parts(
    split: StoredSplit, parts: Sequence[int], read_cpus: float = 0.5, prefetch: int = 2,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(x, y)`` of the rows of ``parts`` of ``split``, in that order, block by block (x raw).

    Ray Data reads the parts in its tasks (``read_cpus`` each) ahead of the caller. The parts
    are Ray Data rows mapped to their contents, not a ``read_parquet`` of the files: given the
    files in the epoch's order, ``read_parquet`` (with ``preserve_order``) returned a later
    file's rows first on 60k CIFAR images (the order check below caught it), so a worker's
    batches would have depended on timing. Ordered items through ``map_batches`` with
    ``preserve_order`` keep the order.

    Raises:
        DataError: rows of another part than the one due (the order would differ).
    """
    import ray.data

    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False  # the training loop prints one line per epoch; Ray Data would add several
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    items = [{"part": int(p), "url": split.part_url(p)} for p in parts]
    dataset = ray.data.from_items(items, override_num_blocks=max(len(items), 1)).map_batches(
        read_parts, batch_size=1, batch_format="pyarrow", num_cpus=read_cpus,
    )
    expected, part, left = iter(parts), None, 0
    for table in dataset.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=prefetch):
        tags = table["part"].to_numpy()
        starts = np.flatnonzero(np.r_[True, tags[1:] != tags[:-1]])
        for run, count in zip(tags[starts], np.diff(np.r_[starts, len(tags)]), strict=True):
            if left == 0:  # a new part begins: it must be the next one asked for
                part = next(expected, None)
                left = split.parts[part].rows if part is not None else 0
            if run != part or count > left:
                raise DataError(f"{split.url}: Ray Data returned rows of part {run} where part {part} was due; "
                                "the epoch order would differ")
            left -= count
        x, y, _ = part_arrays(split, table.drop_columns(["part"]))
        yield x, y
