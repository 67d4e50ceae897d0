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
    nullable: bool = False


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
                name: pa_.Column(pd.ArrowDtype(col.type), list(col.checks), unique=col.unique, nullable=col.nullable)
                for name, col in self.columns.items()
            },
            checks=list(self.checks),
            strict=True,
            ordered=True,
            name=self.name,
        )


def _col(type_: pa.DataType, *checks: pa_.Check, unique: bool = False, nullable: bool = False) -> ColumnSpec:
    return ColumnSpec(type_, tuple(checks), unique, nullable)


_F32_LIST = pa.list_(pa.float32())
_unit = (pa_.Check.ge(0), pa_.Check.le(1))
_nonneg = pa_.Check.ge(0)


def _equal_lengths(column: str) -> pa_.Check:
    def check(frame: pd.DataFrame) -> bool:
        return frame[column].list.len().nunique() <= 1

    return pa_.Check(check, name=f"{column}_equal_lengths", error=f"rows of {column} differ in length")


_F32 = pa.float32()
_INT = pa.int64()


def _target(task: str) -> pa.DataType:
    """Classification labels are int64 class indices; regression targets float32 values."""
    return _INT if task == "classification" else _F32


def _target_checks(task: str) -> tuple[pa_.Check, ...]:
    return (_nonneg,) if task == "classification" else ()


# The per-model metrics of each task, with their ranges; ``evaluation`` has one column per metric and
# ``merges`` one per metric and split. The first is the task's score (higher is better).
METRICS: dict[str, dict[str, tuple[pa_.Check, ...]]] = {
    "classification": {
        "accuracy": _unit,
        "nll": (_nonneg,),
        "ece": _unit,
        "brier": (pa_.Check.ge(0), pa_.Check.le(2)),
    },
    "regression": {
        "r2": (pa_.Check.le(1),),
        "mse": (_nonneg,),
        "rmse": (_nonneg,),
        "mae": (_nonneg,),
    },
}
_SCORE_CHECKS = {task: next(iter(metrics.values())) for task, metrics in METRICS.items()}
_SCORE = {task: next(iter(metrics)) for task, metrics in METRICS.items()}


def _named(name: str, task: str) -> str:
    return name if task == "classification" else f"{name}_{task}"


def _dataset(task: str, element: pa.DataType = _F32) -> TableSpec:
    """A prepared split's rows; ``x`` holds the raw inputs, float32 or uint8 (images)."""
    suffix = "" if element == _F32 else f"_{element}"
    return TableSpec(
        _named("dataset", task) + suffix,
        {
            "sample_id": _col(_INT, _nonneg, unique=True),
            "x": _col(pa.list_(element)),
            "y": _col(_target(task), *_target_checks(task)),
        },
        checks=(_equal_lengths("x"),),
    )


def _mixed_samples(task: str) -> TableSpec:
    return TableSpec(
        _named("mixed_samples", task),
        {
            "sample_id": _col(_INT, _nonneg, unique=True),
            "partner_id": _col(_INT, _nonneg),
            "x": _col(_F32_LIST),
            "y": _col(_target(task), *_target_checks(task)),
            "y_partner": _col(_target(task), *_target_checks(task)),
            "lam": _col(_F32, *_unit),
        },
        checks=(_equal_lengths("x"),),
    )


def _train_history(task: str) -> TableSpec:
    return TableSpec(
        _named("train_history", task),
        {
            "epoch": _col(_INT, pa_.Check.ge(1), unique=True),
            "train_loss": _col(pa.float64(), _nonneg),
            "val_loss": _col(pa.float64(), _nonneg),
            f"val_{_SCORE[task]}": _col(pa.float64(), *_SCORE_CHECKS[task]),
            "lr": _col(pa.float64(), _nonneg),
            "samples_per_s": _col(pa.float64(), _nonneg),
            "epoch_seconds": _col(pa.float64(), _nonneg),
            "world_size": _col(_INT, pa_.Check.ge(1)),
            "attempt": _col(_INT, pa_.Check.ge(0)),
        },
    )


def _trials(task: str) -> TableSpec:
    return TableSpec(
        _named("trials", task),
        {
            "trial": _col(pa.string(), unique=True),
            "method": _col(pa.string()),
            "alpha": _col(pa.float64(), pa_.Check.gt(0)),
            "seed_index": _col(_INT, _nonneg),  # which of tune.seeds repeats of its grid point
            "epochs_run": _col(_INT, pa_.Check.ge(1)),
            "stopped_early": _col(pa.bool_()),
            **_with_interval("val_loss", (_nonneg,)),
            **_with_interval(f"val_{_SCORE[task]}", _SCORE_CHECKS[task]),
            # across the seeds of the grid point, over its trials that ran every epoch (std: null below two)
            f"point_val_{_SCORE[task]}_mean": _col(pa.float64(), *_SCORE_CHECKS[task], nullable=True),
            f"point_val_{_SCORE[task]}_std": _col(pa.float64(), _nonneg, nullable=True),
            "checkpoint": _col(pa.string()),
        },
    )


