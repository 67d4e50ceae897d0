"""The dataset registry: ``data.name`` in params.yaml picks a loader from :data:`DATASETS`.

Every loader is called as ``loader(source=..., seed=..., **data.options)`` and returns an
:class:`ArrayDataset` of the whole dataset; the prepare stage splits it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Annotated

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field

from pipelines import storage, tables
from pipelines.data.dataset import ArrayDataset, check_values
from pipelines.errors import ConfigError, DataError
from pipelines.registry import Registry, check_arguments

DatasetLoader = Callable[..., ArrayDataset]
DATASETS: Registry[DatasetLoader] = Registry("dataset")


def _bundled(name: str, source: str | None) -> None:
    if source is not None:
        raise ConfigError(f"data.source: the {name} dataset is bundled or generated and takes no source, got {source!r}")


def _needs_source(name: str, source: str | None) -> str:
    if not source:
        raise ConfigError(f"data.source: the {name} dataset is read from a path or URL; set data.source")
    return source


@DATASETS.register("digits")
def load_digits(source: str | None = None, seed: int = 0) -> ArrayDataset:
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes).

    Pixels are scaled from 0..16 to [0, 1]; inputs have shape ``(1797, 1, 8, 8)``.
    """
    _bundled("digits", source)
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    x = (bunch.images.astype(np.float32) / np.float32(16.0))[:, None, :, :]
    y = bunch.target.astype(np.int64)
    return ArrayDataset(x=x, y=y, ids=np.arange(len(y), dtype=np.int64), num_classes=10)


@DATASETS.register("diabetes")
def load_diabetes(source: str | None = None, seed: int = 0) -> ArrayDataset:
    """scikit-learn's bundled diabetes regression set (Efron et al., "Least Angle Regression", 2004):
    442 patients, 10 baseline features, a disease-progression score one year later (25..346).

    Features are the raw (unscaled) values as ``(442, 10, 1)``: ten channels of length one, so
    the prepare stage standardises each feature with train-split statistics (sklearn's ``scaled``
    variant would use all 442 rows, test included). Targets are float32; prepare standardises them.
    """
    _bundled("diabetes", source)
    from sklearn.datasets import load_diabetes as sklearn_diabetes

    bunch = sklearn_diabetes(scaled=False)
    x = bunch.data.astype(np.float32)[:, :, None]
    y = bunch.target.astype(np.float32)
    return ArrayDataset(x=x, y=y, ids=np.arange(len(y), dtype=np.int64), num_classes=1, task="regression")


load_diabetes.task = "regression"


def dataset_task(name: str) -> str:
    """The task of the registered dataset ``name`` (loaders mark regression with a ``task`` attribute)."""
    return getattr(DATASETS.get(name, key="data.name"), "task", "classification")


@DATASETS.register("mnist1d")
def load_mnist1d(source: str | None = None, seed: int = 0, num_samples: int = 12000) -> ArrayDataset:
    """MNIST-1D generated offline (:mod:`pipelines.data.mnist1d`): ``(N, 1, 40)`` signals, 10 classes.

    Args:
        num_samples: how many to generate; ``seed`` fixes them. The paper uses 5000; the default
            12000 leaves room for a test split (params: half) whose 95% intervals are narrow
            enough to tell mixing and merge methods apart.
    """
    _bundled("mnist1d", source)
    if num_samples < 10:
        raise ConfigError(f"data.options.num_samples must be >= 10, got {num_samples!r}")
    from pipelines.data.mnist1d import generate

    x, y = generate(int(num_samples), seed)
    return ArrayDataset(x=x, y=y, ids=np.arange(len(y), dtype=np.int64), num_classes=10)


def _cifar(name: str, source: str | None) -> ArrayDataset:
    from pipelines.data.cifar import load_cifar

    x, y, classes = load_cifar(name, _needs_source(name, source))
    return ArrayDataset(x=x, y=y, ids=np.arange(len(y), dtype=np.int64), num_classes=classes)


