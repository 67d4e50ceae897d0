"""Every result table's schema, and validated Parquet reads and writes through fsspec.

A table is described once, as Arrow types plus pandera checks. Frames are Arrow-backed pandas
(``pd.ArrowDtype``) because pandera validates pandas, not ``pyarrow.Table``. Writes validate
first, then go through :func:`pipelines.storage.atomic_open`, so a reader never sees a half
table; reads validate again, so a hand-edited or stale file fails loudly.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pandera.pandas as pa_
import pyarrow as pa
import pyarrow.parquet as pq
from pandera.errors import SchemaError, SchemaErrors

from pipelines import storage
from pipelines.errors import DataError

_METADATA_KEY = b"mixpipe"


@dataclass(frozen=True)
class ColumnSpec:
    type: pa.DataType
    checks: tuple[pa_.Check, ...] = ()
    unique: bool = False


@dataclass(frozen=True)
class TableSpec:
    """One table: its Arrow schema (for storage) and pandera schema (for validation)."""

    name: str
    columns: dict[str, ColumnSpec]
    checks: tuple[pa_.Check, ...] = field(default=())

    @property
    def arrow_schema(self) -> pa.Schema:
        return pa.schema([pa.field(n, c.type) for n, c in self.columns.items()])

    @property
    def pandera_schema(self) -> pa_.DataFrameSchema:
        return pa_.DataFrameSchema(
            {
                name: pa_.Column(pd.ArrowDtype(col.type), list(col.checks), unique=col.unique)
                for name, col in self.columns.items()
            },
            checks=list(self.checks),
            strict=True,
            ordered=True,
            name=self.name,
        )


def _col(type_: pa.DataType, *checks: pa_.Check, unique: bool = False) -> ColumnSpec:
    return ColumnSpec(type_, tuple(checks), unique)


_F32_LIST = pa.list_(pa.float32())
_unit = (pa_.Check.ge(0), pa_.Check.le(1))
_nonneg = pa_.Check.ge(0)


def _equal_lengths(column: str) -> pa_.Check:
    def check(frame: pd.DataFrame) -> bool:
        return frame[column].list.len().nunique() <= 1

    return pa_.Check(check, name=f"{column}_equal_lengths", error=f"rows of {column} differ in length")


DATASET = TableSpec(
    "dataset",
    {
        "sample_id": _col(pa.int64(), _nonneg, unique=True),
        "x": _col(_F32_LIST),
        "y": _col(pa.int64(), _nonneg),
    },
    checks=(_equal_lengths("x"),),
)

# A user's labelled table (data.name: parquet) after its columns are renamed to x / y.
USER_DATASET = TableSpec(
    "user_dataset",
    {"x": _col(_F32_LIST), "y": _col(pa.int64(), _nonneg)},
    checks=(_equal_lengths("x"),),
)

MIXED_SAMPLES = TableSpec(
    "mixed_samples",
    {
        "sample_id": _col(pa.int64(), _nonneg, unique=True),
        "partner_id": _col(pa.int64(), _nonneg),
        "x": _col(_F32_LIST),
        "y": _col(pa.int64(), _nonneg),
        "y_partner": _col(pa.int64(), _nonneg),
        "lam": _col(pa.float32(), *_unit),
    },
    checks=(_equal_lengths("x"),),
)

TRAIN_HISTORY = TableSpec(
    "train_history",
    {
        "epoch": _col(pa.int64(), pa_.Check.ge(1), unique=True),
        "train_loss": _col(pa.float64(), _nonneg),
        "val_loss": _col(pa.float64(), _nonneg),
        "val_accuracy": _col(pa.float64(), *_unit),
        "lr": _col(pa.float64(), _nonneg),
        "samples_per_s": _col(pa.float64(), _nonneg),
        "epoch_seconds": _col(pa.float64(), _nonneg),
        "world_size": _col(pa.int64(), pa_.Check.ge(1)),
        "attempt": _col(pa.int64(), pa_.Check.ge(0)),
    },
)

TRIALS = TableSpec(
    "trials",
    {
        "trial": _col(pa.string(), unique=True),
        "method": _col(pa.string()),
        "alpha": _col(pa.float64(), pa_.Check.gt(0)),
        "epochs_run": _col(pa.int64(), pa_.Check.ge(1)),
        "stopped_early": _col(pa.bool_()),
        "val_loss": _col(pa.float64(), _nonneg),
        "val_accuracy": _col(pa.float64(), *_unit),
        "checkpoint": _col(pa.string()),
    },
)

MERGES = TableSpec(
    "merges",
    {
        "method": _col(pa.string(), unique=True),
        "num_models": _col(pa.int64(), pa_.Check.ge(1)),
        "members": _col(pa.string()),
        "val_loss": _col(pa.float64(), _nonneg),
        "val_accuracy": _col(pa.float64(), *_unit),
        "seconds": _col(pa.float64(), _nonneg),
        "checkpoint": _col(pa.string()),
    },
)

EVALUATION = TableSpec(
    "evaluation",
    {
        "model": _col(pa.string(), unique=True),
        "kind": _col(pa.string(), pa_.Check.isin(["base", "trial", "merged"])),
        "num_samples": _col(pa.int64(), pa_.Check.ge(1)),
        "accuracy": _col(pa.float64(), *_unit),
        "nll": _col(pa.float64(), _nonneg),
        "ece": _col(pa.float64(), *_unit),
        "brier": _col(pa.float64(), pa_.Check.ge(0), pa_.Check.le(2)),
    },
)

TABLES: dict[str, TableSpec] = {
    spec.name: spec for spec in (DATASET, MIXED_SAMPLES, TRAIN_HISTORY, TRIALS, MERGES, EVALUATION)
}


def _spec(table: str | TableSpec) -> TableSpec:
    if isinstance(table, TableSpec):
        return table
    try:
        return TABLES[table]
    except KeyError:
        raise KeyError(f"unknown table {table!r}; known: {', '.join(sorted(TABLES))}") from None


def to_arrow(frame: pd.DataFrame | pa.Table, table: str | TableSpec) -> pa.Table:
    """Coerce a pandas or Arrow frame to the table's Arrow schema and validate it.

    Raises:
        DataError: columns are missing or extra, a value cannot be cast, or a check fails.
    """
    spec = _spec(table)
    names = frame.column_names if isinstance(frame, pa.Table) else list(frame.columns)
    missing = [c for c in spec.columns if c not in names]
    extra = [c for c in names if c not in spec.columns]
    if missing or extra:
        raise DataError(f"table {spec.name}: missing columns {missing}, unexpected columns {extra}")
    try:
        if isinstance(frame, pa.Table):
            arrow = frame.select(list(spec.columns)).cast(spec.arrow_schema)
        else:
            arrow = pa.Table.from_pandas(
                frame[list(spec.columns)], schema=spec.arrow_schema, preserve_index=False
            )
    except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError) as error:
        raise DataError(f"table {spec.name}: {error}") from None
    validate(arrow, spec)
    return arrow


def to_frame(arrow: pa.Table) -> pd.DataFrame:
    """Arrow -> pandas with Arrow-backed columns (what the schemas are declared in)."""
    return arrow.to_pandas(types_mapper=pd.ArrowDtype)


def validate(arrow: pa.Table, table: str | TableSpec) -> None:
    """Raise :class:`DataError` unless ``arrow`` matches the table's types and checks."""
    spec = _spec(table)
    actual = [(f.name, f.type) for f in arrow.schema]
    expected = [(f.name, f.type) for f in spec.arrow_schema]
    if actual != expected:
        raise DataError(f"table {spec.name}: columns {actual} do not match {expected}")
    try:
        spec.pandera_schema.validate(to_frame(arrow), lazy=True)
    except (SchemaError, SchemaErrors) as error:
        lines = str(error).strip().splitlines()
        raise DataError(f"table {spec.name} failed validation: {' '.join(lines)[:2000]}") from None


