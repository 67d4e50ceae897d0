"""The dataset registry: ``data.name`` in params.yaml picks a loader from :data:`DATASETS`."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pipelines.data.dataset import ArrayDataset
from pipelines.errors import ConfigError
from pipelines.registry import Registry

DatasetLoader = Callable[..., ArrayDataset]
DATASETS: Registry[DatasetLoader] = Registry("dataset")


@DATASETS.register("digits")
def load_digits(source: str | None = None) -> ArrayDataset:
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes).

    Pixels are scaled from 0..16 to [0, 1]; inputs have shape ``(1797, 1, 8, 8)``.
    """
    if source is not None:
        raise ConfigError(f"data.source: the digits dataset is bundled and takes no source, got {source!r}")
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    x = (bunch.images.astype(np.float32) / np.float32(16.0))[:, None, :, :]
    y = bunch.target.astype(np.int64)
    return ArrayDataset(x=x, y=y, ids=np.arange(len(y), dtype=np.int64), num_classes=10)


def load_dataset(name: str, source: str | None = None) -> ArrayDataset:
    """Load the registered dataset ``name`` (``source`` for those read from a URL)."""
    return DATASETS.get(name, key="data.name")(source=source)
