"""Saliency-guided box mixing: SaliencyMix, with spectral-residual saliency computed in torch."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipelines.mixing.base import Draws, Mixer, MixOutput, register
from pipelines.mixing.boxes import box_sides, check_spatial, paste_boxes

_POOLS = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _box_filter(values: torch.Tensor, width: int = 3) -> torch.Tensor:
    """Mean over a ``width``-wide neighbourhood on every spatial axis of ``[B, *spatial]`` (edges: valid part)."""
    pool = _POOLS[values.ndim - 1]
    return pool(values.unsqueeze(1), width, stride=1, padding=width // 2, count_include_pad=False).squeeze(1)


def spectral_residual_saliency(x: torch.Tensor) -> torch.Tensor:
    """Saliency maps ``[B, *spatial]`` by the spectral residual (Hou & Zhang, CVPR 2007).

    The channel-mean image's log-amplitude spectrum minus its local average is transformed back
    with the original phase; the squared magnitude, smoothed, is the saliency. Batched FFTs over
    the 1-3 spatial axes; no OpenCV.
    """
    grey = x.float().mean(1)
    axes = tuple(range(1, grey.ndim))
    spectrum = torch.fft.fftn(grey, dim=axes)
    log_amplitude = torch.log(spectrum.abs().clamp(min=1e-8))
    residual = log_amplitude - _box_filter(log_amplitude)
    saliency = torch.fft.ifftn(torch.polar(torch.exp(residual), torch.angle(spectrum)), dim=axes).abs() ** 2
    return _box_filter(_box_filter(saliency))


def saliency_peaks(x: torch.Tensor) -> torch.Tensor:
    """Coordinates ``[B, ndim]`` of each sample's most salient position."""
    saliency = spectral_residual_saliency(x)
    spatial = saliency.shape[1:]
    flat = saliency.flatten(1).argmax(1)
    coords = []
    for size in reversed(spatial):
        coords.append(flat % size)
        flat = flat // size
    return torch.stack(coords[::-1], dim=1)


@register("saliencymix")
class SaliencyMix(Mixer):
    """SaliencyMix (Uddin et al., "SaliencyMix: A Saliency Guided Data Augmentation Strategy for
    Better Regularization", ICLR 2021).

    As CutMix, but the box (area ``1 - lam`` before clipping) is centred on the partner's saliency
    peak, and the partner's content there is pasted at the same place; ``lam`` is the exact own
    fraction.
    """

    def combine(self, x: torch.Tensor, draws: Draws, generator: torch.Generator) -> MixOutput:
        spatial = check_spatial("saliencymix", x)
        sides = box_sides(draws.lam, spatial)
        # saliency is per sample: the partners' peaks are the peaks of x, taken in partner order
        peaks = saliency_peaks(x).index_select(0, draws.index.to(x.device))
        return paste_boxes(x, draws, sides, peaks.to(sides.device), self.fuse)
