"""Data that would silently corrupt every later stage is refused where it is loaded, with the file,
the row and the column: non-finite values, null list elements, repeated ids."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.data import ArrayDataset, load_dataset
from pipelines.data.dataset import check_values
from pipelines.errors import DataError
from stage_runs import one_line, repo_params, run_in_process

ROWS = 40


def user_table(path, x=None, labels=None, ids=None):
    x = [[float(i), 0.5, -0.5, 1.0] for i in range(ROWS)] if x is None else x
    columns = {"pixels": x, "label": [i % 2 for i in range(ROWS)] if labels is None else labels}
    if ids is not None:
        columns["sample"] = ids
    pq.write_table(pa.table(columns), path)
    return str(path)


def load(path, **options):
    return load_dataset("parquet", path, options={"x_column": "pixels", "y_column": "label", **options})


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_input_is_refused_with_its_row_and_column(tmp_path, value):
    x = [[float(i), 0.5, -0.5, 1.0] for i in range(ROWS)]
    x[7][2] = value
    x[9][0] = value
    with pytest.raises(DataError) as caught:
        load(user_table(tmp_path / "user.parquet", x))
    assert str(caught.value) == (
        f"{tmp_path / 'user.parquet'}: row 7 (id 7) of 'pixels' holds {value} at element 2 (2 rows in all); "
        "drop or repair those rows"
    )


def test_a_null_list_element_is_refused_not_read_as_nan(tmp_path):
    x = [[float(i), 0.5, -0.5, 1.0] for i in range(ROWS)]
    x[3] = [3.0, None, -0.5, 1.0]
    with pytest.raises(DataError, match=r"user.parquet: row 3 of 'pixels' holds a null element \(1 nulls in all\)"):
        load(user_table(tmp_path / "user.parquet", x))


def test_a_null_row_or_label_is_named_in_one_short_line(tmp_path):
    x = [[float(i), 0.5, -0.5, 1.0] for i in range(ROWS)]
    x[5] = None
    with pytest.raises(DataError) as caught:
        load(user_table(tmp_path / "user.parquet", x))
    assert str(caught.value) == f"{tmp_path / 'user.parquet'}: table user_dataset: column 'x' fails not_nullable at row 5"
    labels = [i % 2 for i in range(ROWS)]
    labels[6] = labels[8] = None
    with pytest.raises(DataError) as caught:
        load(user_table(tmp_path / "labels.parquet", labels=labels))
    assert str(caught.value).endswith("column 'y' fails not_nullable at row 6; 2 failures in all")


def test_repeated_ids_are_refused_before_they_reach_two_splits(tmp_path):
    ids = list(range(ROWS))
    ids[10] = ids[30] = 4
    with pytest.raises(DataError) as caught:
        load(user_table(tmp_path / "user.parquet", ids=ids), id_column="sample")
    assert str(caught.value) == (
        f"{tmp_path / 'user.parquet'}: id 4 is in rows [4, 10, 30]; ids must be unique, or a sample lands in more than one split"
    )


def test_a_non_finite_regression_target_is_refused():
    data = ArrayDataset(x=np.zeros((3, 1, 2), np.float32), y=np.zeros(3, np.float32), ids=np.arange(3), num_classes=1,
                        task="regression")
    check_values(data, "targets.parquet")
    object.__setattr__(data, "y", np.array([0.0, np.nan, 1.0], np.float32))  # past the constructor's own check
    with pytest.raises(DataError, match=r"targets.parquet: row 1 \(id 1\) has the target nan"):
        check_values(data, "targets.parquet")


def test_prepare_stops_in_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    x = [[float(i), 0.5, -0.5, 1.0] for i in range(ROWS)]
    x[12][1] = float("nan")
    params = repo_params()
    params["data"] = {"name": "parquet", "source": user_table(tmp_path / "user.parquet", x),
                      "options": {"x_column": "pixels", "y_column": "label"}}
    line = one_line(*run_in_process(monkeypatch, capsys, tmp_path, params, "prepare"), "prepare")
    assert line.startswith(f"{tmp_path / 'user.parquet'}: row 12 (id 12) of 'pixels' holds nan")
    assert not (tmp_path / "data").exists()
