"""State-dict helpers shared by merge methods."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from pipelines import storage
from pipelines.errors import DataError
from pipelines.merging.lazy import SafetensorsFile, tensor_spec
from pipelines.models.checkpoints import WEIGHTS

StateDict = dict[str, torch.Tensor]
ModelSource = Mapping[str, torch.Tensor] | str


def resolve(model: ModelSource) -> Mapping[str, torch.Tensor]:
    """A state dict from a mapping; a safetensors file or checkpoint directory is opened lazily
    (:class:`SafetensorsFile`): tensors are read when a merge asks for them, one at a time."""
    if isinstance(model, Mapping):
        return model
    path = str(model)
    return SafetensorsFile(path if path.endswith(".safetensors") else storage.join(path, WEIGHTS))


def check_compatible(states: Sequence[StateDict]) -> None:
    """All state dicts must have the same keys, shapes and dtypes."""
    if not states:
        raise DataError("merge: no models given")
    reference = states[0]
    for i, state in enumerate(states[1:], start=1):
        if state.keys() != reference.keys():
            diff = sorted(set(state) ^ set(reference))[:5]
            raise DataError(f"merge: model {i} has different tensors than model 0 (e.g. {diff})")
        for name in state:
            (shape, dtype), (ref_shape, ref_dtype) = tensor_spec(state, name), tensor_spec(reference, name)
            if shape != ref_shape or dtype != ref_dtype:
                raise DataError(
                    f"merge: tensor {name!r} is {shape}/{dtype} in model {i} but {ref_shape}/{ref_dtype} in model 0"
                )


def weighted_average(states: Sequence[StateDict], weights: Sequence[float] | None = None) -> StateDict:
    """Per-tensor weighted mean (weights normalised to sum 1), accumulated in float64.

    Non-floating tensors (counters, indices) are taken from the first model.
    """
    check_compatible(states)
    if weights is None:
        weights = [1.0] * len(states)
    if len(weights) != len(states) or sum(weights) <= 0 or min(weights) < 0:
        raise DataError(f"merge: need one non-negative weight per model with a positive sum, got {list(weights)}")
    total = float(sum(weights))
    merged: StateDict = {}
    for name, first in states[0].items():
        if not first.is_floating_point():
            merged[name] = first.clone()
            continue
        acc = torch.zeros(first.shape, dtype=torch.float64)
        for state, weight in zip(states, weights, strict=True):
            acc += state[name].to(torch.float64) * (weight / total)
        merged[name] = acc.to(first.dtype)
    return merged
