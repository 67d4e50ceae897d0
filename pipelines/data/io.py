"""Prepared splits (folders of bounded Parquet parts) and mixed-sample shards as validated Parquet tables."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa

from pipelines import storage, tables
from pipelines.data.dataset import ArrayDataset, MixedDataset, Normalisation
from pipelines.errors import ConfigError, DataError
from pipelines.tasks import get_task


def _flat_list_column(x: np.ndarray, dtype: np.dtype = np.dtype(np.float32)) -> pa.ListArray:
    flat = np.ascontiguousarray(x, dtype=dtype).reshape(len(x), -1)
    width = flat.shape[1]
    offsets = pa.array(np.arange(0, (len(flat) + 1) * width, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(flat.reshape(-1)))


def _unflatten(column: pa.ChunkedArray | pa.Array, shape: tuple[int, ...], dtype: np.dtype = np.dtype(np.float32)) -> np.ndarray:
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    values = column.flatten().to_numpy(zero_copy_only=False)
    # a copy: Arrow buffers are read-only, and torch wants writable arrays
    return np.array(values, dtype=dtype).reshape(len(column), *shape)


SPLIT_MANIFEST = "manifest.json"
# Rows of one split part: a part is what one Ray Data read task holds and what the streamed
# shuffle permutes as a unit, so it bounds memory per read.
DEFAULT_PART_MIB = 64
ROW_GROUP_BYTES = 8 << 20


@dataclass(frozen=True)
class SplitPart:
    file: str
    rows: int
    sha256: str


@dataclass(frozen=True)
class StoredSplit:
    """A prepared split where it lies: a folder of Parquet parts (``dataset`` tables holding the
    raw inputs) and the manifest saying what they hold.

    Attributes:
        url: the folder.
        parts: in row order; rows of the split are the parts' rows concatenated.
        dtype: of the stored inputs (``uint8`` images or ``float32``).
        normalisation: the train split's statistics, applied where the inputs are used.
    """

    url: str
    parts: tuple[SplitPart, ...]
    input_shape: tuple[int, ...]
    dtype: str
    num_classes: int
    task: str
    normalisation: Normalisation | None

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.parts)

    def __len__(self) -> int:
        return self.rows

    @property
    def row_bytes(self) -> int:
        return math.prod(self.input_shape) * np.dtype(self.dtype).itemsize

    @property
    def nbytes(self) -> int:
        """The raw inputs' bytes in memory (what the in-memory path holds per worker)."""
        return self.rows * self.row_bytes

    @property
    def part_rows(self) -> list[int]:
        return [p.rows for p in self.parts]

    def part_url(self, index: int) -> str:
        return storage.join(self.url, self.parts[index].file)

    def fingerprint(self) -> str:
        """A content hash of the split (its parts' hashes and what they hold), for run names."""
        return storage.sha256_bytes(json.dumps(_manifest(self), sort_keys=True).encode())

    def moved(self, url: str) -> StoredSplit:
        """The same split read from another copy of its folder (a shared store)."""
        return replace(self, url=url)


def _manifest(split: StoredSplit) -> dict:
    return {
        "rows": split.rows,
        "input_shape": list(split.input_shape),
        "dtype": split.dtype,
        "num_classes": split.num_classes,
        "task": split.task,
        "normalisation": split.normalisation.as_dict() if split.normalisation else None,
        "parts": [{"file": p.file, "rows": p.rows, "sha256": p.sha256} for p in split.parts],
    }


def dataset_table(dataset: ArrayDataset) -> pa.Table:
    """A split as a ``dataset`` table (x flattened in its stored dtype; its shape goes in the metadata)."""
    return pa.table(
        {"sample_id": pa.array(dataset.ids), "x": _flat_list_column(dataset.x, dataset.x.dtype), "y": pa.array(dataset.y)}
    )