@DATASETS.register("cifar10")
def load_cifar10(source: str | None = None, seed: int = 0) -> ArrayDataset:
    """CIFAR-10 (Krizhevsky 2009) from ``cifar-10-python.tar.gz`` or its folder at ``source``:
    the 50k training and 10k test images together, ``(60000, 3, 32, 32)`` uint8 (normalised where used)."""
    return _cifar("cifar10", source)


@DATASETS.register("cifar100")
def load_cifar100(source: str | None = None, seed: int = 0) -> ArrayDataset:
    """CIFAR-100 with its 100 fine labels, from ``cifar-100-python.tar.gz`` or its folder."""
    return _cifar("cifar100", source)


@DATASETS.register("image_folder")
def load_image_folder(
    source: str | None = None, seed: int = 0, mode: str = "RGB", size: Sequence[int] | None = None,
) -> ArrayDataset:
    """A user's images in torchvision's ``ImageFolder`` layout (``<source>/<class>/<image>.png``,
    PNG or JPEG, at any fsspec URL), decoded with Pillow (:mod:`pipelines.data.image_folder`):
    ``(N, C, H, W)`` uint8 (normalised where used), classes numbered in sorted order.

    Args:
        mode: ``RGB`` (3 channels) or ``L`` (grey, 1 channel).
        size: ``[height, width]`` to resize every image to; without it all must share one size.
    """
    from pipelines.data.image_folder import load_images

    pixels, labels, classes = load_images(_needs_source("image_folder", source), mode, size)
    if len(classes) < 2:
        raise DataError(f"data.source: {source} has one class folder ({classes[0]!r}); a classifier needs two or more")
    return ArrayDataset(x=pixels, y=labels, ids=np.arange(len(labels), dtype=np.int64), num_classes=len(classes))


@DATASETS.register("parquet")
def load_parquet(
    source: str | None = None, seed: int = 0, x_column: str = "x", y_column: str = "label",
    shape: Annotated[Sequence[Annotated[int, Field(gt=0)]], Field(min_length=1)] | None = None,
    num_classes: Annotated[int, Field(ge=2)] | None = None, id_column: str | None = None,
) -> ArrayDataset:
    """A user's Parquet table at any fsspec URL: one list-of-numbers column of inputs, one
    integer label column, optionally a sample-id column. A list of uint8 (image pixels) stays
    uint8; any other numbers become float32.

    Args:
        x_column, y_column, id_column: column names (``data.options``).
        shape: the per-sample input shape, e.g. ``[3, 32, 32]``; default ``[1, length]``.
        num_classes: default: the largest label + 1.

    Raises:
        DataError: a missing column, a column of the wrong type, rows of different lengths,
            negative labels, or a shape that does not fit the rows (pandera does the checks).
    """
    url = _needs_source("parquet", source)
    try:
        fs, path = storage.filesystem(url)
        with fs.open(path, "rb") as handle:
            x, y, ids, width = _read_user_table(url, pq.ParquetFile(handle), x_column, y_column, id_column)
    except FileNotFoundError:
        raise DataError(f"data.source: no file at {url}") from None
    except (pa.ArrowException, OSError) as error:  # not Parquet, or a corrupt page (ZSTD) in one
        raise DataError(f"data.source: {url} is not a readable Parquet file ({str(error).splitlines()[0][:200]})") from None
    rows = len(y)
    shape = tuple(int(d) for d in shape) if shape is not None else (1, width)
    if math.prod(shape) != width:
        raise DataError(f"data.options.shape {list(shape)} holds {math.prod(shape)} values, but rows of {x_column!r} have {width}")
    classes = int(num_classes) if num_classes is not None else int(y.max()) + 1
    if classes > rows:  # a model head that size would not fit in memory long before this matters
        raise DataError(f"data.options.num_classes is {classes}, more classes than the table's {rows} rows")
    if y.max() >= classes:
        raise DataError(f"data.options.num_classes is {classes} but {y_column!r} holds label {int(y.max())}")
    ids = ids if ids is not None else np.arange(rows, dtype=np.int64)
    return ArrayDataset(x=x.reshape(rows, *shape), y=y.astype(np.int64), ids=ids, num_classes=classes)


