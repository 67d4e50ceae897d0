"""The one pass over the batch that a mask method makes: native C on the CPU, ``torch.compile``
elsewhere, and the eager PyTorch ops as the reference both must equal.

Written as PyTorch ops, a per-sample paste is several passes: the partners gathered into a new
batch, a broadcast mask built, then ``torch.where`` reading three tensors (about 3x the cost of
``x.clone()`` on CPU, about 6x with CutMix's box mask built in the same ops). On the CPU the
kernels of :mod:`pipelines.mixing.native` write each element once (CutMix's paste about 1.3x
``x.clone()`` of a 256 x 3 x 32 x 32 float32 batch on one thread, FMix's select 1.7x, ResizeMix's
resize 1.5-1.6x; ``benchmarks/bench_mixing.py``), and a plain call of CutMix, FMix or ResizeMix
draws and mixes in one of them (:meth:`pipelines.mixing.base.Mixer.fused_call`). On a GPU
``torch.compile`` (Triton) fuses the same eager function into one kernel.

``fuse``: ``"auto"`` builds (CPU) or compiles (GPU) on first use and falls back to the eager ops,
with one line on stderr, when that fails, e.g. without a C compiler (``MIXPIPE_FUSE=0`` in the
environment turns it off); ``True`` lets the failure raise; ``False`` never leaves the eager ops.
The box and mask kernels only select elements, and the resize kernel does the eager resize's
float32 operations in the same order, so every path gives the same values bit for bit.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Literal

import torch

from pipelines.mixing import native

Fuse = bool | Literal["auto"]
FUSE_ENV = native.FUSE_ENV

_compiled: dict[str, Callable] = {}
_failed: set[str] = set()


def native_ready(x: torch.Tensor, fuse: Fuse) -> bool:
    """Whether the native CPU kernels run for ``x``: a contiguous CPU batch and :func:`native.ready`."""
    return x.is_cpu and x.is_contiguous() and native.ready(fuse)


def _fused(name: str, function: Callable, fuse: Fuse) -> Callable:
    """``function`` compiled by ``torch.compile`` (once per process), or itself when ``fuse`` is off
    or compiling failed. For non-CPU devices: on the CPU the native kernels are faster."""
    if not native.enabled(fuse) or name in _failed:
        return function
    if name not in _compiled:
        _compiled[name] = torch.compile(function, fullgraph=True)

    def call(*args: torch.Tensor) -> torch.Tensor:
        try:
            return _compiled[name](*args)
        except Exception as error:  # Inductor's failures (no compiler, an unsupported op) share no base class
            if fuse is True:
                raise
            _failed.add(name)
            first = (str(error).strip().splitlines() or [""])[0][:200]
            print(f"mixpipe: mixing runs unfused ({name}: torch.compile failed: {type(error).__name__}: {first})",
                  file=sys.stderr, flush=True)
            return function(*args)

    return call


def _spatial_view(values: torch.Tensor, ndim: int) -> torch.Tensor:
    """``[B]`` values shaped ``[B, 1, 1, ...]`` against a ``[B, C, *spatial]`` batch of ``ndim`` axes."""
    return values.reshape(-1, *([1] * (ndim - 1)))


def box_mask(low: torch.Tensor, high: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Bool ``[B, 1, *spatial]``: inside each sample's ``[low, high)`` box (``[B, n]`` corners) of a
    ``[B, C, *spatial]`` batch of ``shape``."""
    inside = None
    for axis in range(low.shape[1]):
        size = shape[axis + 2]
        view = [1] * len(shape)
        view[axis + 2] = size
        positions = torch.arange(size, device=low.device).reshape(view)
        along = (positions >= _spatial_view(low[:, axis], len(shape))) & (positions < _spatial_view(high[:, axis], len(shape)))
        inside = along if inside is None else inside & along
    return inside


