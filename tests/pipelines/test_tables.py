import io

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import tables
from pipelines.errors import DataError
from tests.result_rows import evaluation_frame, merges_frame, trials_frame


def _evaluation_rows():
    return evaluation_frame(model=["base", "soup"], kind=["base", "merged"], num_samples=[10, 10], accuracy=[0.9, 0.8],
                            nll=[0.3, 0.4], ece=[0.05, 0.1], brier=[0.2, 0.3])


def test_round_trip_keeps_values_and_metadata(tmp_path):
    url = str(tmp_path / "evaluation.parquet")
    tables.write_table(_evaluation_rows(), url, "evaluation", metadata={"seed": 3})
    frame = tables.read_table(url, "evaluation")
    assert list(frame.columns) == list(tables.EVALUATION.columns)
    assert frame["accuracy"].tolist() == [0.9, 0.8]
    assert str(frame["model"].dtype) == "string[pyarrow]"
    _, metadata = tables.read_arrow(url, "evaluation")
    assert metadata == {"seed": 3}


def test_writes_are_deterministic():
    arrow = tables.to_arrow(_evaluation_rows(), "evaluation")
    assert tables.parquet_bytes(arrow, {"a": 1}) == tables.parquet_bytes(arrow, {"a": 1})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.drop(columns=["ece"]), "missing columns \\['ece'\\]"),
        (lambda f: f.assign(extra=1), "unexpected columns \\['extra'\\]"),
        (lambda f: f.assign(accuracy=[1.5, 0.8]), "accuracy"),
        (lambda f: f.assign(kind=["base", "ensemble"]), "kind"),
        (lambda f: f.assign(model=["a", "a"]), "model"),
        (lambda f: f.assign(num_samples=["ten", "10"]), "evaluation"),
    ],
)
def test_invalid_rows_are_refused_before_writing(tmp_path, change, message):
    url = tmp_path / "evaluation.parquet"
    with pytest.raises(DataError, match=message):
        tables.write_table(change(_evaluation_rows()), str(url), "evaluation")
    assert not url.exists()


def test_read_validates_files_written_elsewhere(tmp_path):
    url = tmp_path / "evaluation.parquet"
    bad = pa.table({"model": ["x"], "accuracy": [0.5]})
    pq.write_table(bad, url)
    with pytest.raises(DataError, match="do not match"):
        tables.read_table(str(url), "evaluation")
    with pytest.raises(DataError, match="no file"):
        tables.read_table(str(tmp_path / "missing.parquet"), "evaluation")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="junk.parquet: not a readable Parquet file for the evaluation table"):
        tables.read_table(str(tmp_path / "junk.parquet"), "evaluation")


def test_list_columns_must_have_equal_lengths():
    arrow = pa.table(
        {
            "sample_id": pa.array([0, 1]),
            "x": pa.array([[1.0, 2.0], [3.0]], pa.list_(pa.float32())),
            "y": pa.array([0, 1]),
        }
    )
    with pytest.raises(DataError, match="differ in length"):
        tables.validate(arrow, "dataset")


def test_every_table_accepts_a_valid_row():
    rows = {
        "dataset": {"sample_id": [0], "x": [np.zeros(4, np.float32)], "y": [1]},
        "mixed_samples": {"sample_id": [0], "partner_id": [3], "x": [np.zeros(4, np.float32)], "y": [1],
                          "y_partner": [2], "lam": [np.float32(0.25)]},
        "train_history": {"epoch": [1], "train_loss": [1.0], "val_loss": [1.0], "val_accuracy": [0.5],
                          "lr": [0.1], "samples_per_s": [10.0], "epoch_seconds": [1.0], "world_size": [2], "attempt": [0]},
        "trials": trials_frame(trial=["t00"], method=["mixup"], alpha=[0.2], epochs_run=[2], stopped_early=[True],
                               val_loss=[0.1], val_accuracy=[0.9], checkpoint=["models/trials/t00"]).to_dict("list"),
        "merges": merges_frame(method=["uniform_soup"], params=["{}"], num_models=[4], members=["a,b"],
                               **{f"{s}_{m}": [0.1] for s in ("val", "test") for m in ("accuracy", "nll", "ece", "brier")},
                               seconds=[0.5], peak_memory_mib=[1.5], checkpoint=["m.safetensors"]).to_dict("list"),
        "merge_search": {"method": ["ties"], "params": ['{"density": 0.2}'], "val_loss": [0.2], "val_accuracy": [0.9],
                         "chosen": [True]},
        "evaluation": _evaluation_rows().iloc[:1].to_dict("list"),
    }
    regression = {
        "dataset_regression": {**rows["dataset"], "y": [np.float32(-1.5)]},
        "mixed_samples_regression": {**rows["mixed_samples"], "y": [np.float32(-1.5)], "y_partner": [np.float32(0.5)]},
        "train_history_regression": {**{k: v for k, v in rows["train_history"].items() if k != "val_accuracy"}, "val_r2": [-0.5]},
        "trials_regression": trials_frame("val_r2", trial=["t00"], method=["cmixup"], alpha=[0.2], epochs_run=[2],
                                          stopped_early=[True], val_loss=[0.1], val_r2=[0.4], checkpoint=["t"]).to_dict("list"),
        "merges_regression": merges_frame("regression", method=["uniform_soup"], params=["{}"], num_models=[4], members=["a,b"],
                                          **{f"{s}_{m}": [0.3] for s in ("val", "test") for m in ("r2", "mse", "rmse", "mae")},
                                          seconds=[0.5], peak_memory_mib=[1.5], checkpoint=["m.safetensors"]).to_dict("list"),
        "merge_search_regression": {**{k: v for k, v in rows["merge_search"].items() if k != "val_accuracy"}, "val_r2": [0.3]},
        "evaluation_regression": evaluation_frame("regression", model=["base"], kind=["base"], num_samples=[3], r2=[0.5],
                                                  mse=[2.0], rmse=[2.0**0.5], mae=[1.0]).to_dict("list"),
    }
    rows.update(regression)
    images = {"x": [np.arange(4, dtype=np.uint8)]}
    rows.update(dataset_uint8={**rows["dataset"], **images}, dataset_regression_uint8={**rows["dataset_regression"], **images})
    assert rows.keys() == tables.TABLES.keys()
    assert tables.dataset_spec("regression", np.uint8).name == "dataset_regression_uint8"
    assert tables.table_for("trials", "regression").name == "trials_regression"
    for name, row in rows.items():
        sink = io.BytesIO()
        arrow = tables.to_arrow(pd.DataFrame(row), name)
        sink.write(tables.parquet_bytes(arrow))
        assert pq.read_table(io.BytesIO(sink.getvalue())).num_rows == 1


def test_a_plain_table_name_reads_the_regression_variant(tmp_path):
    url = str(tmp_path / "evaluation.parquet")
    frame = evaluation_frame("regression", model=["base"], kind=["base"], num_samples=[3], r2=[0.5], mse=[2.0],
                             rmse=[2.0**0.5], mae=[1.0])
    tables.write_table(frame, url, tables.table_for("evaluation", "regression"))
    assert list(tables.read_table(url, "evaluation").columns) == list(tables.table_for("evaluation", "regression").columns)
    with pytest.raises(DataError, match="do not match"):
        tables.read_table(url, tables.EVALUATION)  # an explicit spec is not second-guessed
    with pytest.raises(DataError, match="less_than_or_equal_to"):
        tables.write_table(frame.assign(r2=[1.5]), url, tables.table_for("evaluation", "regression"))