_READ_ROWS = 4096  # rows decoded at a time: the inputs are filled into one array, never held twice


def _read_user_table(
    url: str, parquet: pq.ParquetFile, x_column: str, y_column: str, id_column: str | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int]:
    """``(x [N, width], y, ids or None, width)`` of a user table, read a batch of rows at a time
    and checked batch by batch (types, lengths, labels, nulls), so that memory holds the inputs
    once (400k 64x64 images: 4.9 GB) and not the table beside them.

    Raises:
        DataError: as :func:`load_parquet`; a failing row is named by its row in the table.
    """
    names = parquet.schema_arrow.names
    missing = [c for c in (x_column, y_column, id_column) if c is not None and c not in names]
    if missing:
        raise DataError(f"{url}: no column(s) {missing}; the table has {names} (set data.options.x_column / y_column)")
    source_type = parquet.schema_arrow.field(x_column).type
    uint8 = pa.types.is_list(source_type) and source_type.value_type == pa.uint8()
    element, spec = (pa.uint8(), tables.USER_DATASET_UINT8) if uint8 else (pa.float32(), tables.USER_DATASET)
    dtype = element.to_pandas_dtype()
    total = parquet.metadata.num_rows
    x, ys, ids, start, width = None, [], [], 0, None
    columns = [c for c in dict.fromkeys((x_column, y_column, id_column)) if c is not None]
    for batch in parquet.iter_batches(batch_size=_READ_ROWS, columns=columns):
        where = f"{url} (rows {start} to {start + batch.num_rows - 1})" if start or batch.num_rows < total else url
        try:
            table = pa.table({"x": batch[x_column].cast(pa.list_(element)), "y": batch[y_column].cast(pa.int64())})
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
            raise DataError(
                f"{url}: {x_column!r} must be a list of numbers and {y_column!r} integer labels; "
                f"got {source_type} and {parquet.schema_arrow.field(y_column).type} ({error})"
            ) from None
        tables.validate(table, spec, where)
        elements = pc.list_flatten(table["x"])
        if elements.null_count:
            parents = pc.list_parent_indices(table["x"])
            row = start + parents[pc.index(pc.is_null(elements), True).as_py()].as_py()
            raise DataError(f"{url}: row {row} of {x_column!r} holds a null element ({elements.null_count} nulls in all"
                            f"{'' if batch.num_rows == total else ' of its batch'}); drop or repair those rows")
        flat = np.asarray(elements.to_numpy(zero_copy_only=False), dtype=dtype)
        length = flat.size // max(table.num_rows, 1)
        if width is None:
            width, x = length, np.empty((total, length), dtype)
        elif length != width:
            raise DataError(f"{url}: rows of x differ in length ({width} values in row 0, {length} in row {start})")
        x[start : start + table.num_rows] = flat.reshape(table.num_rows, width)
        ys.append(table["y"].to_numpy())
        if id_column is not None:
            ids.append(batch[id_column].to_numpy().astype(np.int64))
        start += table.num_rows
    x = x if x is not None else np.empty((0, 0), dtype)
    y = np.concatenate(ys) if ys else np.empty(0, np.int64)
    return x, y, (np.concatenate(ids) if id_column is not None and ids else None), width or 0


def load_dataset(name: str, source: str | None = None, seed: int = 0, options: dict | None = None) -> ArrayDataset:
    """Load the registered dataset ``name``.

    Args:
        source: path or fsspec URL, for datasets read from one.
        seed: for generated datasets.
        options: the loader's own parameters (``data.options``).

    Raises:
        ConfigError: an unknown name or option, or a missing/unwanted source.
        DataError: the source cannot be read as this dataset.
    """
    loader = DATASETS.get(name, key="data.name")
    check_arguments(loader, options or {}, "data.options")
    try:
        data = loader(source=source, seed=seed, **(options or {}))
    except TypeError as error:
        if "unexpected keyword" not in str(error):
            raise
        raise ConfigError(f"data.options: dataset {name!r} does not take these options ({error})") from None
    check_values(data, source or f"dataset {name}", (options or {}).get("x_column", "x"))
    return data
