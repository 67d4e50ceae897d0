"""Prepared splits and mixed-sample shards as validated Parquet tables."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipelines import storage, tables
from pipelines.data.dataset import ArrayDataset, MixedDataset
from pipelines.errors import ConfigError, DataError
from pipelines.tasks import get_task


def _flat_list_column(x: np.ndarray) -> pa.ListArray:
    flat = np.ascontiguousarray(x, dtype=np.float32).reshape(len(x), -1)
    width = flat.shape[1]
    offsets = pa.array(np.arange(0, (len(flat) + 1) * width, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(flat.reshape(-1)))


def _unflatten(column: pa.ChunkedArray, shape: tuple[int, ...]) -> np.ndarray:
    values = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
    # a copy: Arrow buffers are read-only, and torch wants writable arrays
    return np.array(values, dtype=np.float32).reshape(len(column), *shape)


def dataset_table(dataset: ArrayDataset) -> pa.Table:
    """A split as a ``dataset`` table (x flattened; its shape goes in the file metadata)."""
    return pa.table(
        {"sample_id": pa.array(dataset.ids), "x": _flat_list_column(dataset.x), "y": pa.array(dataset.y)}
    )


def write_split(url: str, dataset: ArrayDataset, extra_metadata: dict | None = None) -> None:
    """Write a split as a validated ``dataset`` Parquet table with its input shape, classes and task."""
    metadata = {"input_shape": list(dataset.input_shape), "num_classes": dataset.num_classes, "task": dataset.task}
    spec = tables.table_for("dataset", dataset.task)
    tables.write_table(dataset_table(dataset), url, spec, {**(extra_metadata or {}), **metadata})


def read_split(url: str) -> ArrayDataset:
    """Read a split written by :func:`write_split`.

    Raises:
        DataError: missing file, failed schema, or metadata that does not fit the rows.
    """
    arrow, metadata = tables.read_arrow(url, "dataset")
    try:
        shape = tuple(int(d) for d in metadata["input_shape"])
        num_classes = int(metadata["num_classes"])
        task = get_task(str(metadata.get("task", "classification")))
    except (KeyError, TypeError, ValueError, ConfigError):
        raise DataError(f"{url}: dataset table lacks input_shape/num_classes/task metadata") from None
    try:
        x = _unflatten(arrow["x"], shape)
    except ValueError:
        raise DataError(f"{url}: rows of x do not have the recorded shape {shape}") from None
    return ArrayDataset(
        x=x,
        y=arrow["y"].to_numpy().astype(task.target_dtype),
        ids=arrow["sample_id"].to_numpy().astype(np.int64),
        num_classes=num_classes,
        task=task.name,
    )


def read_prepared(prepared_dir: str, split: str) -> ArrayDataset:
    """One split (``train``, ``val`` or ``test``) of the prepare stage's output."""
    return read_split(storage.join(prepared_dir, f"{split}.parquet"))


def mixed_samples_table(
    x: np.ndarray,
    sample_id: np.ndarray,
    partner_id: np.ndarray,
    y: np.ndarray,
    y_partner: np.ndarray,
    lam: np.ndarray,
    task: str = "classification",
) -> pa.Table:
    """Mixed samples as a validated ``mixed_samples`` table (float targets for regression)."""
    dtype = get_task(task).target_dtype
    arrow = pa.table(
        {
            "sample_id": pa.array(np.asarray(sample_id, dtype=np.int64)),
            "partner_id": pa.array(np.asarray(partner_id, dtype=np.int64)),
            "x": _flat_list_column(x),
            "y": pa.array(np.asarray(y, dtype=dtype)),
            "y_partner": pa.array(np.asarray(y_partner, dtype=dtype)),
            "lam": pa.array(np.asarray(lam, dtype=np.float32)),
        }
    )
    tables.validate(arrow, tables.table_for("mixed_samples", task))
    return arrow


def read_shards(directory: str) -> MixedDataset:
    """Every shard of one method's shard set, in manifest order, checked against the manifest.

    Raises:
        DataError: no manifest, a shard whose bytes do not match its recorded sha256 or row count,
            or shards that disagree on input shape or classes.
    """
    manifest_url = storage.join(directory, "manifest.json")
    rerun = "re-run the augment stage for this method (dvc repro -f -s augment@<method>)"
    try:
        manifest = storage.read_json(manifest_url)
        entries = [(str(e["file"]), str(e["sha256"]), int(e["rows"])) for e in manifest["shards"]]
    except FileNotFoundError:
        raise DataError(f"{manifest_url}: no shard manifest (run the augment stage for this method)") from None
    except (ValueError, KeyError, TypeError) as error:  # not JSON, or not a manifest
        raise DataError(f"{manifest_url}: not a shard manifest ({type(error).__name__}: {error}); {rerun}") from None
    parts, shapes = [], set()
    for file, sha256, rows in entries:
        url = storage.join(directory, file)
        try:
            data = storage.read_bytes(url)
        except FileNotFoundError:
            raise DataError(f"{url}: a shard the manifest lists is missing; {rerun}") from None
        if storage.sha256_bytes(data) != sha256:
            raise DataError(f"{url}: sha256 differs from the manifest's; the shard was changed or truncated")
        arrow, metadata = tables.parse_arrow(data, "mixed_samples", url)
        if arrow.num_rows != rows:
            raise DataError(f"{url}: {arrow.num_rows} rows, the manifest records {rows}")
        shape = tuple(int(d) for d in metadata["input_shape"])
        shapes.add((shape, int(metadata["num_classes"]), str(metadata.get("task", "classification"))))
        parts.append((arrow, shape))
    if len(shapes) != 1:
        raise DataError(f"{directory}: shards disagree on input shape / classes / task: {sorted(shapes)}")
    (shape, num_classes, task_name), = shapes
    task = get_task(task_name)

    def column(name: str) -> np.ndarray:
        return np.concatenate([arrow[name].to_numpy() for arrow, _ in parts])

    return MixedDataset(
        x=np.concatenate([_unflatten(a["x"], s) for a, s in parts]),
        y=column("y").astype(task.target_dtype),
        ids=column("sample_id").astype(np.int64),
        num_classes=num_classes,
        task=task.name,
        y_partner=column("y_partner").astype(task.target_dtype),
        lam=column("lam").astype(np.float32),
    )
