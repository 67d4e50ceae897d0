"""The cases that ended in a raw traceback: each now stops its stage with exit 2 and one line that
names the file or the key, before Ray starts where it can be known then. The stages run in this
process (they fail before any Ray work), so each case costs no interpreter start."""

from __future__ import annotations

import errno
import json
import os
import pickle
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import storage
from pipelines.errors import StorageError
from stage_runs import one_line, repo_params, run_in_process


@pytest.fixture
def prepared(tmp_path, monkeypatch, capsys):
    """A workspace whose prepare stage ran on the bundled digits."""
    params = repo_params()
    assert run_in_process(monkeypatch, capsys, tmp_path, params, "prepare")[0] == 0
    return tmp_path, params


@pytest.mark.parametrize("stage", ["augment", "train"])
def test_a_corrupt_parquet_page_names_the_file_before_ray(prepared, monkeypatch, capsys, stage):
    root, params = prepared
    path = root / "data/prepared/train/part-00000.parquet"
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(64)  # inside the ZSTD-compressed pages, the footer intact
    path.write_bytes(bytes(data))
    params["input"] = {"mode": "stream"}  # train checks the parts it would stream, as augment checks its tasks' input
    line = one_line(*run_in_process(monkeypatch, capsys, root, params, stage, *(["mixup"] if stage == "augment" else [])), stage)
    assert line == f"{path.relative_to(root)}: sha256 differs from the split manifest's; the part was changed or truncated"


def test_a_damaged_safetensors_header_names_the_file(prepared, monkeypatch, capsys):
    root, params = prepared
    weights = root / "models/base/model.safetensors"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"\xff" * 8 + b"{not json")
    (root / "models/base/card.json").write_text(json.dumps({"model": "cnn", "input_shape": [1, 8, 8], "num_classes": 10, "seed": 0}))
    line = one_line(*run_in_process(monkeypatch, capsys, root, params, "tune"), "tune")
    assert line.startswith("models/base/model.safetensors: not readable safetensors (")


@pytest.mark.parametrize("damage", ["deleted shard", "manifest not JSON"])
def test_a_damaged_shard_set_names_the_file(prepared, monkeypatch, capsys, damage):
    root, params = prepared
    shards = root / "data/shards/mixup"
    shards.mkdir(parents=True)
    (shards / "manifest.json").write_text(json.dumps({"shards": [{"file": "part-00000.parquet", "sha256": "0" * 64, "rows": 3}]}))
    if damage == "manifest not JSON":
        (shards / "manifest.json").write_text("{truncated")
    params["mixing"]["source"] = "shards"
    line = one_line(*run_in_process(monkeypatch, capsys, root, params, "train"), "train")
    if damage == "deleted shard":
        assert line.startswith("data/shards/mixup/part-00000.parquet: a shard the manifest lists is missing; re-run the augment stage")
    else:
        assert line.startswith("data/shards/mixup/manifest.json: not a shard manifest (JSONDecodeError: ")


def test_an_unreachable_store_is_one_line_before_ray(prepared, monkeypatch, capsys):
    from pipelines.cluster.network import free_port

    root, params = prepared
    params["storage"]["shared_uri"] = "s3://mixpipe-nowhere/store"
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "mixpipe-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-secret")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    line = one_line(*run_in_process(monkeypatch, capsys, root, params, "train"), "train")
    assert line.startswith("storage.shared_uri s3://mixpipe-nowhere/store: cannot reach the store (")
    assert not (root / ".mixpipe").exists()


@pytest.mark.parametrize("where", ["a file", "/proc"])
def test_a_path_param_that_cannot_hold_outputs_is_one_line(tmp_path, monkeypatch, capsys, where):
    params = repo_params()
    if where == "a file":
        (tmp_path / "taken").write_text("a file, not a folder")
        params["paths"]["prepared"] = "taken/prepared"
        expected = "cannot write taken/prepared/"
    else:
        params["paths"]["prepared"] = "/proc/mixpipe/prepared"
        expected = "cannot write /proc/mixpipe/prepared/"
    line = one_line(*run_in_process(monkeypatch, capsys, tmp_path, params, "prepare"), "prepare")
    assert line.startswith(expected) and "check paths.* in params.yaml" in line


