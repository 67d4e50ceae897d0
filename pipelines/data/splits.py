"""Seeded stratified splits and train-statistics normalisation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.data.dataset import ArrayDataset
from pipelines.errors import DataError
from pipelines.seeding import numpy_generator


@dataclass(frozen=True)
class Splits:
    train: ArrayDataset
    val: ArrayDataset
    test: ArrayDataset

    def items(self) -> list[tuple[str, ArrayDataset]]:
        return [("train", self.train), ("val", self.val), ("test", self.test)]


def stratified_split(
    dataset: ArrayDataset, val_fraction: float, test_fraction: float, seed: int
) -> Splits:
    """Split so that every class keeps its proportions in train, val and test.

    Per class, ``round(n_c * fraction)`` samples go to val and to test (from a seeded
    permutation of that class); the rest go to train. Each split is returned in id order.

    Raises:
        DataError: a class is too small to appear in every split.
    """
    rng = numpy_generator(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for label in range(dataset.num_classes):
        members = np.flatnonzero(dataset.y == label)
        n_val = int(round(len(members) * val_fraction))
        n_test = int(round(len(members) * test_fraction))
        if len(members) - n_val - n_test < 1 or n_val < 1 or n_test < 1:
            raise DataError(
                f"class {label} has {len(members)} samples: too few for val_fraction={val_fraction}, "
                f"test_fraction={test_fraction}"
            )
        shuffled = members[rng.permutation(len(members))]
        parts["val"].append(shuffled[:n_val])
        parts["test"].append(shuffled[n_val : n_val + n_test])
        parts["train"].append(shuffled[n_val + n_test :])
    index = {name: np.sort(np.concatenate(chunks)) for name, chunks in parts.items()}
    return Splits(**{name: dataset.subset(idx) for name, idx in index.items()})


def channel_stats(dataset: ArrayDataset) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation over samples and positions (float64)."""
    axes = (0, *range(2, dataset.x.ndim))
    mean = dataset.x.mean(axis=axes, dtype=np.float64)
    std = dataset.x.std(axis=axes, dtype=np.float64)
    return mean, np.where(std > 0, std, 1.0)


def normalise(dataset: ArrayDataset, mean: np.ndarray, std: np.ndarray) -> ArrayDataset:
    """``(x - mean) / std`` per channel, in float32."""
    shape = (1, -1) + (1,) * (dataset.x.ndim - 2)
    x = ((dataset.x - mean.reshape(shape)) / std.reshape(shape)).astype(np.float32)
    return ArrayDataset(x, dataset.y, dataset.ids, dataset.num_classes)


def contiguous_share(num_items: int, parts: int, index: int) -> slice:
    """Part ``index`` of ``range(num_items)`` cut into ``parts`` contiguous pieces whose sizes
    differ by at most one (the first ``num_items % parts`` pieces are one larger)."""
    if not 0 <= index < parts:
        raise ValueError(f"part {index} is outside 0..{parts - 1}")
    base, extra = divmod(num_items, parts)
    start = index * base + min(index, extra)
    return slice(start, start + base + (1 if index < extra else 0))
