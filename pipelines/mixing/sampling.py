"""Random draws from an explicit ``torch.Generator`` only.

A mixing call on a CPU generator takes one 63-bit seed from it and all of its random choices from
the SplitMix64 stream of that seed (:func:`mixing_draws`): the method's own draws (box places, FMix's
field picks), the partner permutation by Fisher-Yates, whether each sample mixes, and λ by Cheng's
Beta sampler. They are computed in :mod:`pipelines.mixing.native` where it builds, else by the
Python below, with the same results bit for bit: integer arithmetic for the stream, and the same
IEEE operations in the same order, with the same C library's ``log`` and ``exp``, for λ. One draw
and one C call cost less than half of the dozen small tensor ops they replace (about 115 µs on a
256 x 3 x 32 x 32 batch once it has flushed the caches: half as much as copying it).

On other devices (a CUDA generator), where a sequential loop would mean copying to the host, λ is
drawn with tensor ops: Beta from Gamma draws by the Marsaglia-Tsang method (ACM TOMS 26(3), 2000),
vectorised, since torch's own Gamma and Beta samplers take no generator. Its acceptance rate is
above 95%, so one round with a little headroom almost always yields every draw.
"""

from __future__ import annotations

import math
import sys
import threading
from dataclasses import dataclass

import torch

from pipelines.mixing import native

_HEADROOM = 1.1  # candidates per wanted draw in a round (acceptance is >= 0.951 for shape >= 1)
_SLACK = 16  # plus a few, so that tiny batches rarely need a second round

# native.c's constants, spelled the same: log 4 and 1 + log 5
LN4 = 1.3862943611198906
ONE_PLUS_LN5 = 2.6094379124341005
_MASK64 = (1 << 64) - 1
_seed_scratch = threading.local()


@dataclass(frozen=True)
class ChengBeta:
    """Cheng's Beta(a, b) sampler (R. C. H. Cheng, "Generating beta variates with nonintegral shape
    parameters", Communications of the ACM 21(4), 1978): algorithm BB when both shapes exceed 1, BC
    otherwise. Each candidate takes two uniforms; :func:`candidate` mirrors ``mp_cheng_candidate``
    in native.c operation for operation. For the symmetric shapes the mixers use, at least half the
    candidates are accepted (BC as the shape goes to 0; BB accepts at least 88%).

    Attributes:
        lo, hi: ``min(a, b)``, ``max(a, b)``.
        w_first: whether the draw is ``w / (other + w)`` (else ``other / (other + w)``).
    """

    lo: float
    hi: float
    total: float
    beta: float
    gamma: float
    k1: float
    k2: float
    bb: bool
    w_first: bool

    @classmethod
    def of(cls, a: float, b: float) -> ChengBeta:
        lo, hi = (a, b) if a < b else (b, a)
        total = a + b
        if lo > 1.0:
            beta = math.sqrt((total - 2.0) / (2.0 * lo * hi - total))
            return cls(lo, hi, total, beta, lo + 1.0 / beta, 0.0, 0.0, True, a == lo)
        delta = 1.0 + hi - lo
        beta = 1.0 / lo
        k1 = delta * (0.0138889 + 0.0416667 * lo) / (hi * beta - 0.777778)
        k2 = 0.25 + (0.5 + 0.25 / delta) * lo
        return cls(lo, hi, total, beta, 0.0, k1, k2, False, a == hi)

    def candidate(self, u1: float, u2: float) -> float | None:
        """The draw of the candidate ``(u1, u2)``, or None when it is rejected."""
        if self.bb:
            other = self.hi
            v = self.beta * _log(u1 / (1.0 - u1))
            w = _scaled_exp(self.lo, v)
            z = u1 * u1 * u2
            r = self.gamma * v - LN4
            s = self.lo + r - w
            if s + ONE_PLUS_LN5 < 5.0 * z:
                t = _log(z)
                if s < t and r + self.total * _log(self.total / (self.hi + w)) < t:
                    return None
        else:
            other = self.lo
            sure = False
            if u1 < 0.5:
                y = u1 * u2
                z = u1 * y
                if 0.25 * u2 + z - y >= self.k1:
                    return None
            else:
                z = u1 * u1 * u2
                if z <= 0.25:
                    sure = True
                elif z >= self.k2:
                    return None
            v = self.beta * _log(u1 / (1.0 - u1))
            w = _scaled_exp(self.hi, v)
            if not sure and self.total * (_log(self.total / (self.lo + w)) + v) - LN4 < _log(z):
                return None
        return w / (other + w) if self.w_first else other / (other + w)


def _log(value: float) -> float:
    """``log``, with ``log(0) = -inf`` as in C (``math.log`` raises there)."""
    return math.log(value) if value > 0.0 else -math.inf


def _scaled_exp(scale: float, value: float) -> float:
    """``scale * e**value``, saturating at the largest double where it would overflow (as in C;
    ``math.exp`` raises beyond 709.78)."""
    if value > 709.0:
        return sys.float_info.max
    product = scale * math.exp(value)
    return product if product <= sys.float_info.max else sys.float_info.max


class SplitMix64:
    """The stream of native.c's ``mp_next`` (Steele, Lea and Flood, "Fast splittable pseudorandom
    number generators", OOPSLA 2014), in Python integers, for machines without the C kernels."""

    def __init__(self, seed: int) -> None:
        self.state = seed & _MASK64

    def uniform(self) -> float:
        """A double in [0, 1): the top 53 bits of the next output, exactly."""
        self.state = (self.state + 0x9E3779B97F4A7C15) & _MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        return ((z ^ (z >> 31)) >> 11) * 2.0**-53


