"""Averages on the sphere: the weighted Karcher (Fréchet) mean of directions, for merging more than
two models the way SLERP merges two (Buss & Fillmore, "Spherical Averages and Applications to
Spherical Splines and Interpolation", ACM TOG 20(2), 2001; mergekit's ``karcher``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

# directions closer than this (radians), and tensors of smaller norm, count as equal / as zero
TOLERANCE = 1e-12


def karcher_direction(units: torch.Tensor, weights: torch.Tensor, max_iter: int = 50, tol: float = 1e-10) -> torch.Tensor:
    """The weighted Karcher mean of unit vectors (rows of ``units``, float64): the point of the
    sphere minimising the weighted sum of squared geodesic distances to them.

    Riemannian gradient descent with unit steps: map every vector to the tangent space at the
    current mean (log map), take the weighted mean there, step along it (exp map); stop when the
    step is shorter than ``tol`` radians. Starts from the normalised weighted chordal mean. For two
    vectors the answer is their SLERP at the second one's weight share.
    """
    weights = weights / weights.sum()
    mean = (weights.unsqueeze(1) * units).sum(0)
    mean = mean / mean.norm() if mean.norm() > TOLERANCE else units[0].clone()
    for _ in range(max_iter):
        cos = (units @ mean).clamp(-1.0, 1.0)
        angle = torch.arccos(cos)
        # log map: the tangent vector at `mean` towards each unit vector, of length `angle`
        along = units - cos.unsqueeze(1) * mean
        length = along.norm(dim=1)
        safe = torch.where(length > TOLERANCE, length, torch.ones_like(length))
        tangent = torch.where((length > TOLERANCE).unsqueeze(1), along * (angle / safe).unsqueeze(1), torch.zeros_like(along))
        step = (weights.unsqueeze(1) * tangent).sum(0)
        size = step.norm()
        if size < tol:
            break
        mean = torch.cos(size) * mean + torch.sin(size) * step / size  # exp map
        mean = mean / mean.norm()
    return mean


def spherical_mean(tensors: Sequence[torch.Tensor], weights: Sequence[float], max_iter: int = 50, tol: float = 1e-10) -> torch.Tensor:
    """Tensors merged on the sphere: their weighted Karcher mean direction (flattened, float64)
    times their weighted mean norm, in the first tensor's dtype. Zero tensors have no direction
    and take part only in the norm (as mergekit does); all zero gives zero."""
    first = tensors[0]
    flat = torch.stack([t.double().flatten() for t in tensors])
    w = torch.tensor([float(v) for v in weights], dtype=torch.float64)
    norms = flat.norm(dim=1)
    scale = float((w * norms).sum() / w.sum())
    alive = norms > TOLERANCE
    if not bool(alive.any()):
        return torch.zeros_like(first)
    direction = karcher_direction(flat[alive] / norms[alive].unsqueeze(1), w[alive], max_iter, tol)
    return (scale * direction).reshape(first.shape).to(first.dtype)
