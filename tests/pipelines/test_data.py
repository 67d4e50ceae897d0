from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipelines.data import (
    DATASETS,
    ArrayDataset,
    channel_stats,
    normalisation,
    open_split,
    read_rows,
    contiguous_share,
    dataset_task,
    load_dataset,
    normalise,
    read_split,
    standardise_targets,
    stratified_split,
    target_stats,
    write_split,
)
from pipelines.data.splits import target_strata
from pipelines.errors import ConfigError, DataError, UnknownNameError
from rounding import U32


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def cifar_batch(labels, label_key=b"labels", seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (len(labels), 3072), dtype=np.uint8)
    return {b"batch_label": b"tiny", label_key: list(labels), b"data": pixels, b"filenames": [b"f"] * len(labels)}


def write_cifar(path, name="cifar10", archive=True):
    """A tiny archive in the real layout: protocol-2 pickles of dicts with bytes keys."""
    import io
    import pickle
    import tarfile

    if name == "cifar10":
        folder = "cifar-10-batches-py"
        members = {f"data_batch_{i}": cifar_batch([(i + k) % 10 for k in range(4)], seed=i) for i in range(1, 6)}
        members["test_batch"] = cifar_batch(list(range(10)), seed=9)
    else:
        folder = "cifar-100-python"
        members = {"train": cifar_batch(list(range(100)), b"fine_labels", 1), "test": cifar_batch([5, 7], b"fine_labels", 2)}
    blobs = {member: pickle.dumps(batch, protocol=2) for member, batch in members.items()}
    if not archive:
        for member, blob in blobs.items():
            (path / folder).mkdir(parents=True, exist_ok=True)
            (path / folder / member).write_bytes(blob)
        return str(path), members
    target = path / f"{name}.tar.gz"
    with tarfile.open(target, "w:gz") as tar:
        for member, blob in blobs.items():
            info = tarfile.TarInfo(f"{folder}/{member}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return str(target), members


def write_user_table(path, **columns):
    import pyarrow as pa
    import pyarrow.parquet as pq

    target = path / "user.parquet"
    pq.write_table(pa.table(columns), target)
    return str(target)


def write_image_folder(root, size=(6, 5)):
    """``root/<class>/<n>.png`` (and one JPEG) of known pixels; returns (root, {relative path: pixels})."""
    from PIL import Image

    rng = np.random.default_rng(1)
    written = {}
    for label, name in enumerate(["cat", "dog", "emu"]):
        (root / name / "deep").mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
            relative = f"{name}/{i}.png" if i < 2 else f"{name}/deep/{i}.png"
            Image.fromarray(pixels).save(root / relative)
            written[relative] = pixels
    Image.fromarray(np.full((*size, 3), 200, dtype=np.uint8)).save(root / "dog" / "photo.jpg", quality=95)
    (root / "README.txt").write_text("not an image")
    (root / "cat" / ".hidden.png").write_bytes(b"ignored")
    return str(root), written


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """data.source and data.options for each registered dataset that reads a source."""
    root = tmp_path_factory.mktemp("sources")
    rng = np.random.default_rng(0)
    table = write_user_table(root, pixels=[rng.normal(size=12).tolist() for _ in range(20)], label=np.arange(20) % 4)
    return {
        "image_folder": (write_image_folder(root / "images")[0], {}),
        "cifar10": (write_cifar(root, "cifar10")[0], {}),
        "cifar100": (write_cifar(root, "cifar100")[0], {}),
        "parquet": (table, {"x_column": "pixels", "shape": [3, 4]}),
    }


@pytest.mark.parametrize("name", DATASETS.names())
def test_registry_datasets_are_well_formed(name, sources):
    source, options = sources.get(name, (None, {}))
    dataset = load_dataset(name, source, seed=0, options=options)
    # images keep their source's uint8; everything else is float32
    assert dataset.x.dtype == (np.uint8 if name in ("cifar10", "cifar100", "image_folder") else np.float32)
    assert dataset.x.ndim >= 3
    assert len(np.unique(dataset.ids)) == len(dataset)
    assert dataset_task(name) == dataset.task
    if dataset.task == "regression":
        assert dataset.y.dtype == np.float32 and dataset.num_classes == 1 and np.isfinite(dataset.y).all()
    else:
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
    url = str(tmp_path / "train")
    write_split(url, part, {"split": "train"})
    back = read_split(url)
    assert np.array_equal(back.x, part.x) and np.array_equal(back.y, part.y) and np.array_equal(back.ids, part.ids)
    assert back.num_classes == 10 and back.x.flags.writeable


def uint8_images(rows=300, shape=(3, 8, 8), seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (rows, *shape), dtype=np.uint8)
    return ArrayDataset(x, np.arange(rows) % 10, np.arange(100, 100 + rows), 10)


def test_uint8_splits_round_trip_exactly_in_parts_of_bounded_size(tmp_path):
    images = uint8_images()
    stats = normalisation(images)
    ready = replace(images, normalisation=stats)
    part_mib = 40 * 192 / (1 << 20)  # 40 rows of 3x8x8 bytes per part
    stored = write_split(str(tmp_path / "train"), ready, {"split": "train"}, part_mib=part_mib)
    assert stored.part_rows == [40] * 7 + [20] and stored.dtype == "uint8" and stored.nbytes == 300 * 192
    for index, part in enumerate(stored.parts):
        arrow = pq.read_table(tmp_path / "train" / part.file)
        assert arrow.schema.field("x").type == pa.list_(pa.uint8())  # stored as the source has it: a byte per value
        assert pq.ParquetFile(tmp_path / "train" / part.file).metadata.num_rows == stored.part_rows[index]
    back = read_split(str(tmp_path / "train"))
    assert back.x.dtype == np.uint8 and np.array_equal(back.x, images.x) and np.array_equal(back.ids, images.ids)
    assert back.normalisation == stats
    rows = read_rows(open_split(str(tmp_path / "train")), slice(35, 85))  # spans parts 0 to 2
    assert np.array_equal(rows.x, images.x[35:85]) and np.array_equal(rows.ids, images.ids[35:85])
    # normalisation on read is the float64 formula rounded once, the one the device applies too
    expected = ((images.x.astype(np.float64) - np.array(stats.mean)[None, :, None, None])
                / np.array(stats.std)[None, :, None, None]).astype(np.float32)
    assert np.array_equal(back.normalised().x, expected)
    assert np.array_equal(stats.apply_torch(torch.from_numpy(images.x)).numpy(), expected)
    # a rewrite with larger parts leaves no stale part behind
    write_split(str(tmp_path / "train"), ready, part_mib=1)
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == ["manifest.json", "part-00000.parquet"]


def test_uint8_channel_statistics_are_exact(tmp_path):
    images = uint8_images(rows=257)
    mean, std = channel_stats(images, chunk_elements=10 * 192)  # the integer path, ten rows at a time
    wide = images.x.astype(np.float64)
    assert np.allclose(mean, wide.mean(axis=(0, 2, 3)), rtol=1e-15, atol=0)
    # float64 moments of integers below 2**53: the std agrees with numpy's two-pass one to rounding
    assert np.allclose(std, wide.std(axis=(0, 2, 3)), rtol=1e-12, atol=0)


def test_a_changed_part_or_missing_manifest_fails_naming_the_file(tmp_path):
    stored = write_split(str(tmp_path / "train"), uint8_images(), part_mib=100 * 192 / (1 << 20))
    (tmp_path / "train" / stored.parts[1].file).write_bytes(b"junk")
    with pytest.raises(DataError, match=r"train/part-00001.parquet: sha256 differs from the split manifest's"):
        read_split(str(tmp_path / "train"))
    assert len(read_rows(stored, slice(0, 100))) == 100  # rows of an intact part still read
    with pytest.raises(DataError, match=r"missing/manifest.json: no split manifest; run the prepare stage"):
        read_split(str(tmp_path / "missing"))


def test_dataset_invariants():
    with pytest.raises(TypeError, match="float32 or uint8"):
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


def test_mnist1d_is_generated_deterministically_and_balanced():
    first = load_dataset("mnist1d", seed=3)
    assert first.x.shape == (12000, 1, 40) and first.num_classes == 10
    assert np.bincount(first.y).tolist() == [1200] * 10
    # standardised in float64, then stored as float32: each value moves by at most U32 |x|, so the
    # mean by at most U32 max|x| and the standard deviation (of order 1) by about as much
    bound = 2 * U32 * float(np.abs(first.x).max())
    assert abs(first.x.mean(dtype=np.float64)) < bound and abs(first.x.std(dtype=np.float64) - 1) < bound
    again = load_dataset("mnist1d", seed=3)
    assert np.array_equal(first.x, again.x) and np.array_equal(first.y, again.y)
    other = load_dataset("mnist1d", seed=4, options={"num_samples": 200})
    assert len(other) == 200 and not np.array_equal(other.x, first.x[:200])
    with pytest.raises(ConfigError, match="data.options: dataset 'mnist1d' does not take these options"):
        load_dataset("mnist1d", options={"samples": 10})


def test_mnist1d_is_hard_for_linear_models_as_in_the_paper():
    """The paper's point: a linear classifier gets ~32% where a CNN gets ~94%."""
    from sklearn.linear_model import LogisticRegression

    data = load_dataset("mnist1d", seed=0)
    model = LogisticRegression(max_iter=500).fit(data.x[:4000, 0], data.y[:4000])
    assert 0.2 < model.score(data.x[4000:, 0], data.y[4000:]) < 0.45


@pytest.mark.parametrize("archive", [True, False])
def test_cifar_reads_the_python_archive_or_its_folder(tmp_path, archive):
    source, members = write_cifar(tmp_path, "cifar10", archive=archive)
    data = load_dataset("cifar10", source)
    order = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    expected = np.concatenate([members[m][b"data"] for m in order]).reshape(-1, 3, 32, 32)
    assert data.x.shape == (30, 3, 32, 32) and data.x.dtype == np.uint8
    assert np.array_equal(data.x, expected)
    assert data.y.tolist() == sum((members[m][b"labels"] for m in order), [])
    hundred = load_dataset("cifar100", write_cifar(tmp_path, "cifar100")[0])
    assert hundred.num_classes == 100 and len(hundred) == 102 and hundred.y[-2:].tolist() == [5, 7]


def test_cifar_unpickler_refuses_anything_but_arrays_and_containers(tmp_path):
    import io
    import os
    import pickle
    import tarfile

    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    source, _ = write_cifar(tmp_path, "cifar10")
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(source) as good, tarfile.open(evil, "w:gz") as bad:
        for member in good.getmembers():
            blob = good.extractfile(member).read()
            if member.name.endswith("test_batch"):
                blob = pickle.dumps({b"data": Exploit(), b"labels": []}, protocol=2)
                member.size = len(blob)
            bad.addfile(member, io.BytesIO(blob))
    with pytest.raises(DataError, match=r"test_batch: refusing to load (posix|os)\.system"):
        load_dataset("cifar10", str(evil))
    with pytest.raises(DataError, match="archive has no cifar-100-python/train"):
        load_dataset("cifar100", source)
    with pytest.raises(ConfigError, match="data.source: the cifar10 dataset is read from a path or URL"):
        load_dataset("cifar10")


def test_parquet_tables_are_checked_with_clear_errors(tmp_path):
    rows = [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]
    good = write_user_table(tmp_path, x=rows, label=[0, 1, 2])
    data = load_dataset("parquet", good, options={"x_column": "x"})
    assert data.x.shape == (3, 1, 2) and data.num_classes == 3 and data.x[2, 0, 1] == 5.0
    with pytest.raises(DataError, match=r"no column\(s\) \['image'\]; the table has \['x', 'label'\]"):
        load_dataset("parquet", good, options={"x_column": "image"})
    with pytest.raises(DataError, match=r"data.options.shape \[3, 3\] holds 9 values, but rows of 'x' have 2"):
        load_dataset("parquet", good, options={"x_column": "x", "shape": [3, 3]})
    ragged = write_user_table(tmp_path, x=[[0.0, 1.0], [2.0]], label=[0, 1])
    with pytest.raises(DataError, match="rows of x differ in length"):
        load_dataset("parquet", ragged, options={"x_column": "x"})
    negative = write_user_table(tmp_path, x=rows, label=[0, -1, 2])
    with pytest.raises(DataError, match=r"table user_dataset: column 'y' fails greater_than_or_equal_to\(0\) at row 1 \(value -1\)$"):
        load_dataset("parquet", negative, options={"x_column": "x"})
    text = write_user_table(tmp_path, x=rows, label=["a", "b", "c"])
    with pytest.raises(DataError, match="'label' integer labels; got list<element: double> and string"):
        load_dataset("parquet", text, options={"x_column": "x"})


def test_a_parquet_source_of_bytes_stays_uint8(tmp_path):
    pixels = np.arange(24, dtype=np.uint8).reshape(2, 12)
    source = tmp_path / "bytes.parquet"
    pq.write_table(pa.table({"x": pa.array(list(pixels), pa.list_(pa.uint8())), "label": [0, 1]}), source)
    data = load_dataset("parquet", str(source), options={"shape": [3, 2, 2]})
    assert data.x.dtype == np.uint8 and np.array_equal(data.x.reshape(2, 12), pixels)


def test_diabetes_is_the_bundled_regression_set():
    diabetes = load_dataset("diabetes")
    assert diabetes.task == "regression" and diabetes.x.shape == (442, 10, 1)
    assert diabetes.y.min() == 25.0 and diabetes.y.max() == 346.0
    assert float(diabetes.x[0, 0, 0]) == 59.0  # raw age of the first patient, not sklearn's scaled value
    mean, std = channel_stats(diabetes)
    assert mean.shape == (10,)  # one statistic per feature


def test_regression_splits_keep_the_target_distribution_and_standardise_with_train_statistics(tmp_path):
    diabetes = load_dataset("diabetes")
    strata = target_strata(diabetes.y, 10)
    assert set(np.bincount(strata).tolist()) == {44, 45}  # ten quantile bins of 442 targets
    assert (np.diff(strata[np.argsort(diabetes.y, kind="stable")]) >= 0).all()  # bins follow the target's order
    splits = stratified_split(diabetes, 0.15, 0.15, seed=3)
    assert sorted(np.concatenate([s.ids for _, s in splits.items()]).tolist()) == list(range(442))
    assert [len(s) for _, s in splits.items()] == [302, 70, 70]  # round(44 or 45 x 0.15) = 7 per bin
    # every bin sends its share to val and test, so their targets span the range
    assert splits.val.y.min() < 60 and splits.val.y.max() > 250
    mean, std = target_stats(splits.train)
    ready = standardise_targets(splits.train, mean, std)
    assert abs(ready.y.mean()) < 1e-6 and abs(ready.y.std() - 1) < 1e-5 and ready.y.dtype == np.float32
    write_split(str(tmp_path / "train"), ready)
    back = read_split(str(tmp_path / "train"))
    assert back.task == "regression" and np.array_equal(back.y, ready.y) and back.num_classes == 1
    with pytest.raises(ValueError, match="regression targets must be finite"):
        ArrayDataset(ready.x[:2], np.array([0.0, np.nan], np.float32), ready.ids[:2], 1, task="regression")


def test_image_folder_reads_classes_in_sorted_order_with_exact_png_pixels(tmp_path):
    root, written = write_image_folder(tmp_path / "images")
    data = load_dataset("image_folder", root)
    assert data.x.shape == (10, 3, 6, 5) and data.num_classes == 3
    # sorted paths: cat/0, cat/1, cat/deep/2, dog/0, dog/1, dog/deep/2, dog/photo.jpg, emu/...
    assert data.y.tolist() == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
    assert data.x.dtype == np.uint8
    assert np.array_equal(data.x[0], written["cat/0.png"].transpose(2, 0, 1))
    assert np.array_equal(data.x[5], written["dog/deep/2.png"].transpose(2, 0, 1))
    jpeg = data.x[6].astype(np.int64)
    assert np.abs(jpeg - 200).max() <= 2  # JPEG is lossy: a flat grey comes back within two levels
    grey = load_dataset("image_folder", root, options={"mode": "L", "size": [3, 4]})
    assert grey.x.shape == (10, 1, 3, 4)


def test_image_folder_names_the_bad_file(tmp_path):
    from PIL import Image

    root, _ = write_image_folder(tmp_path / "images")
    broken = tmp_path / "images" / "emu" / "1.png"
    broken.write_bytes(broken.read_bytes()[:40])  # a truncated download
    with pytest.raises(DataError, match=rf"^{broken}: not a readable PNG/JPEG image \("):
        load_dataset("image_folder", root)
    broken.unlink()
    Image.fromarray(np.zeros((7, 5, 3), dtype=np.uint8)).save(tmp_path / "images" / "emu" / "wide.png")
    with pytest.raises(DataError, match=r"emu/wide.png: 5x7 pixels, but .*cat/0.png has 5x6; set data.options.size"):
        load_dataset("image_folder", root)
    assert load_dataset("image_folder", root, options={"size": [6, 5]}).x.shape[2:] == (6, 5)
    with pytest.raises(DataError, match="no .png/.jpg/.jpeg images in class folders"):
        load_dataset("image_folder", str(tmp_path / "images" / "cat" / "deep"))
    with pytest.raises(ConfigError, match="data.options.mode"):
        load_dataset("image_folder", root, options={"mode": "CMYK"})
    with pytest.raises(DataError, match="not a folder of class folders"):
        load_dataset("image_folder", str(tmp_path / "missing"))