def _with_interval(name: str, checks: tuple[pa_.Check, ...]) -> dict[str, ColumnSpec]:
    """A metric and its 95% interval (:mod:`pipelines.evaluation.uncertainty`): ``name``,
    ``name_lo``, ``name_hi``."""
    return {column: _col(pa.float64(), *checks) for column in (name, f"{name}_lo", f"{name}_hi")}


def _against_base(name: str) -> dict[str, ColumnSpec]:
    """The paired comparison of a metric with the base's: the difference, its 95% interval, the p-value."""
    return {
        f"{name}_vs_base": _col(pa.float64()),
        f"{name}_vs_base_lo": _col(pa.float64()),
        f"{name}_vs_base_hi": _col(pa.float64()),
        f"{name}_p": _col(pa.float64(), *_unit),
    }


def _merges(task: str) -> TableSpec:
    metrics = {
        column: spec
        for split in ("val", "test")
        for name, checks in METRICS[task].items()
        for column, spec in _with_interval(f"{split}_{name}", checks).items()
    }
    return TableSpec(
        _named("merges", task),
        {
            "method": _col(pa.string(), unique=True),
            "params": _col(pa.string()),  # JSON of the method's parameters, searched ones included
            "num_models": _col(_INT, pa_.Check.ge(1)),
            "members": _col(pa.string()),
            **metrics,
            "seconds": _col(pa.float64(), _nonneg),
            "peak_memory_mib": _col(pa.float64(), _nonneg),
            "ran_on": _col(pa.string()),  # where the merge ran: "stage cpu", "ray task cuda", ...
            "checkpoint": _col(pa.string()),
        },
    )


def _merge_search(task: str) -> TableSpec:
    return TableSpec(
        _named("merge_search", task),
        {
            "method": _col(pa.string()),
            "params": _col(pa.string()),  # JSON of the searched parameters at this point
            "val_loss": _col(pa.float64(), _nonneg),
            f"val_{_SCORE[task]}": _col(pa.float64(), *_SCORE_CHECKS[task]),
            "chosen": _col(pa.bool_()),
        },
    )


def _evaluation(task: str) -> TableSpec:
    return TableSpec(
        _named("evaluation", task),
        {
            "model": _col(pa.string(), unique=True),
            "kind": _col(pa.string(), pa_.Check.isin(["base", "trial", "merged"])),
            "num_samples": _col(_INT, pa_.Check.ge(1)),
            **{
                column: spec
                for name, checks in METRICS[task].items()
                for column, spec in {**_with_interval(name, checks), **_against_base(name)}.items()
            },
        },
    )


# A user's labelled table (data.name: parquet) after its columns are renamed to x / y.
USER_DATASET = TableSpec(
    "user_dataset",
    {"x": _col(_F32_LIST), "y": _col(_INT, _nonneg)},
    checks=(_equal_lengths("x"),),
)
USER_DATASET_UINT8 = TableSpec(
    "user_dataset_uint8",
    {"x": _col(pa.list_(pa.uint8())), "y": _col(_INT, _nonneg)},
    checks=(_equal_lengths("x"),),
)

_BUILDERS = {
    "dataset": _dataset,
    "mixed_samples": _mixed_samples,
    "train_history": _train_history,
    "trials": _trials,
    "merges": _merges,
    "merge_search": _merge_search,
    "evaluation": _evaluation,
}
# name -> task -> spec
_BY_TASK: dict[str, dict[str, TableSpec]] = {
    name: {task: build(task) for task in METRICS} for name, build in _BUILDERS.items()
}
# uint8 images are stored as they are: a variant of ``dataset`` per task, found by its schema
_BY_TASK["dataset"].update({f"{task}/uint8": _dataset(task, pa.uint8()) for task in METRICS})


def dataset_spec(task: str, dtype: Any) -> TableSpec:
    """The ``dataset`` table of ``task`` whose ``x`` holds ``dtype`` (numpy float32 or uint8)."""
    import numpy as np

    name = np.dtype(dtype).name
    if name not in ("float32", "uint8"):
        raise KeyError(f"dataset inputs are float32 or uint8, not {name}")
    return _BY_TASK["dataset"][task if name == "float32" else f"{task}/uint8"]

DATASET = _BY_TASK["dataset"]["classification"]
MIXED_SAMPLES = _BY_TASK["mixed_samples"]["classification"]
TRAIN_HISTORY = _BY_TASK["train_history"]["classification"]
TRIALS = _BY_TASK["trials"]["classification"]
MERGES = _BY_TASK["merges"]["classification"]
EVALUATION = _BY_TASK["evaluation"]["classification"]

TABLES: dict[str, TableSpec] = {spec.name: spec for variants in _BY_TASK.values() for spec in variants.values()}


