import numpy as np
import pytest

from pipelines.data import (
    DATASETS,
    ArrayDataset,
    channel_stats,
    contiguous_share,
    load_dataset,
    normalise,
    read_split,
    stratified_split,
    write_split,
)
from pipelines.errors import ConfigError, DataError, UnknownNameError


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.mark.parametrize("name", DATASETS.names())
def test_registry_datasets_are_well_formed(name):
    dataset = load_dataset(name)
    assert dataset.x.dtype == np.float32 and dataset.x.ndim >= 3
    assert len(np.unique(dataset.ids)) == len(dataset)
    assert set(np.unique(dataset.y)) == set(range(dataset.num_classes))


def test_digits_is_the_bundled_set(digits):
    assert digits.x.shape == (1797, 1, 8, 8)
    assert digits.num_classes == 10
    assert digits.x.min() == 0.0 and digits.x.max() == 1.0
    assert np.bincount(digits.y).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    with pytest.raises(ConfigError, match="takes no source"):
        load_dataset("digits", source="s3://x")
    with pytest.raises(UnknownNameError, match="data.name"):
        load_dataset("mnist")


def test_stratified_split_partitions_and_keeps_proportions(digits):
    splits = stratified_split(digits, 0.15, 0.15, seed=1)
    ids = [set(s.ids.tolist()) for _, s in splits.items()]
    assert set.union(*ids) == set(range(1797))
    assert sum(len(i) for i in ids) == 1797
    per_class = np.bincount(digits.y)
    assert np.bincount(splits.val.y).tolist() == np.round(per_class * 0.15).astype(int).tolist()
    assert np.bincount(splits.test.y).tolist() == np.round(per_class * 0.15).astype(int).tolist()
    assert (np.diff(splits.train.ids) > 0).all()  # id order
    again = stratified_split(digits, 0.15, 0.15, seed=1)
    assert np.array_equal(again.val.ids, splits.val.ids)
    assert not np.array_equal(stratified_split(digits, 0.15, 0.15, seed=2).val.ids, splits.val.ids)


def test_split_refuses_classes_too_small():
    tiny = ArrayDataset(np.zeros((4, 1, 2, 2), np.float32), np.array([0, 0, 1, 1]), np.arange(4), 2)
    with pytest.raises(DataError, match="class 0 has 2 samples"):
        stratified_split(tiny, 0.3, 0.3, seed=0)


def test_normalise_uses_the_given_statistics(digits):
    mean, std = channel_stats(digits)
    normalised = normalise(digits, mean, std)
    assert abs(float(normalised.x.mean())) < 1e-5
    assert abs(float(normalised.x.std()) - 1) < 1e-4
    assert normalised.x.dtype == np.float32


def test_split_round_trip_is_exact(tmp_path, digits):
    part = digits.subset(np.arange(0, 1797, 7))
    url = str(tmp_path / "train.parquet")
    write_split(url, part, {"split": "train"})
    back = read_split(url)
    assert np.array_equal(back.x, part.x) and np.array_equal(back.y, part.y) and np.array_equal(back.ids, part.ids)
    assert back.num_classes == 10 and back.x.flags.writeable


def test_dataset_invariants():
    with pytest.raises(TypeError, match="float32"):
        ArrayDataset(np.zeros((2, 1), np.float64), np.zeros(2, np.int64), np.arange(2), 2)
    with pytest.raises(ValueError, match="labels must lie"):
        ArrayDataset(np.zeros((2, 1), np.float32), np.array([0, 5]), np.arange(2), 2)


@pytest.mark.parametrize(("n", "parts"), [(10, 3), (3, 3), (1259, 4), (5, 1)])
def test_contiguous_shares_partition_evenly(n, parts):
    shares = [contiguous_share(n, parts, i) for i in range(parts)]
    covered = [i for s in shares for i in range(s.start, s.stop)]
    assert covered == list(range(n))
    sizes = [s.stop - s.start for s in shares]
    assert max(sizes) - min(sizes) <= 1
