"""Where streamed splits and task outputs go so that every node reaches them."""

from __future__ import annotations

import os

import numpy as np
import pytest

from pipelines.cluster.shared_data import reachable_split, task_output_folder
from pipelines.data import ArrayDataset, open_split, read_split, write_split
from pipelines.errors import ClusterError


@pytest.fixture
def split(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = ArrayDataset(np.arange(120, dtype=np.uint8).reshape(10, 3, 2, 2), np.arange(10) % 2, np.arange(10), 2)
    write_split("prepared/train", data, part_mib=4 * 12 / (1 << 20))  # parts of 4 rows
    return open_split("prepared/train"), data


def test_a_local_instance_reads_the_split_where_it_is_by_its_absolute_path(split, tmp_path):
    stored, _ = split
    here = reachable_split(stored, None, started_local=True)
    assert here.url == os.path.join(str(tmp_path), "prepared/train") and here.parts == stored.parts
    assert task_output_folder("data/shards/mixup", None, True, "k") == (str(tmp_path / "data/shards/mixup"), False)
    assert task_output_folder("s3://bucket/shards", None, False, "k") == ("s3://bucket/shards", False)


def test_a_cluster_reads_a_copy_in_the_shared_store_made_once(split, tmp_path):
    stored, data = split
    with pytest.raises(ClusterError, match=r"^prepared/train is on this machine's disk, .* set storage.shared_uri"):
        reachable_split(stored, None, started_local=False)
    store = str(tmp_path / "store")
    copy = reachable_split(stored, store, started_local=False)
    assert copy.url == f"{store}/splits/{stored.fingerprint()}/train" and len(copy.parts) == 3
    back = read_split(copy.url)  # checks every part's sha256 against the manifest
    assert np.array_equal(back.x, data.x) and np.array_equal(back.ids, data.ids)
    # a second run finds the finished copy (its manifest is written last) and copies nothing
    first = os.path.getmtime(f"{copy.url}/part-00000.parquet")
    os.utime(f"{copy.url}/part-00000.parquet", (first - 100, first - 100))
    assert reachable_split(stored, store, started_local=False).url == copy.url
    assert os.path.getmtime(f"{copy.url}/part-00000.parquet") == first - 100
    assert task_output_folder("data/shards/mixup", store, False, "augment-1") == (f"{store}/staging/augment-1", True)
    with pytest.raises(ClusterError, match="data/shards/mixup is on this machine's disk"):
        task_output_folder("data/shards/mixup", None, False, "augment-1")
