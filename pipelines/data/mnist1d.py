"""MNIST-1D, generated: ten 1-D digit templates, randomly padded, scaled, shifted, sheared and noised.

Follows Greydanus & Kobak, "Scaling Down Deep Learning with MNIST-1D" (ICML 2024; arXiv:2011.14439,
2020): each sample is its class template padded with 36-60 zeros, stretched to 72 points, scaled by
up to ±20%, rolled by up to 47 points, its zero region filled with smoothed noise, plus white
noise and a linear shear, then resampled to 40 points. Vectorised over samples with one
``numpy.random.Generator``; nothing is downloaded.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter1d

# The paper's twelve-point templates of the digits 0-9 (before normalisation).
_TEMPLATES = np.array(
    [
        [5, 6, 6.5, 6.75, 7, 7, 7, 7, 6.75, 6.5, 6, 5],
        [5, 3, 3, 3.4, 3.8, 4.2, 4.6, 5, 5.4, 5.8, 5, 5],
        [5, 6, 6.5, 6.5, 6, 5.25, 4.75, 4, 3.5, 3.5, 4, 5],
        [5, 6, 6.5, 6.5, 6, 5, 5, 6, 6.5, 6.5, 6, 5],
        [5, 4.4, 3.8, 3.2, 2.6, 2.6, 5, 5, 5, 5, 5, 5],
        [5, 3, 3, 3, 3, 5, 6, 6.5, 6.5, 6, 4.5, 5],
        [5, 4, 3.5, 3.25, 3, 3, 3, 3, 3.25, 3.5, 4, 5],
        [5, 7, 7, 6.6, 6.2, 5.8, 5.4, 5, 4.6, 4.2, 5, 5],
        [5, 4, 3.5, 3.5, 4, 5, 5, 4, 3.5, 3.5, 4, 5],
        [5, 4, 3.5, 3.5, 4, 5, 5, 5, 5, 4.7, 4.3, 5],
    ]
)
PADDING = (36, 60)
SCALE_COEFF = 0.4
MAX_TRANSLATION = 48
CORR_NOISE_SCALE = 0.25
IID_NOISE_SCALE = 2e-2
SHEAR_SCALE = 0.75
LENGTH = 40


def templates() -> np.ndarray:
    """``[10, 12]`` templates: whitened per digit, shifted to start at 0, divided by 6."""
    x = _TEMPLATES - _TEMPLATES.mean(1, keepdims=True)
    x = x / x.std(1, keepdims=True)
    return (x - x[:, :1]) / 6.0


def _resample(values: np.ndarray, lengths: np.ndarray, size: int) -> np.ndarray:
    """Linear resampling of each row's first ``lengths[i]`` entries onto ``size`` even points."""
    position = np.linspace(0.0, 1.0, size)[None, :] * (lengths[:, None] - 1)
    left = np.minimum(np.floor(position).astype(np.int64), lengths[:, None] - 2)
    frac = position - left
    rows = np.arange(len(values))[:, None]
    return values[rows, left] * (1 - frac) + values[rows, left + 1] * frac


def generate(num_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``num_samples`` signals ``[N, 1, 40]`` (float32, standardised over the whole set) and labels.

    Classes are balanced (``num_samples // 10`` each) and shuffled. The same seed gives the same
    array bit for bit.
    """
    rng = np.random.default_rng(seed)
    per_class = num_samples // 10
    labels = rng.permutation(np.repeat(np.arange(10), per_class))
    n = len(labels)
    base = templates()[labels] + 1e-8  # the offset keeps the template apart from the zero padding
    width = base.shape[1]
    low, high = PADDING
    pad = low + np.floor(rng.random(n) * (high - low + 1)).astype(np.int64)
    padded = np.zeros((n, width + high))
    padded[:, :width] = base
    x = _resample(padded, width + pad, width + high)  # stretch: template plus its padding onto 72 points
    x = x * (1 + SCALE_COEFF * (rng.random(n)[:, None] - 0.5))
    shift = rng.integers(0, MAX_TRANSLATION, n)
    columns = (np.arange(x.shape[1])[None, :] - shift[:, None]) % x.shape[1]
    x = np.take_along_axis(x, columns, axis=1)
    noise = gaussian_filter1d(CORR_NOISE_SCALE * rng.standard_normal(x.shape), 2, axis=1)
    x = np.where(x != 0, x, noise)
    x = x + IID_NOISE_SCALE * rng.standard_normal(x.shape)
    x = x - SHEAR_SCALE * (rng.random(n)[:, None] - 0.5) * np.linspace(-0.5, 0.5, x.shape[1])[None, :]
    x = _resample(x, np.full(n, x.shape[1]), LENGTH)
    x = (x - x.mean()) / x.std()
    return x.astype(np.float32)[:, None, :], labels.astype(np.int64)
