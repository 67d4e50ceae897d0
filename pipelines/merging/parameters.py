"""The merge methods' parameter types and ranges, shared by every method module.

params.yaml values (``merge.params``, every ``merge.search`` candidate) are checked against the
methods' signatures, which use these, before any stage starts Ray (``registry.check_arguments``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import Field

from pipelines.merging.sparsify import Rescale
from pipelines.merging.state import StateDict

Merged = tuple[StateDict, list[int]]  # the merged state dict and the indices of the models it used

Count = Annotated[int, Field(ge=1)]
Seed = Annotated[int, Field(ge=0)]
Rate = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
Unit = Annotated[float, Field(ge=0, le=1)]
Density = Annotated[float, Field(gt=0, le=1)]
Gamma = Annotated[float, Field(ge=0, lt=1)]
Epsilon = Annotated[float, Field(ge=0, lt=0.5)]
Weights = Annotated[Sequence[float], Field(min_length=1)] | None
TopkScope = Literal["tensor", "model"]
Election = Literal["weighted", "unweighted"]
ZeroSum = Literal["zero", "positive"]
Combine = Literal["mean", "sum"]

__all__ = ["Combine", "Count", "Density", "Election", "Epsilon", "Gamma", "Merged", "NonNegative", "Rate", "Rescale",
           "Seed", "TopkScope", "Unit", "Weights", "ZeroSum"]