def table_for(name: str, task: str) -> TableSpec:
    """The spec of table ``name`` (``trials``, ``merges``, ...) for ``task`` (classification's
    specs keep the plain names; regression's are ``<name>_regression``, with ``val_r2`` for
    ``val_accuracy``, float targets and regression metrics)."""
    try:
        return _BY_TASK[name][task]
    except KeyError:
        raise KeyError(f"no table {name!r} for task {task!r}; tables: {', '.join(_BY_TASK)}") from None


def table_variants(name: str) -> list[TableSpec]:
    """Every task's spec of table ``name``."""
    return list(_BY_TASK[name].values())


def _spec(table: str | TableSpec) -> TableSpec:
    if isinstance(table, TableSpec):
        return table
    try:
        return TABLES[table]
    except KeyError:
        raise KeyError(f"unknown table {table!r}; known: {', '.join(sorted(TABLES))}") from None


def spec_of_schema(table: str | TableSpec, schema: pa.Schema) -> TableSpec:
    """A spec given by its plain name resolves to the task variant with this schema's column
    names and types, so ``read_table(url, "trials")`` reads a regression sweep's table too."""
    if isinstance(table, str) and table in _BY_TASK:
        columns = [(f.name, f.type) for f in schema]
        for variant in _BY_TASK[table].values():
            if columns == [(f.name, f.type) for f in variant.arrow_schema]:
                return variant
    return _spec(table)


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


def validate(arrow: pa.Table, table: str | TableSpec, source: str | None = None) -> None:
    """Raise :class:`DataError` unless ``arrow`` matches the table's types and checks; the message
    is one line naming ``source`` (the file), the column, the check and the first failing row."""
    spec = _spec(table)
    where = f"{source}: " if source else ""
    actual = [(f.name, f.type) for f in arrow.schema]
    expected = [(f.name, f.type) for f in spec.arrow_schema]
    if actual != expected:
        raise DataError(f"{where}table {spec.name}: columns {actual} do not match {expected}")
    try:
        spec.pandera_schema.validate(to_frame(arrow), lazy=True)
    except (SchemaError, SchemaErrors) as error:
        raise DataError(f"{where}table {spec.name}: {first_failure(error)}") from None


def first_failure(error: SchemaError | SchemaErrors) -> str:
    """pandera's report (thousands of characters of JSON) as one short phrase: where the first
    failure is and how many there are."""
    cases = getattr(error, "failure_cases", None)
    if not isinstance(cases, pd.DataFrame) or cases.empty:
        return str(error).strip().splitlines()[0][:300]
    first = cases.iloc[0]

    def known(name: str) -> Any:
        value = first.get(name)
        return None if value is None or (not isinstance(value, (list, tuple)) and pd.isna(value)) else value

    column, check, index, value = known("column"), known("check"), known("index"), known("failure_case")
    text = f"column {column!r} fails {check}" if column is not None else f"fails {check}"
    if index is not None:
        text += f" at row {int(index)}"
    if value is not None:
        text += f" (value {str(value)[:60]})"
    return text + (f"; {len(cases)} failures in all" if len(cases) > 1 else "")


def parquet_bytes(arrow: pa.Table, metadata: dict[str, Any] | None = None, row_group_rows: int | None = None) -> bytes:
    """Serialise to Parquet deterministically: the same table gives the same bytes.

    Args:
        row_group_rows: rows per row group (pyarrow's default: up to a million), which bounds
            what a streaming reader decodes at once.
    """
    if metadata is not None:
        merged = dict(arrow.schema.metadata or {})
        merged[_METADATA_KEY] = json.dumps(metadata, sort_keys=True).encode()
        arrow = arrow.replace_schema_metadata(merged)
    sink = io.BytesIO()
    pq.write_table(arrow, sink, compression="zstd", use_dictionary=False, store_schema=True, row_group_size=row_group_rows)
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
    return parse_arrow(data, table, url)


def parse_arrow(data: bytes, table: str | TableSpec, source: str = "<bytes>") -> tuple[pa.Table, dict[str, Any]]:
    """As :func:`read_arrow`, from Parquet bytes already in hand (``source`` names them in errors)."""
    spec = _spec(table)
    try:
        arrow = pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError) as error:  # a corrupt page (ZSTD) is an OSError in pyarrow
        raise DataError(f"{source}: not a readable Parquet file for the {spec.name} table "
                        f"({str(error).splitlines()[0][:200]}); re-run the stage that writes it") from None
    raw = (arrow.schema.metadata or {}).get(_METADATA_KEY)
    metadata = json.loads(raw) if raw else {}
    validate(arrow, spec_of_schema(table, arrow.schema), source)
    return arrow.replace_schema_metadata(None), metadata


def read_table(url: str, table: str | TableSpec) -> pd.DataFrame:
    """Read and validate a table as an Arrow-backed pandas frame."""
    arrow, _ = read_arrow(url, table)
    return to_frame(arrow)
