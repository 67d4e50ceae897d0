"""The mixing contract shared by every method, and the registry they live in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from pipelines.errors import ConfigError
from pipelines.mixing import native
from pipelines.mixing.sampling import bernoulli_mask, beta_sample, mixing_draws, permutation, stream_seed
from pipelines.registry import Registry

# compared with a generator's device: a third of the cost of reading ``.type``, on every call
_CPU = torch.device("cpu")


def draws_from_stream(generator: torch.Generator) -> bool:
    """Whether a call's draws come from the stream one draw of ``generator`` seeds (a CPU generator)
    or from tensor ops on the generator's device (a GPU's, where a host loop would synchronise)."""
    return generator.device == _CPU


@dataclass(frozen=True, slots=True)  # slots: built on every mixing call, a third cheaper
class MixOutput:
    """What a mixer returns.

    Attributes:
        x: the mixed inputs, same shape, dtype and device as the input.
        index: ``LongTensor[B]``, the partner of each sample (a random permutation, except for
            methods that sample partners, see :attr:`Mixer.partners_are_a_permutation`).
        lam: ``FloatTensor[B]``, the weight of each sample's own label. For mask methods it is the
            exact fraction of the sample's own elements; an unmixed sample has ``lam == 1``.
        y: mixed regression targets, for methods that mix targets themselves (C-Mixup); else None.
        layer: for methods that mix hidden features (manifold mixup), the model's mix point where
            the forward pass must mix (see :func:`pipelines.mixing.manifold.mixing_hidden`);
            ``x`` is then unmixed. None when ``x`` itself is mixed.
    """

    x: torch.Tensor
    index: torch.Tensor
    lam: torch.Tensor
    y: torch.Tensor | None = None
    layer: str | None = None


@dataclass(frozen=True)
class Draws:
    """The random choices of one call: ``index``, ``lam`` and ``mixed`` on the input's device,
    ``uniforms`` on the generator's."""

    index: torch.Tensor  # partner permutation
    lam: torch.Tensor  # float32 [B]; 1 where a sample is not mixed
    mixed: torch.Tensor  # bool [B]
    uniforms: torch.Tensor  # float64 [Mixer.extra_draws(shape)]: the method's own draws, in [0, 1)