def stream_seed(generator: torch.Generator) -> int:
    """The seed of a call's stream: one draw of ``generator`` in [0, 2**63), by ``random_`` on a
    0-d tensor kept per thread (a third of the cost of ``torch.randint`` and a new tensor)."""
    scratch = getattr(_seed_scratch, "tensor", None)
    if scratch is None:
        scratch = _seed_scratch.tensor = torch.empty((), dtype=torch.int64)
    return scratch.random_(generator=generator).item()


def mixing_draws(batch: int, count: int, a: float, b: float, prob: float, generator: torch.Generator, *,
                 index: torch.Tensor | None = None, extra: int = 0, fuse: bool | str = "auto",
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The random choices of one mixing call on a CPU ``generator``, from one draw of it.

    The stream of that seed gives, in order: ``extra`` uniforms for the method, the partners
    (Fisher-Yates, ``batch - 1`` uniforms) unless ``index`` is given, a uniform per mix flag, then
    λ from as many Cheng candidate pairs as it takes (for Beta(1, 1), the uniform distribution, a
    uniform each: a fifth of the draws' time goes to Cheng's logs otherwise).

    Args:
        batch: the batch size.
        count: λ and mix flags to draw (``batch`` in elem mode, 1 in batch mode).
        a, b: the Beta shapes of λ.
        prob: probability that a sample mixes; one that does not gets ``λ == 1``.
        index: the partners, when given (then none are drawn).
        extra: uniforms to draw for the method itself.
        fuse: compute in :mod:`pipelines.mixing.native` (see :func:`native.ready`), else in Python.

    Returns:
        ``(index, lam, mixed, uniforms)``: int64 ``[batch]``, float32 ``[count]``, bool ``[count]``
        and float64 ``[extra]``.
    """
    seed = stream_seed(generator)
    partners = index is None
    if native.ready(fuse):
        index = torch.empty(batch, dtype=torch.int64) if partners else index
        mixed, lam = torch.empty(count, dtype=torch.bool), torch.empty(count, dtype=torch.float32)
        uniforms = torch.empty(extra, dtype=torch.float64)
        native.mixing_draws(seed, uniforms, index if partners else None, prob, mixed, a, b, lam)
        return index, lam, mixed, uniforms
    stream = SplitMix64(seed)
    uniforms = torch.tensor([stream.uniform() for _ in range(extra)], dtype=torch.float64)
    if partners:
        order = list(range(batch))
        for i in range(batch - 1, 0, -1):
            j = min(int(stream.uniform() * (i + 1)), i)
            order[i], order[j] = order[j], order[i]
        index = torch.tensor(order, dtype=torch.int64)
    flags = [stream.uniform() < prob for _ in range(count)]
    if a == b == 1.0:  # Beta(1, 1) is the uniform distribution itself: one uniform per λ, as in C
        draws = [stream.uniform() for _ in range(count)]
    else:
        cheng, draws = ChengBeta.of(a, b), []
        while len(draws) < count:
            draw = cheng.candidate(stream.uniform(), stream.uniform())
            if draw is not None:
                draws.append(draw)
    lams = [draw if flag else 1.0 for draw, flag in zip(draws, flags, strict=True)]
    lam = torch.tensor(lams, dtype=torch.float64).to(torch.float32)
    return index, lam, torch.tensor(flags, dtype=torch.bool), uniforms


def log_gamma_sample(concentration: float, n: int, generator: torch.Generator) -> torch.Tensor:
    """``log`` of ``n`` Gamma(concentration, 1) draws, float64, on ``generator.device``.

    Working in log space keeps tiny concentrations (alpha = 0.1) from underflowing to 0.
    For concentration < 1 it uses Gamma(a) = Gamma(a + 1) * U**(1/a). Accepted candidates are
    used in the order drawn, so the result depends only on the generator state and ``n``.
    """
    if concentration <= 0:
        raise ValueError(f"concentration must be > 0, got {concentration}")
    device = generator.device
    boosted = concentration < 1
    shape = concentration + 1 if boosted else concentration
    d = shape - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    found = [torch.empty(0, dtype=torch.float64, device=device)]
    missing = n
    while missing > 0:
        m = math.ceil(missing * _HEADROOM) + _SLACK
        z = torch.randn(m, generator=generator, dtype=torch.float64, device=device)
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


def beta_sample(a: float, b: float, n: int, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``n`` Beta(a, b) draws on ``generator.device`` with tensor ops: G_a / (G_a + G_b), computed
    in float64. In float32, draws within ~6e-8 of 1 round to exactly 1 (about 2% of them for a = b = 0.2).
    """
    if a == b:  # the usual mixup case: both Gamma draws in one batch
        log_a, log_b = log_gamma_sample(a, 2 * n, generator).view(2, n)
    else:
        log_a = log_gamma_sample(a, n, generator)
        log_b = log_gamma_sample(b, n, generator)
    return torch.sigmoid(log_a - log_b).to(dtype)


def bernoulli_mask(prob: float, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` booleans, each True with probability ``prob``."""
    return torch.rand(n, generator=generator, device=generator.device) < prob


def permutation(n: int, generator: torch.Generator) -> torch.Tensor:
    """A uniform random permutation of ``range(n)`` (int64)."""
    return torch.randperm(n, generator=generator, device=generator.device)