def part_rows_for(row_bytes: int, part_mib: float) -> int:
    """Rows per part: as many as fit in ``part_mib`` MiB of raw inputs, at least one."""
    return max(1, int(part_mib * (1 << 20)) // max(row_bytes, 1))


def write_split(
    url: str, dataset: ArrayDataset, extra_metadata: dict | None = None, part_mib: float = DEFAULT_PART_MIB,
    rows: np.ndarray | None = None,
) -> StoredSplit:
    """Write a split as a folder of ``dataset`` Parquet parts of at most ``part_mib`` MiB of raw
    inputs each (row groups of at most 8 MiB, so a reader holds little more than one), then its
    manifest, last: a folder without one is an unfinished write.

    The inputs stay as they are (uint8 images stay uint8); ``dataset.normalisation`` is recorded.
    ``rows`` (default all) picks the split's rows of ``dataset``, copied a part at a time.
    """
    rows = np.arange(len(dataset)) if rows is None else rows
    task = dataset.task
    spec = tables.dataset_spec(task, dataset.x.dtype)
    metadata = {**(extra_metadata or {}), "input_shape": list(dataset.input_shape), "num_classes": dataset.num_classes,
                "task": task}
    row_bytes = int(np.prod(dataset.input_shape)) * dataset.x.dtype.itemsize
    per_part = part_rows_for(row_bytes, part_mib)
    row_group = max(1, min(per_part, ROW_GROUP_BYTES // max(row_bytes, 1)))
    fs, path = storage.filesystem(url)
    if fs.exists(storage.join(path, SPLIT_MANIFEST)):
        fs.rm(storage.join(path, SPLIT_MANIFEST))  # the old parts are about to be replaced
    parts = []
    for index, start in enumerate(range(0, max(len(rows), 1), per_part)):
        part = dataset.subset(rows[start : start + per_part])
        arrow = dataset_table(part)
        tables.validate(arrow, spec)
        data = tables.parquet_bytes(arrow, metadata, row_group_rows=row_group)
        file = f"part-{index:05d}.parquet"
        storage.write_bytes(storage.join(url, file), data)
        parts.append(SplitPart(file, len(part), storage.sha256_bytes(data)))
    for stale in set(storage.list_names(url)) - {p.file for p in parts} - {SPLIT_MANIFEST}:
        if stale.startswith("part-"):
            fs.rm(storage.join(path, stale))
    split = StoredSplit(url, tuple(parts), dataset.input_shape, dataset.x.dtype.name, dataset.num_classes, task,
                        dataset.normalisation)
    storage.write_json(storage.join(url, SPLIT_MANIFEST), {**(extra_metadata or {}), **_manifest(split)})
    return split


def open_split(url: str) -> StoredSplit:
    """A split's manifest, without reading its parts.

    Raises:
        DataError: no manifest (not prepared, or prepared by an older mixpipe), or one that does not parse.
    """
    manifest_url = storage.join(url, SPLIT_MANIFEST)
    try:
        m = storage.read_json(manifest_url)
        parts = tuple(SplitPart(str(e["file"]), int(e["rows"]), str(e["sha256"])) for e in m["parts"])
        stats = m.get("normalisation")
        return StoredSplit(
            url=url, parts=parts, input_shape=tuple(int(d) for d in m["input_shape"]), dtype=str(np.dtype(m["dtype"])),
            num_classes=int(m["num_classes"]), task=get_task(str(m["task"])).name,
            normalisation=Normalisation(tuple(stats["mean"]), tuple(stats["std"])) if stats else None,
        )
    except FileNotFoundError:
        raise DataError(f"{manifest_url}: no split manifest; run the prepare stage (dvc repro prepare)") from None
    except (ValueError, KeyError, TypeError, ConfigError) as error:
        raise DataError(f"{manifest_url}: not a split manifest ({type(error).__name__}: {error}); "
                        "re-run the prepare stage") from None


def verify_split(split: StoredSplit) -> None:
    """Check every part against the manifest's sha256, reading one MiB at a time: a damaged split
    fails here, naming the file, before Ray tasks or workers meet it.

    Raises:
        DataError: a part missing or changed.
    """
    for index, part in enumerate(split.parts):
        url = split.part_url(index)
        try:
            digest = storage.sha256_file(url)
        except FileNotFoundError:
            raise DataError(f"{url}: a part the split's manifest lists is missing; re-run the prepare stage") from None
        if digest != part.sha256:
            raise DataError(f"{url}: sha256 differs from the split manifest's; the part was changed or truncated")


def part_arrays(split: StoredSplit, arrow: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(x, y, ids)`` of one part's rows, x raw in the split's dtype and shape."""
    task = get_task(split.task)
    try:
        x = _unflatten(arrow["x"], split.input_shape, np.dtype(split.dtype))
    except ValueError:
        raise DataError(f"{split.url}: rows of x do not have the recorded shape {split.input_shape}") from None
    return x, arrow["y"].to_numpy().astype(task.target_dtype), arrow["sample_id"].to_numpy().astype(np.int64)


def read_part(split: StoredSplit, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Part ``index`` of ``split``, checked against the manifest's sha256 and row count."""
    url = split.part_url(index)
    try:
        data = storage.read_bytes(url)
    except FileNotFoundError:
        raise DataError(f"{url}: a part the split's manifest lists is missing; re-run the prepare stage") from None
    if storage.sha256_bytes(data) != split.parts[index].sha256:
        raise DataError(f"{url}: sha256 differs from the split manifest's; the part was changed or truncated")
    arrow, _ = tables.parse_arrow(data, tables.dataset_spec(split.task, np.dtype(split.dtype)), url)
    if arrow.num_rows != split.parts[index].rows:
        raise DataError(f"{url}: {arrow.num_rows} rows, the split manifest records {split.parts[index].rows}")
    return part_arrays(split, arrow)


def read_rows(split: StoredSplit, rows: slice) -> ArrayDataset:
    """Rows ``rows`` of ``split`` (raw, with its normalisation), reading only the parts they lie in."""
    offsets = np.cumsum([0, *split.part_rows])
    pieces = []
    for index in range(len(split.parts)):
        low, high = max(rows.start, offsets[index]), min(rows.stop, offsets[index + 1])
        if low < high:
            x, y, ids = read_part(split, index)
            take = slice(low - offsets[index], high - offsets[index])
            pieces.append((x[take], y[take], ids[take]))
    task = get_task(split.task)
    empty = (np.empty((0, *split.input_shape), np.dtype(split.dtype)), np.empty(0, task.target_dtype), np.empty(0, np.int64))
    x, y, ids = (np.concatenate(column) for column in zip(*pieces)) if pieces else empty
    return ArrayDataset(x=x, y=y, ids=ids, num_classes=split.num_classes, task=split.task,
                        normalisation=split.normalisation)


def read_split(url: str) -> ArrayDataset:
    """Every row of the split in folder ``url`` (raw inputs; ``.normalised()`` readies them).

    Raises:
        DataError: no manifest, a part that is missing, changed or fails its schema.
    """
    split = open_split(url)
    return read_rows(split, slice(0, split.rows))


def split_url(prepared_dir: str, split: str) -> str:
    return storage.join(prepared_dir, split)


def read_prepared(prepared_dir: str, split: str, raw: bool = False) -> ArrayDataset:
    """One split (``train``, ``val`` or ``test``) of the prepare stage's output, normalised
    (float32) unless ``raw``."""
    data = read_split(split_url(prepared_dir, split))
    return data if raw else data.normalised()


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


def first_rows(url: str, count: int) -> pa.Table:
    """The first ``count`` rows of a Parquet file, decoding only the row groups they lie in."""
    import pyarrow.parquet as pq

    fs, path = storage.filesystem(url)
    with fs.open(path, "rb") as handle:
        batch = next(pq.ParquetFile(handle).iter_batches(batch_size=count), None)
    return pa.Table.from_batches([batch]) if batch is not None else pa.table({})
