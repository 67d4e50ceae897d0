"""Seeded stratified splits and train-statistics normalisation."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from pipelines.data.dataset import ArrayDataset, Normalisation
from pipelines.errors import DataError
from pipelines.seeding import numpy_generator


@dataclass(frozen=True)
class Splits:
    train: ArrayDataset
    val: ArrayDataset
    test: ArrayDataset

    def items(self) -> list[tuple[str, ArrayDataset]]:
        return [("train", self.train), ("val", self.val), ("test", self.test)]


def target_strata(y: np.ndarray, bins: int = 10) -> np.ndarray:
    """Regression targets binned at their quantiles into ``bins`` strata of near-equal size
    (index-order ties), so that splits keep the target distribution as class strata keep labels."""
    order = np.argsort(y, kind="stable")
    strata = np.empty(len(y), dtype=np.int64)
    strata[order] = np.arange(len(y)) * bins // max(len(y), 1)
    return strata


def stratified_indices(
    dataset: ArrayDataset, val_fraction: float, test_fraction: float, seed: int, regression_bins: int = 10
) -> dict[str, np.ndarray]:
    """The rows of each split, in id order: what :func:`stratified_split` takes, without copying
    the inputs (prepare writes each split from these rows, part by part).

    Per class, ``round(n_c * fraction)`` samples go to val and to test (from a seeded
    permutation of that class); the rest go to train. Regression targets are stratified by
    ``regression_bins`` quantile bins (:func:`target_strata`).

    Raises:
        DataError: a class (or target bin) is too small to appear in every split.
    """
    rng = numpy_generator(seed)
    regression = dataset.task == "regression"
    strata = target_strata(dataset.y, regression_bins) if regression else dataset.y
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for label in range(regression_bins if regression else dataset.num_classes):
        members = np.flatnonzero(strata == label)
        n_val = int(round(len(members) * val_fraction))
        n_test = int(round(len(members) * test_fraction))
        if len(members) - n_val - n_test < 1 or n_val < 1 or n_test < 1:
            raise DataError(
                f"{'target bin' if regression else 'class'} {label} has {len(members)} samples: too few for "
                f"val_fraction={val_fraction}, test_fraction={test_fraction}"
            )
        shuffled = members[rng.permutation(len(members))]
        parts["val"].append(shuffled[:n_val])
        parts["test"].append(shuffled[n_val : n_val + n_test])
        parts["train"].append(shuffled[n_val + n_test :])
    return {name: np.sort(np.concatenate(chunks)) for name, chunks in parts.items()}


def stratified_split(
    dataset: ArrayDataset, val_fraction: float, test_fraction: float, seed: int, regression_bins: int = 10
) -> Splits:
    """Split so that every class keeps its proportions in train, val and test
    (:func:`stratified_indices`); each split is returned in id order.

    Raises:
        DataError: a class (or target bin) is too small to appear in every split.
    """
    index = stratified_indices(dataset, val_fraction, test_fraction, seed, regression_bins)
    return Splits(**{name: dataset.subset(idx) for name, idx in index.items()})


def channel_stats(
    dataset: ArrayDataset, rows: np.ndarray | None = None, chunk_elements: int = 1 << 24,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation over samples and positions (float64), of ``rows``
    of ``dataset`` (default all).

    uint8 inputs (images) are summed exactly in int64, about ``chunk_elements`` values at a time,
    so that 400k images need no float64 copy of the whole split; float inputs use numpy's pairwise
    sums over the whole array.
    """
    x = dataset.x
    if np.issubdtype(x.dtype, np.integer) and x.dtype.itemsize == 1:
        channels = x.shape[1]
        total = np.zeros(channels, dtype=np.int64)
        squares = np.zeros(channels, dtype=np.int64)  # 255**2 * 2**40 values still fit in int64
        step = max(1, chunk_elements // max(x[0].size, 1))
        axes = (0, *range(2, x.ndim))
        count_rows = len(x) if rows is None else len(rows)
        for start in range(0, count_rows, step):
            block = x[start : start + step] if rows is None else x[rows[start : start + step]]
            total += block.sum(axis=axes, dtype=np.int64)
            wide = block.astype(np.uint16)  # 255**2 fits: two bytes per value, not eight
            squares += (wide * wide).sum(axis=axes, dtype=np.int64)
        count = count_rows * (x.size // max(len(x), 1)) // channels
        mean = total / count
        # the moments are exact; E[x^2] - E[x]^2 then cancels at most 255^2 x 2^-52 = 1.4e-11 of
        # absolute error into a variance, negligible beside any image channel's
        std = np.sqrt(np.maximum(squares / count - mean * mean, 0.0))
        return mean, np.where(std > 0, std, 1.0)
    x = x if rows is None else x[rows]
    axes = (0, *range(2, x.ndim))
    mean = x.mean(axis=axes, dtype=np.float64)
    std = x.std(axis=axes, dtype=np.float64)
    return mean, np.where(std > 0, std, 1.0)


def normalisation(dataset: ArrayDataset, rows: np.ndarray | None = None) -> Normalisation:
    """The per-channel statistics of ``rows`` of ``dataset`` (the train split's), as applied to
    every split's raw inputs."""
    mean, std = channel_stats(dataset, rows)
    return Normalisation(tuple(float(m) for m in mean), tuple(float(s) for s in std))


def normalise(dataset: ArrayDataset, mean: np.ndarray, std: np.ndarray) -> ArrayDataset:
    """``(x - mean) / std`` per channel, in float32."""
    stats = Normalisation(tuple(float(m) for m in mean), tuple(float(s) for s in std))
    return replace(dataset, x=stats.apply(dataset.x), normalisation=None)


def target_stats(dataset: ArrayDataset) -> tuple[float, float]:
    """Mean and standard deviation of regression targets (float64; a constant target gets std 1)."""
    mean, std = float(dataset.y.mean(dtype=np.float64)), float(dataset.y.std(dtype=np.float64))
    return mean, std if std > 0 else 1.0


def standardise_targets(dataset: ArrayDataset, mean: float, std: float) -> ArrayDataset:
    """Regression targets as ``(y - mean) / std`` in float32 (the train split's statistics), so
    that the loss scale and learning rates do not depend on the target's units."""
    return replace(dataset, y=((dataset.y - mean) / std).astype(np.float32))


def contiguous_share(num_items: int, parts: int, index: int) -> slice:
    """Part ``index`` of ``range(num_items)`` cut into ``parts`` contiguous pieces whose sizes
    differ by at most one (the first ``num_items % parts`` pieces are one larger)."""
    if not 0 <= index < parts:
        raise ValueError(f"part {index} is outside 0..{parts - 1}")
    base, extra = divmod(num_items, parts)
    start = index * base + min(index, extra)
    return slice(start, start + base + (1 if index < extra else 0))