def test_a_full_disk_is_one_line_naming_the_file(tmp_path):
    with pytest.raises(StorageError) as caught, storage.atomic_open(str(tmp_path / "out.bin")) as handle:
        handle.write(b"x")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert str(caught.value) == (f"cannot write {tmp_path / 'out.bin'}: No space left on device (the disk is full: "
                                 "free space, or point paths.* at another disk)")
    assert list(tmp_path.iterdir()) == []  # no temp file left behind


def test_an_absurd_shard_count_is_refused_before_ray(prepared, monkeypatch, capsys):
    root, params = prepared
    params["augment"]["num_shards"] = 10**9
    line = one_line(*run_in_process(monkeypatch, capsys, root, params, "augment", "mixup"), "augment")
    assert line.startswith("augment.num_shards must be in [1, ") and line.endswith("got 1000000000")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"search": {"ties": {"density": [0.2, 1.5]}}}, "merge.search.ties.density: input should be less than or equal to 1, got 1.5"),
        ({"params": {"ties": {"weights": []}}}, "merge.params.ties.weights: value should have at least 1 item after validation, not 0, got []"),
    ],
)
def test_a_merge_value_out_of_range_stops_validate_before_ray(tmp_path, monkeypatch, capsys, change, expected):
    params = repo_params()
    params["merge"].update(methods=["uniform_soup", "ties"], **change)
    line = one_line(*run_in_process(monkeypatch, capsys, tmp_path, params, "validate"), "validate")
    assert line.startswith(f"{tmp_path / 'params.yaml'}: {expected}")


def test_a_huge_num_classes_is_refused(tmp_path, monkeypatch, capsys):
    pq.write_table(pa.table({"x": [[0.1, 0.2]] * 20, "label": [i % 2 for i in range(20)]}), tmp_path / "user.parquet")
    params = repo_params()
    params["data"] = {"name": "parquet", "source": str(tmp_path / "user.parquet"), "options": {"num_classes": 10**9}}
    line = one_line(*run_in_process(monkeypatch, capsys, tmp_path, params, "prepare"), "prepare")
    assert line == "data.options.num_classes is 1000000000, more classes than the table's 20 rows"


def test_cifar_labels_out_of_range_name_the_batch_and_row(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = [i % 10 for i in range(6)]
        if name == "data_batch_3":
            labels[4] = 12
        batch = {b"data": rng.integers(0, 256, (6, 3072), dtype=np.uint8), b"labels": labels}
        (folder / name).write_bytes(pickle.dumps(batch))
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as archive:
        archive.add(folder, arcname="cifar-10-batches-py")
    params = repo_params()
    params["data"] = {"name": "cifar10", "source": str(tmp_path / "cifar-10-python.tar.gz")}
    line = one_line(*run_in_process(monkeypatch, capsys, tmp_path, params, "prepare"), "prepare")
    assert line.endswith("cifar-10-batches-py/data_batch_3: label 12 at row 4 is outside [0, 10) (1 such rows); is it cifar10?")


def test_verbose_prints_the_trace_behind_the_line(tmp_path, monkeypatch, capsys):
    params = repo_params()
    params["augment"]["num_shards"] = 10**9
    assert run_in_process(monkeypatch, capsys, tmp_path, params, "prepare")[0] == 0
    monkeypatch.setattr("sys.argv", ["augment", "mixup", "--verbose"])
    code, err = run_in_process(monkeypatch, capsys, tmp_path, params, "augment", "mixup", "--verbose")
    assert code == 2 and "Traceback (most recent call last)" in err
    assert err.strip().splitlines()[-1].startswith("mixpipe augment: error: augment.num_shards must be in [1, ")
