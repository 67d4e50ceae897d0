"""A mixing configuration as plain data: what params.yaml's ``mixing`` section describes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pipelines.config import MixingParams
from pipelines.mixing.base import Mixer


@dataclass(frozen=True)
class MixingSpec:
    """The method and hyperparameters of one mixing setup (picklable, hashable)."""

    method: str = "none"
    alpha: float = 1.0
    mode: Literal["batch", "elem"] = "elem"
    prob: float = 1.0
    label_smoothing: float = 0.0

    @classmethod
    def from_params(cls, mixing: MixingParams) -> MixingSpec:
        return cls(mixing.method, mixing.alpha, mixing.mode, mixing.prob, mixing.label_smoothing)

    def build(self) -> Mixer:
        from pipelines.mixing import get_mixer

        return get_mixer(self.method, alpha=self.alpha, mode=self.mode, prob=self.prob)
