"""Resolve oneMKL's vector-math dispatch once, on one thread, before any parallel op uses it.

PyTorch's CPU build sends contiguous float32/float64 unary ops (``exp``, ``log``, ``sqrt``, ``tanh``,
...) to MKL VML, each intra-op thread on its chunk. oneMKL picks each function's kernel lazily on
its first call, and when that first call runs on several threads at once one thread can run a
lower-accuracy kernel for its chunk (pytorch/pytorch#188792). Here it showed as the first
``torch.exp`` of a 4 x 8010 float64 tensor on two threads differing in the last bits in 2 of 30 fresh
processes, and as PCB-Merging's merged weights (which exponentiate the whole model at once)
changing in the last float32 bit from one ``dvc repro`` to the next.

One call of each function on a tensor too small to split resolves the dispatch on the calling thread;
every later call is the same kernel on every thread (30 of 30 processes alike after it). Each stage
process does it first (:func:`stages.common.entrypoint`), and so does every Ray worker that runs
torch on more than one thread (the training loop, merge tasks).
"""

from __future__ import annotations

import torch

# the unary ops vml.h routes to MKL (PyTorch 2.x); the rest are PyTorch's own vectorised code
VML_OPS = ("acos", "asin", "atan", "cos", "erf", "erfc", "erfinv", "exp", "log", "log10", "log2", "sin", "sqrt",
           "tan", "tanh", "trunc")
_warmed = False


def warm_vector_math() -> None:
    """Call each of :data:`VML_OPS` once per dtype on this thread (a few hundred microseconds,
    once per process)."""
    global _warmed
    if _warmed:
        return
    for dtype in (torch.float32, torch.float64):
        x = torch.full((16,), 0.5, dtype=dtype)  # in every op's domain, and far below a parallel grain
        for op in VML_OPS:
            getattr(torch, op)(x)
    _warmed = True
