"""Reading result tables across DVC experiments and git revisions, for ``mixpipe compare``."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import yaml

from pipelines import tables
from pipelines.errors import DataError

WORKSPACE = "workspace"
KEYS = {"evaluation": "model", "merges": "method", "trials": "trial", "train_history": "epoch"}


def read_table_at(path: str, table: str, rev: str, repo: str = ".") -> pd.DataFrame:
    """A validated result table as it is in the workspace or at a git revision / experiment.

    DVC resolves the file through its cache, so a revision's table is readable as long as that
    experiment ran here (or its outputs were pulled).
    """
    if rev == WORKSPACE:
        return tables.read_table(path, table)
    import dvc.api
    from dvc.exceptions import DvcException

    try:
        with dvc.api.open(path, repo=repo, rev=rev, mode="rb") as handle:
            data = handle.read()
    except (DvcException, FileNotFoundError) as error:
        raise DataError(f"cannot read {path} at {rev!r}: {error}") from None
    arrow = pq.read_table(io.BytesIO(data)).replace_schema_metadata(None)
    tables.validate(arrow, table)
    return tables.to_frame(arrow)


def results_dir_at(rev: str, repo: str = ".") -> str:
    """``paths.results`` of params.yaml as it is at ``rev``, so a revision that wrote its tables
    elsewhere is read where it wrote them."""
    import dvc.api
    from dvc.exceptions import DvcException

    from pipelines.config import PathsParams

    default = PathsParams().results
    try:
        text = (Path(repo) / "params.yaml").read_text() if rev == WORKSPACE else dvc.api.read("params.yaml", repo=repo, rev=rev)
        raw = yaml.safe_load(text) or {}
    except (OSError, DvcException, yaml.YAMLError):  # no readable params.yaml there: the table's own read says what is missing
        return default
    paths = raw.get("paths") if isinstance(raw, dict) else None
    return str(paths.get("results", default)) if isinstance(paths, dict) else default


def compare_table(revs: list[str], table: str, metric: str, path: str | None = None) -> pd.DataFrame:
    """One column per revision, one row per model (or merge method, trial, epoch): ``metric``.

    Raises:
        DataError: unknown table or metric, or a table is missing at a revision.
    """
    if table not in KEYS:
        raise DataError(f"--table must be one of {sorted(KEYS)}, got {table!r}")
    if metric not in tables.TABLES[table].columns or metric == KEYS[table]:
        raise DataError(f"table {table} has no metric {metric!r}")
    columns = {}
    for rev in revs:
        frame = read_table_at(path or f"{results_dir_at(rev)}/{table}.parquet", table, rev)
        columns[rev] = frame.set_index(KEYS[table])[metric].astype(float)
    return pd.DataFrame(columns)
