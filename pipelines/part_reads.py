"""The body of a Ray Data read task over Parquet parts named by URL (:mod:`pipelines.data.streaming`).

A module of its own, importing only pyarrow, numpy and :mod:`pipelines.storage`: a task process
imports the module that defines its function, and ``pipelines.data`` (pandera, pandas) costs two
seconds more per fresh process than this.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipelines import storage


def read_parts(batch: Any) -> Any:
    """The ``dataset`` rows of the parts named in ``batch`` (a pyarrow table of ``part`` and
    ``url``), tagged with their part."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for part, url in zip(batch["part"].to_pylist(), batch["url"].to_pylist(), strict=True):
        fs, path = storage.filesystem(url)
        with fs.open(path, "rb") as handle:
            table = pq.read_table(handle, columns=["sample_id", "x", "y"])
        tables.append(table.append_column("part", pa.array(np.full(table.num_rows, part, np.int64))))
    return pa.concat_tables(tables)
