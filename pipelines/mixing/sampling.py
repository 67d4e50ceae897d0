"""Random draws from an explicit ``torch.Generator`` only.

torch's own Gamma/Beta samplers take no generator, so Beta is built here from Gamma draws by the
Marsaglia-Tsang method (ACM TOMS 26(3), 2000), vectorised. Its acceptance rate is above 95%, so
one round with a little headroom almost always yields every draw: a batch of λ costs a dozen
tensor ops, not a dozen per rejection round.
"""

from __future__ import annotations

import math

import torch

from pipelines.mixing import native

_HEADROOM = 1.1  # candidates per wanted draw in a round (acceptance is >= 0.951 for shape >= 1)
_SLACK = 16  # plus a few, so that tiny batches rarely need a second round


def log_gamma_sample(concentration: float, n: int, generator: torch.Generator, fuse: bool | str = "auto") -> torch.Tensor:
    """``log`` of ``n`` Gamma(concentration, 1) draws, float64, on ``generator.device``.

    Working in log space keeps tiny concentrations (alpha = 0.1) from underflowing to 0.
    For concentration < 1 it uses Gamma(a) = Gamma(a + 1) * U**(1/a). Accepted candidates are
    used in the order drawn, so the result depends only on the generator state and ``n``.
    On the CPU, with ``fuse`` on, the arithmetic between the draws and the logs runs in
    :mod:`pipelines.mixing.native`, with the same results bit for bit.
    """
    if concentration <= 0:
        raise ValueError(f"concentration must be > 0, got {concentration}")
    device = generator.device
    fast = device.type == "cpu" and native.ready(fuse)
    boosted = concentration < 1
    shape = concentration + 1 if boosted else concentration
    d = shape - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    found = [torch.empty(0, dtype=torch.float64, device=device)]
    missing = n
    while missing > 0:
        m = math.ceil(missing * _HEADROOM) + _SLACK
        z = torch.randn(m, generator=generator, dtype=torch.float64, device=device)
        if fast:  # the same arithmetic in C loops: 5 tensor ops a round instead of 20
            u = torch.rand(m, generator=generator, dtype=torch.float64, device=device)
            kept = native.gamma_round(z, u, c, d, missing)
        else:
            log_u = torch.rand(m, generator=generator, dtype=torch.float64, device=device).log_()
            v = (1.0 + c * z) ** 3
            log_v = torch.where(v > 0, v, 1.0).log_()
            accept = (v > 0) & (log_u < 0.5 * z * z + d - d * v + d * log_v)
            kept = log_v[accept][:missing] + math.log(d)
        found.append(kept)
        missing -= kept.numel()
    out = found[1] if len(found) == 2 else torch.cat(found)
    if boosted:
        u = torch.rand(n, generator=generator, dtype=torch.float64, device=device)
        out = out + u.log_() / concentration
    return out


def beta_sample(
    a: float, b: float, n: int, generator: torch.Generator, dtype: torch.dtype = torch.float32,
    fuse: bool | str = "auto",
) -> torch.Tensor:
    """``n`` Beta(a, b) draws on ``generator.device``: G_a / (G_a + G_b), computed in float64
    (``fuse``: see :func:`log_gamma_sample`).

    In float32, draws within ~6e-8 of 1 round to exactly 1 (about 2% of them for a = b = 0.2).
    """
    if a == b:  # the usual mixup case: both Gamma draws in one batch
        log_a, log_b = log_gamma_sample(a, 2 * n, generator, fuse).view(2, n)
    else:
        log_a = log_gamma_sample(a, n, generator, fuse)
        log_b = log_gamma_sample(b, n, generator, fuse)
    return torch.sigmoid(log_a - log_b).to(dtype)


def bernoulli_mask(prob: float, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` booleans, each True with probability ``prob``."""
    return torch.rand(n, generator=generator, device=generator.device) < prob


def permutation(n: int, generator: torch.Generator) -> torch.Tensor:
    """A uniform random permutation of ``range(n)`` (int64)."""
    return torch.randperm(n, generator=generator, device=generator.device)
