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

    DVC resolves the file through its cache, then the default remote, so a revision's table is
    readable where that experiment ran, or once its outputs were pushed to the remote.

    Raises:
        DataError: the table cannot be read; the message says which command brings it.
    """
    if rev == WORKSPACE:
        return tables.read_table(path, table)
    import dvc.api
    from dvc.exceptions import DvcException

    # the workspace's default remote, named: at a revision DVC would read the config committed
    # there, which may name none (or an old one)
    remote = _default_remote(repo)
    try:
        with dvc.api.open(path, repo=repo, rev=rev, mode="rb", remote=remote) as handle:
            data = handle.read()
    except (DvcException, FileNotFoundError) as error:
        raise DataError(missing_data_hint(path, rev, repo, remote, error)) from None
    arrow = pq.read_table(io.BytesIO(data)).replace_schema_metadata(None)
    tables.validate(arrow, tables.spec_of_schema(table, arrow.schema), f"{path} at {rev}")
    return tables.to_frame(arrow)


def _is_commit(rev: str, repo: str) -> bool:
    import subprocess

    done = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], cwd=repo,
                          capture_output=True, check=False)
    return done.returncode == 0


def _default_remote(repo: str) -> str | None:
    from dvc.repo import Repo

    try:
        with Repo(repo) as dvc_repo:
            return dvc_repo.config["core"].get("remote")
    except Exception:  # noqa: BLE001 - no readable DVC config: no remote to suggest
        return None


def missing_data_hint(path: str, rev: str, repo: str, remote: str | None, error: Exception) -> str:
    """Why ``path`` cannot be read at ``rev`` (tried in the cache and on ``remote``), and the command that brings it."""
    import dvc.api
    from dvc.exceptions import DvcException

    is_commit = _is_commit(rev, repo)
    try:
        lock = dvc.api.read("dvc.lock", repo=repo, rev=rev)
    except (DvcException, FileNotFoundError, OSError):
        lock = ""
    if f"path: {path}\n" not in lock:
        what = "git revision" if is_commit else "experiment or revision"
        return (f"cannot read {path} at {rev!r}: no {what} {rev!r} here has it as a DVC output "
                f"(`dvc exp show` lists experiments; `git log` revisions)"
                + (f"; DVC said: {str(error).splitlines()[0][:200]}" if is_commit else ""))
    text = f"{path} at {rev!r} is a DVC output whose data is not in this repository's cache"
    if remote is None:
        return (f"{text}, and no default DVC remote is set to fetch it from. Recompute it here with "
                f"`dvc exp apply {rev} && dvc repro` (or `git checkout {rev} && dvc repro`), or name the remote it was "
                f"pushed to: `dvc remote add -d <name> <url>`")
    fetch = f"dvc exp pull {remote} {rev}" if not is_commit else f"dvc fetch -r {remote} -A {path}"
    return (f"{text} nor on the default remote {remote!r}. Push it from where it ran (`dvc exp push {remote} {rev}` "
            f"or `dvc push -r {remote}`), then fetch it here: `{fetch}`")


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


def _metric_columns(table: str) -> set[str]:
    return {c for spec in tables.table_variants(table) for c in spec.columns}


def compare_table(revs: list[str], table: str, metric: str, path: str | None = None) -> pd.DataFrame:
    """One row per model (or merge method, trial, epoch) and, per revision, ``metric`` with its
    95% interval (``<rev> lo`` / ``<rev> hi``, where the table has one). From the second revision
    on, ``<rev> - <first>`` is the difference to the first revision and ``<rev> beyond noise`` says
    whether the two intervals are apart (a conservative reading: non-overlapping 95% intervals).

    Raises:
        DataError: unknown table or metric, or a table is missing at a revision.
    """
    if table not in KEYS:
        raise DataError(f"--table must be one of {sorted(KEYS)}, got {table!r}")
    columns_of = _metric_columns(table)
    if metric not in columns_of or metric == KEYS[table] or metric.endswith(("_lo", "_hi")):
        raise DataError(f"table {table} has no metric {metric!r}")
    out: dict[str, pd.Series] = {}
    for rev in revs:
        frame = read_table_at(path or f"{results_dir_at(rev)}/{table}.parquet", table, rev).set_index(KEYS[table])
        if metric not in frame.columns:
            raise DataError(f"{table} at {rev!r} has no column {metric!r} (a table written before it had one)")
        out[rev] = frame[metric].astype(float)
        if f"{metric}_lo" in frame.columns:
            out[f"{rev} lo"], out[f"{rev} hi"] = frame[f"{metric}_lo"].astype(float), frame[f"{metric}_hi"].astype(float)
    result = pd.DataFrame(out)
    first = revs[0]
    for rev in revs[1:]:
        result[f"{rev} - {first}"] = result[rev] - result[first]
        if f"{first} lo" in result and f"{rev} lo" in result:
            apart = (result[f"{rev} lo"] > result[f"{first} hi"]) | (result[f"{rev} hi"] < result[f"{first} lo"])
            result[f"{rev} beyond noise"] = apart
    return result


def format_comparison(frame: pd.DataFrame, revs: list[str]) -> str:
    """The comparison as text: ``value [lo, hi]`` per revision, the differences, and ``*`` where
    a difference is beyond the noise."""
    from pipelines.evaluation.uncertainty import interval_text  # the evaluation package loads torch

    shown = pd.DataFrame(index=frame.index)
    for rev in revs:
        if f"{rev} lo" in frame:
            shown[rev] = [interval_text(v, lo, hi) for v, lo, hi in
                          zip(frame[rev], frame[f"{rev} lo"], frame[f"{rev} hi"], strict=True)]
        else:
            shown[rev] = [f"{v:.4f}" for v in frame[rev]]
    for rev in revs[1:]:
        marks = frame.get(f"{rev} beyond noise", pd.Series(False, index=frame.index))
        shown[f"{rev} - {revs[0]}"] = [f"{d:+.4f}{' *' if m else ''}" for d, m in
                                        zip(frame[f"{rev} - {revs[0]}"], marks.fillna(False), strict=True)]
    note = ("\n* the two 95% intervals do not overlap: a difference larger than the noise"
            if any(f"{rev} beyond noise" in frame for rev in revs[1:]) else "")
    return shown.to_string() + note