def _paste_boxes(x: torch.Tensor, index: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    return torch.where(box_mask(low, high, x.shape), x.index_select(0, index), x)


def paste_boxes(x: torch.Tensor, index: torch.Tensor, low: torch.Tensor, high: torch.Tensor, fuse: Fuse = "auto") -> torch.Tensor:
    """``x[index[b]]`` inside sample ``b``'s box ``[low[b], high[b])`` (``[B, n]`` integer corners
    on the ``n`` spatial axes), ``x[b]`` elsewhere."""
    if x.device.type == "cpu":  # CutMix's native kernel is called one floor up, with the box geometry
        return _paste_boxes(x, index, low, high)
    paste = _fused("paste_boxes", _paste_boxes, fuse) if x.is_floating_point() else _paste_boxes
    return paste(x, index, low.to(x.device), high.to(x.device))


def _keep_below(x: torch.Tensor, index: torch.Tensor, rank: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    keep = rank.unsqueeze(1) < own.view(-1, *([1] * (x.ndim - 1)))
    return torch.where(keep, x, x.index_select(0, index))


def keep_below(x: torch.Tensor, index: torch.Tensor, rank: torch.Tensor, own: torch.Tensor, fuse: Fuse = "auto") -> torch.Tensor:
    """``x[b]`` where ``rank[b] < own[b]`` (``rank``: integer ``[B, *spatial]``, shared by the
    channels; ``own``: ``[B]``), ``x[index[b]]`` elsewhere: FMix's hard mask, thresholded in the pass."""
    if x.device.type == "cpu":
        if native_ready(x, fuse):
            return native.keep_below(x, index, own=own, rank=rank)[0]
        return _keep_below(x, index, rank, own)
    keep = _fused("keep_below", _keep_below, fuse) if x.is_floating_point() else _keep_below
    return keep(x, index, rank.to(x.device), own.to(x.device))


def resize_taps(starts: torch.Tensor, sides: torch.Tensor, size: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """For each sample's box on an axis of ``size`` (``starts``, ``sides``: ``[B]``), the source
    taps of every position: ``first``, ``second`` (int64 ``[B, size]``) and weights ``near``, ``far``.

    Position ``p`` is output ``u = p - start`` of a half-pixel resize of the axis into ``side``
    outputs: it samples ``s = (u + 0.5) * (size / side) - 0.5`` (float64), clamped to the axis.
    Positions outside the box get clamped taps that callers never paste.
    """
    positions = torch.arange(size, dtype=torch.float64, device=starts.device)
    scale = size / sides.clamp(min=1).to(torch.float64)
    source = ((positions - starts.to(torch.float64).unsqueeze(1) + 0.5) * scale.unsqueeze(1) - 0.5).clamp(0, size - 1)
    low = torch.floor(source)
    first = low.long()
    far = (source - low).to(dtype)
    return first, (first + 1).clamp(max=size - 1), 1 - far, far


def resize_paste(x: torch.Tensor, index: torch.Tensor, starts: torch.Tensor, sides: torch.Tensor) -> torch.Tensor:
    """``x[index[b]]`` shrunk (half-pixel linear interpolation on every axis, as
    ``F.interpolate(..., align_corners=False)``) into sample ``b``'s box ``starts[b] .. starts[b] + sides[b]``
    (``[B, n]``; a side of 0: no box), ``x[b]`` elsewhere. Integer batches are interpolated in float32
    and rounded to the nearest level. The eager ops; on the CPU ResizeMix calls
    :func:`pipelines.mixing.native.resize_paste`, which computes the same.
    """
    starts, sides = starts.to(x.device), sides.to(x.device)
    work = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    resized = x.index_select(0, index).to(work)
    batch, channels, *spatial = x.shape
    for axis in range(len(spatial)):  # the first axis first, as the native kernel
        first, second, near, far = resize_taps(starts[:, axis], sides[:, axis], spatial[axis], work)
        view = [batch] + [1] * len(spatial)
        view[axis + 1] = spatial[axis]
        dim = axis + 2

        def taps(positions: torch.Tensor) -> torch.Tensor:
            return resized.gather(dim, positions.view(view).unsqueeze(1).expand_as(resized))

        near, far = near.view(view).unsqueeze(1), far.view(view).unsqueeze(1)
        resized = near * taps(first) + far * taps(second)
    if not x.is_floating_point():
        resized = resized.round()
    inside = box_mask(starts, starts + sides, x.shape)
    return torch.where(inside, resized.to(x.dtype), x)
