import io

import numpy as np
import pyarrow.parquet as pq

from pipelines import tables
from pipelines.augmentation import mix_shard, shard_seed
from pipelines.data import ArrayDataset
from pipelines.mixing import MixingSpec


def dataset(n=24):
    rng = np.random.default_rng(0)
    return ArrayDataset(rng.normal(size=(n, 1, 6, 6)).astype(np.float32), np.arange(n) % 4, np.arange(100, 100 + n), 4)


def test_shards_are_byte_identical_for_the_same_seed():
    spec = MixingSpec("cutmix", alpha=1.0)
    assert mix_shard(dataset(), spec, seed=7) == mix_shard(dataset(), spec, seed=7)
    assert mix_shard(dataset(), spec, seed=7) != mix_shard(dataset(), spec, seed=8)


def test_shard_seeds_differ_by_method_and_index():
    seeds = {shard_seed(1, m, i) for m in ("mixup", "cutmix") for i in range(4)}
    assert len(seeds) == 8


def test_shard_rows_record_partners_and_exact_lambda():
    data = dataset()
    arrow = pq.read_table(io.BytesIO(mix_shard(data, MixingSpec("cutmix", alpha=1.0), seed=3)))
    tables.validate(arrow.replace_schema_metadata(None), "mixed_samples")
    frame = arrow.to_pandas()
    position = {int(i): k for k, i in enumerate(data.ids)}
    for row in frame.itertuples():
        own = data.x[position[row.sample_id]].reshape(-1)
        partner = data.x[position[row.partner_id]].reshape(-1)
        x = np.asarray(row.x)
        assert row.y == data.y[position[row.sample_id]] and row.y_partner == data.y[position[row.partner_id]]
        assert np.all((x == own) | (x == partner))
        if row.partner_id != row.sample_id:
            assert np.float32(np.mean(x == own)) == np.float32(row.lam)


def write_shard_set(directory, data, spec, num_shards=2):
    from pipelines import storage
    from pipelines.data import contiguous_share

    entries = []
    for i in range(num_shards):
        rows = np.arange(len(data))[contiguous_share(len(data), num_shards, i)]
        blob = mix_shard(data.subset(rows), spec, seed=i)
        (directory / f"part-{i:05d}.parquet").write_bytes(blob)
        entries.append({"file": f"part-{i:05d}.parquet", "rows": len(rows), "seed": i, "sha256": storage.sha256_bytes(blob)})
    (directory / "manifest.json").write_text(__import__("json").dumps({"shards": entries}))


def test_shards_read_back_as_mixed_pairs(tmp_path):
    from pipelines.data import MixedDataset, read_shards

    data = dataset(30)
    write_shard_set(tmp_path, data, MixingSpec("cutmix", alpha=1.0))
    mixed = read_shards(str(tmp_path))
    assert isinstance(mixed, MixedDataset) and len(mixed) == 30 and mixed.input_shape == (1, 6, 6)
    assert np.array_equal(mixed.ids, data.ids) and np.array_equal(mixed.y, data.y)
    first = pq.read_table(tmp_path / "part-00000.parquet").to_pandas()
    assert np.array_equal(mixed.y_partner[:15], first["y_partner"].to_numpy())
    assert np.array_equal(mixed.lam[:15], first["lam"].to_numpy())
    assert np.array_equal(mixed.x[:15].reshape(15, -1), np.stack(first["x"].to_numpy()))
    assert np.array_equal(mixed.subset(np.array([3, 20])).lam, mixed.lam[[3, 20]])


def test_shards_that_do_not_match_the_manifest_are_refused(tmp_path):
    import pytest

    from pipelines.data import read_shards
    from pipelines.errors import DataError

    with pytest.raises(DataError, match="no shard manifest"):
        read_shards(str(tmp_path))
    write_shard_set(tmp_path, dataset(), MixingSpec("mixup", alpha=1.0))
    shard = tmp_path / "part-00001.parquet"
    shard.write_bytes(shard.read_bytes()[:-1] + b"\0")
    with pytest.raises(DataError, match="part-00001.parquet: sha256 differs from the manifest"):
        read_shards(str(tmp_path))
