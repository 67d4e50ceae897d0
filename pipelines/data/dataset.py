"""The in-memory dataset every stage passes around: dense arrays plus their sample ids."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

# What inputs may be stored as: images keep their source's uint8 (a quarter of float32's bytes),
# everything else is float32. Normalisation happens where the inputs are used (on the device).
INPUT_DTYPES = (np.dtype(np.float32), np.dtype(np.uint8))


@dataclass(frozen=True)
class Normalisation:
    """Per-channel ``(x - mean) / std`` of the train split, kept beside raw inputs instead of
    applied on disk. Applied in float64 and rounded once to float32, on whatever holds the
    inputs (numpy here, the training device in :meth:`apply_torch`), so every path gives the
    same float32 inputs bit for bit."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std) or any(not s > 0 for s in self.std):
            raise ValueError(f"normalisation needs one positive std per channel, got mean {self.mean}, std {self.std}")

    def _shape(self, ndim: int) -> tuple[int, ...]:
        return (1, -1) + (1,) * (ndim - 2)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Normalised float32 copy of raw inputs ``(N, C, ...)``."""
        shape = self._shape(x.ndim)
        mean, std = np.asarray(self.mean).reshape(shape), np.asarray(self.std).reshape(shape)
        return ((x - mean) / std).astype(np.float32)

    def apply_torch(self, x, dtype=None):
        """As :meth:`apply` on a tensor, on its own device; ``dtype`` (default float32) is what
        the float64 result is rounded to."""
        import torch

        shape = self._shape(x.dim())
        mean = torch.tensor(self.mean, dtype=torch.float64, device=x.device).reshape(shape)
        std = torch.tensor(self.std, dtype=torch.float64, device=x.device).reshape(shape)
        return ((x.to(torch.float64) - mean) / std).to(dtype or torch.float32)

    def as_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}


@dataclass(frozen=True)
class ArrayDataset:
    """Inputs, targets and stable sample ids.

    Attributes:
        x: inputs, shape ``(N, *input_shape)`` (e.g. ``(N, 1, 8, 8)``): float32, or uint8 images.
        y: classification: int64 labels in ``[0, num_classes)``; regression: float32 targets.
        ids: int64 ids of the samples in the source dataset (survive splits and shuffles).
        num_classes: the model's outputs: classes, or 1 for a scalar regression target.
        task: ``classification`` or ``regression`` (:mod:`pipelines.tasks`).
        normalisation: set when ``x`` is raw (as stored): what :meth:`normalised` applies.
    """

    x: np.ndarray
    y: np.ndarray
    ids: np.ndarray
    num_classes: int
    task: str = "classification"
    normalisation: Normalisation | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        n = len(self.x)
        if self.x.dtype not in INPUT_DTYPES:
            raise TypeError(f"x must be float32 or uint8, got {self.x.dtype}")
        if self.y.shape != (n,) or self.ids.shape != (n,):
            raise ValueError(f"x has {n} rows but y has shape {self.y.shape}, ids {self.ids.shape}")
        if self.task == "regression":
            if self.y.dtype != np.float32 or self.num_classes != 1 or not np.isfinite(self.y).all():
                raise ValueError(f"regression targets must be finite float32 with num_classes 1, got {self.y.dtype}, {self.num_classes}")
        elif self.task != "classification":
            raise ValueError(f"task must be classification or regression, got {self.task!r}")
        elif n and (self.y.min() < 0 or self.y.max() >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes}), got [{self.y.min()}, {self.y.max()}]")

    def __len__(self) -> int:
        return len(self.x)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def subset(self, index: np.ndarray) -> ArrayDataset:
        return replace(self, x=self.x[index], y=self.y[index], ids=self.ids[index])

    def normalised(self) -> ArrayDataset:
        """The dataset with float32 inputs ready for a model (itself when already normalised)."""
        if self.normalisation is None:
            return self
        return replace(self, x=self.normalisation.apply(self.x), normalisation=None)


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
        return replace(
            self, x=self.x[index], y=self.y[index], ids=self.ids[index], y_partner=self.y_partner[index], lam=self.lam[index]
        )


def check_values(data: ArrayDataset, where: str, column: str = "x") -> None:
    """Refuse what would silently corrupt every stage after this one: a non-finite input (one NaN
    made prepare's normalisation statistics, and so every feature, NaN), a non-finite regression
    target, and an id that appears twice (its rows would land in several splits).

    Args:
        where: what the data came from (a file), named in the error.
        column: the inputs' column name in that source.

    Raises:
        DataError: naming the first bad row, its id and how many rows are bad.
    """
    from pipelines.errors import DataError

    flat = data.x.reshape(len(data), -1)
    # integer pixels are always finite (and a mask over 400k images would be gigabytes)
    bad_rows = np.empty(0, np.int64) if np.issubdtype(flat.dtype, np.integer) else np.flatnonzero(~np.isfinite(flat).all(axis=1))
    if bad_rows.size:
        row = int(bad_rows[0])
        element = int(np.flatnonzero(~np.isfinite(flat[row]))[0])
        raise DataError(
            f"{where}: row {row} (id {int(data.ids[row])}) of {column!r} holds {flat[row, element]} at element {element}"
            f"{f' ({bad_rows.size} rows in all)' if bad_rows.size > 1 else ''}; drop or repair those rows"
        )
    if data.task == "regression" and not np.isfinite(data.y).all():
        row = int(np.flatnonzero(~np.isfinite(data.y))[0])
        raise DataError(f"{where}: row {row} (id {int(data.ids[row])}) has the target {data.y[row]}; drop or repair it")
    ids, counts = np.unique(data.ids, return_counts=True)
    repeated = ids[counts > 1]
    if repeated.size:
        duplicate = int(repeated[0])
        rows = np.flatnonzero(data.ids == duplicate)[:3].tolist()
        more = f" ({repeated.size} ids repeat)" if repeated.size > 1 else ""
        raise DataError(f"{where}: id {duplicate} is in rows {rows}{more}; ids must be unique, or a sample lands in more "
                        "than one split")
