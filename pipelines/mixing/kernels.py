"""The one pass over the batch that a mask method makes, fused by ``torch.compile`` when it can be.

Written as PyTorch ops, a per-sample paste is several passes: the partners gathered into a new
batch, a broadcast mask built, then ``torch.where`` reading three tensors (about 3x the cost of
``x.clone()`` on CPU, about 6x with CutMix's box mask built in the same ops). Under ``torch.compile``
(Inductor: C++ on CPU, Triton on CUDA) the same function is one loop that gathers, masks and
writes each element once: 1.6x ``x.clone()`` of a 256 x 3 x 32 x 32 float32 batch on one CPU thread
(``benchmarks/bench_mixing.py``).

``fuse``: ``"auto"`` compiles on first use and falls back to the eager ops (with one line on
stderr) when compiling fails, e.g. without a C++ compiler (``MIXPIPE_FUSE=0`` in the environment
turns it off); ``True`` lets the failure raise; ``False`` never compiles. Compiling takes seconds
once per process and shape (Inductor caches its code on disk, so a second process is quicker).
The fused and eager paths give the same values bit for bit: the kernels only select elements.
Integer batches (uint8 images) always take the eager ops: Inductor's CPU code for them ran at half
the eager speed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Literal

import torch

Fuse = bool | Literal["auto"]
# MIXPIPE_FUSE=0 turns "auto" off for a process and the Ray workers it starts (the test suite's
# default: it checks the fused kernels against the eager ones once, instead of compiling per test)
FUSE_ENV = "MIXPIPE_FUSE"

_compiled: dict[str, Callable] = {}
_failed: set[str] = set()


def _fused(name: str, function: Callable, fuse: Fuse, eager: Callable | None = None) -> Callable:
    """``function`` compiled (once per process), or ``eager`` (default: ``function`` itself) when
    ``fuse`` is off or compiling failed."""
    eager = eager or function
    if fuse is False or name in _failed or (fuse == "auto" and os.environ.get(FUSE_ENV) == "0"):
        return eager
    if name not in _compiled:
        _compiled[name] = torch.compile(function, fullgraph=True)

    def call(*args: torch.Tensor) -> torch.Tensor:
        if not args[0].is_floating_point():  # Inductor's CPU code for uint8 ran 2x slower than eager here
            return eager(*args)
        try:
            return _compiled[name](*args)
        except Exception as error:  # Inductor's failures (no compiler, an unsupported op) share no base class
            if fuse is True:
                raise
            _failed.add(name)
            first = (str(error).strip().splitlines() or [""])[0][:200]
            print(f"mixpipe: mixing runs unfused ({name}: torch.compile failed: {type(error).__name__}: {first})",
                  file=sys.stderr, flush=True)
            return eager(*args)

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
    return _fused("paste_boxes", _paste_boxes, fuse)(x, index, low.to(x.device), high.to(x.device))


def _keep_below(x: torch.Tensor, index: torch.Tensor, rank: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    keep = rank.unsqueeze(1) < own.view(-1, *([1] * (x.ndim - 1)))
    return torch.where(keep, x, x.index_select(0, index))


def keep_below(x: torch.Tensor, index: torch.Tensor, rank: torch.Tensor, own: torch.Tensor, fuse: Fuse = "auto") -> torch.Tensor:
    """``x[b]`` where ``rank[b] < own[b]`` (``rank``: integer ``[B, *spatial]``, shared by the
    channels; ``own``: ``[B]``), ``x[index[b]]`` elsewhere: FMix's hard mask, thresholded in the pass."""
    return _fused("keep_below", _keep_below, fuse)(x, index, rank.to(x.device), own.to(x.device))