@dataclass(frozen=True)
class Mixer:
    """Base class: draws partners, λ and which samples mix, then lets the method combine.

    Args:
        alpha: Beta(alpha, alpha) concentration of λ.
        mode: ``"elem"`` draws one λ (and mask) per sample, ``"batch"`` one for the batch.
        prob: probability that a sample (``elem``) or the batch (``batch``) is mixed at all.
        fuse: run the fast paths: the C kernels on the CPU, ``torch.compile`` on a GPU (``auto``:
            when they build here; see :mod:`pipelines.mixing.kernels`). It changes speed, not results.
    """

    alpha: float = 1.0
    mode: Literal["batch", "elem"] = "elem"
    prob: float = 1.0
    fuse: bool | Literal["auto"] = "auto"

    name: ClassVar[str] = ""
    partners_are_a_permutation: ClassVar[bool] = True
    mixes_hidden: ClassVar[bool] = False  # True: needs the model (online only, not in shards)

    def __post_init__(self) -> None:
        if not self.alpha > 0:
            raise ConfigError(f"mixing.alpha must be > 0, got {self.alpha!r}")
        if self.mode not in ("batch", "elem"):
            raise ConfigError(f"mixing.mode must be 'batch' or 'elem', got {self.mode!r}")
        if not 0 <= self.prob <= 1:
            raise ConfigError(f"mixing.prob must be in [0, 1], got {self.prob!r}")
        if self.fuse not in (True, False, "auto"):
            raise ConfigError(f"mixing.fuse must be true, false or auto, got {self.fuse!r}")

    def draw_count(self, batch_size: int) -> int:
        """λ (and boxes, masks) drawn per call: one per sample in elem mode, one for the batch."""
        return batch_size if self.mode == "elem" else 1

    def extra_draws(self, shape: torch.Size) -> int:
        """How many uniforms a call on a batch of ``shape`` draws for the method itself (box places,
        FMix's field picks), handed to :meth:`combine` as ``draws.uniforms``."""
        return 0

    def draw(
        self, batch_size: int, generator: torch.Generator, device: torch.device, index: torch.Tensor | None = None,
        extra: int = 0,
    ) -> Draws:
        """Partners (unless ``index`` is given), λ, the mix mask and ``extra`` uniforms, in a fixed
        order, so outputs are reproducible.

        On a CPU generator they come from the stream that one draw of it seeds
        (:func:`pipelines.mixing.sampling.mixing_draws`); on another device from tensor ops there.
        """
        count = self.draw_count(batch_size)
        if draws_from_stream(generator):
            index, lam, mixed, uniforms = mixing_draws(batch_size, count, self.alpha, self.alpha, self.prob, generator,
                                                       index=index, extra=extra, fuse=self.fuse)
        else:
            if index is None:
                index = permutation(batch_size, generator)
            lam = beta_sample(self.alpha, self.alpha, count, generator)
            mixed = bernoulli_mask(self.prob, count, generator)
            if self.prob < 1:  # uniform draws are below 1: at prob 1 every sample mixes
                lam = torch.where(mixed, lam, torch.ones_like(lam))
            uniforms = torch.rand(extra, generator=generator, dtype=torch.float64, device=generator.device)
        if count < batch_size:
            lam, mixed = lam.expand(batch_size).contiguous(), mixed.expand(batch_size).contiguous()
        index, lam, mixed = (t if t.device == device else t.to(device) for t in (index, lam, mixed))
        return Draws(index, lam, mixed, uniforms)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, *, generator: torch.Generator) -> MixOutput:
        if x.ndim < 2 or x.shape[0] != y.shape[0]:
            raise ValueError(f"x must be (B, ...) with B = len(y); got x {tuple(x.shape)}, y {tuple(y.shape)}")
        if draws_from_stream(generator) and (fused := self.fused_call(x, generator)) is not None:
            return fused
        draws = self.draw(x.shape[0], generator, x.device, extra=self.extra_draws(x.shape))
        return self.combine(x, draws, generator)

    def fused_call(self, x: torch.Tensor, generator: torch.Generator) -> MixOutput | None:
        """The whole call, draws included, in one native kernel (:func:`pipelines.mixing.native.mix`)
        where the method has one that runs for ``x``, with the results of :meth:`draw` then
        :meth:`combine`; else None. On a 3 MB batch the dozen Python and PyTorch calls it saves cost
        a fifth of the kernel: each one finds its data evicted from the caches by the batch."""
        return None

    def native_mix(self, method: int, x: torch.Tensor, generator: torch.Generator, **params: object) -> MixOutput:
        """:meth:`fused_call` by :func:`pipelines.mixing.native.mix` with this mixer's draws."""
        count = self.draw_count(x.shape[0])
        out, index, own = native.mix(method, x, stream_seed(generator), self.alpha, self.prob, count, **params)
        return MixOutput(out, index, own)  # positional: half the cost of keywords, on every call

    def combine(self, x: torch.Tensor, draws: Draws, generator: torch.Generator) -> MixOutput:
        raise NotImplementedError


MIXERS: Registry[type[Mixer]] = Registry("mixing method")


def register(name: str):
    """Register a :class:`Mixer` subclass under ``name``."""
    return MIXERS.register_named(name)


def partners_of(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[index]`` along the batch; ``index_select`` is about twice as fast as advanced indexing on CPU."""
    return x.index_select(0, index)


def interpolate(x: torch.Tensor, partner: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``lam * x + (1 - lam) * partner`` per sample, written over ``partner`` (which the caller owns).

    One fused ``lerp`` pass instead of four elementwise ones; ``lerp`` is exact at ``lam`` 1 and 0,
    so an unmixed sample keeps its input bit for bit. Narrower than float32 (a hidden layer's bf16
    output under autocast), the mix is taken in float32 and rounded once: a bf16 λ would be off by
    up to 2⁻⁹ from the float32 λ that weighs the labels in the loss. Integer inputs (uint8 images)
    are mixed in float32 and rounded.
    """
    if x.dtype in (torch.bfloat16, torch.float16):
        mixed = partner.float().lerp_(x.float(), broadcast_per_sample(lam.float(), x))
        return partner.copy_(mixed)
    if not x.is_floating_point():  # uint8 images: mixed in float32, rounded to the nearest level
        mixed = partner.float().lerp_(x.float(), broadcast_per_sample(lam.float(), x)).round_()
        return partner.copy_(mixed)
    return partner.lerp_(x, broadcast_per_sample(lam.to(x.dtype), x))


def broadcast_per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a ``[B]`` tensor to ``[B, 1, 1, ...]`` to broadcast against ``like``."""
    return values.reshape(-1, *([1] * (like.ndim - 1)))
