"""Numeric precision of losses and metrics."""

from __future__ import annotations

import torch


def at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in float32 if it is narrower (bf16 logits under autocast), else unchanged: a
    float64 run (the exactness proofs) keeps float64 all the way through its loss."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))