def parquet_bytes(arrow: pa.Table, metadata: dict[str, Any] | None = None) -> bytes:
    """Serialise to Parquet deterministically: the same table gives the same bytes."""
    if metadata is not None:
        merged = dict(arrow.schema.metadata or {})
        merged[_METADATA_KEY] = json.dumps(metadata, sort_keys=True).encode()
        arrow = arrow.replace_schema_metadata(merged)
    sink = io.BytesIO()
    pq.write_table(arrow, sink, compression="zstd", use_dictionary=False, store_schema=True)
    return sink.getvalue()


def write_table(
    frame: pd.DataFrame | pa.Table,
    url: str,
    table: str | TableSpec,
    metadata: dict[str, Any] | None = None,
) -> pa.Table:
    """Validate ``frame`` against ``table`` and write it to ``url`` atomically as Parquet.

    Args:
        frame: the rows, as pandas or Arrow.
        url: destination (any fsspec URL).
        table: the table's name in :data:`TABLES` or its spec.
        metadata: JSON-able extras stored in the file (shapes, seeds, ...).

    Returns:
        The validated Arrow table that was written.
    """
    arrow = to_arrow(frame, table)
    storage.write_bytes(url, parquet_bytes(arrow, metadata))
    return arrow


def read_arrow(url: str, table: str | TableSpec) -> tuple[pa.Table, dict[str, Any]]:
    """Read and validate a table; return it with the metadata it was written with.

    Raises:
        DataError: the file is missing, unreadable, or fails the table's schema.
    """
    spec = _spec(table)
    try:
        data = storage.read_bytes(url)
    except FileNotFoundError:
        raise DataError(f"table {spec.name}: no file at {url}") from None
    return parse_arrow(data, spec, url)


def parse_arrow(data: bytes, table: str | TableSpec, source: str = "<bytes>") -> tuple[pa.Table, dict[str, Any]]:
    """As :func:`read_arrow`, from Parquet bytes already in hand (``source`` names them in errors)."""
    spec = _spec(table)
    try:
        arrow = pq.read_table(io.BytesIO(data))
    except pa.ArrowException as error:
        raise DataError(f"table {spec.name}: {source} is not readable Parquet ({error})") from None
    raw = (arrow.schema.metadata or {}).get(_METADATA_KEY)
    metadata = json.loads(raw) if raw else {}
    validate(arrow, spec)
    return arrow.replace_schema_metadata(None), metadata


def read_table(url: str, table: str | TableSpec) -> pd.DataFrame:
    """Read and validate a table as an Arrow-backed pandas frame."""
    arrow, _ = read_arrow(url, table)
    return to_frame(arrow)
