"""The in-memory dataset every stage passes around: dense arrays plus their sample ids."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ArrayDataset:
    """Inputs, integer labels and stable sample ids.

    Attributes:
        x: float32 inputs, shape ``(N, *input_shape)`` (e.g. ``(N, 1, 8, 8)``).
        y: int64 labels in ``[0, num_classes)``.
        ids: int64 ids of the samples in the source dataset (survive splits and shuffles).
        num_classes: number of classes.
    """

    x: np.ndarray
    y: np.ndarray
    ids: np.ndarray
    num_classes: int

    def __post_init__(self) -> None:
        n = len(self.x)
        if self.x.dtype != np.float32:
            raise TypeError(f"x must be float32, got {self.x.dtype}")
        if self.y.shape != (n,) or self.ids.shape != (n,):
            raise ValueError(f"x has {n} rows but y has shape {self.y.shape}, ids {self.ids.shape}")
        if n and (self.y.min() < 0 or self.y.max() >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes}), got [{self.y.min()}, {self.y.max()}]")

    def __len__(self) -> int:
        return len(self.x)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def subset(self, index: np.ndarray) -> ArrayDataset:
        return ArrayDataset(self.x[index], self.y[index], self.ids[index], self.num_classes)


@dataclass(frozen=True, kw_only=True)
class MixedDataset(ArrayDataset):
    """Mixed samples read back from offline shards: ``x`` is already mixed, ``y`` is each sample's
    own label, and ``y_partner`` and ``lam`` complete its label pair."""

    y_partner: np.ndarray
    lam: np.ndarray

    def __post_init__(self) -> None:
        super().__post_init__()
        n = len(self.x)
        if self.y_partner.shape != (n,) or self.lam.shape != (n,):
            raise ValueError(f"x has {n} rows but y_partner has shape {self.y_partner.shape}, lam {self.lam.shape}")

    def subset(self, index: np.ndarray) -> MixedDataset:
        return MixedDataset(
            x=self.x[index], y=self.y[index], ids=self.ids[index], num_classes=self.num_classes,
            y_partner=self.y_partner[index], lam=self.lam[index],
        )
