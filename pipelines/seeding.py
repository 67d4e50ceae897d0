"""Explicit, derived randomness.

No library code touches a global RNG. A run has one root seed; every consumer derives its own
sub-seed from the root and a path of labels, e.g. ``derive_seed(seed, "augment", "cutmix", 3)``.
Derivation hashes the path, so sub-seeds are independent of call order and of each other.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

_SEED_BITS = 63  # torch.Generator.manual_seed takes a signed 64-bit value; stay positive


def derive_seed(root: int, *path: object) -> int:
    """Derive a deterministic sub-seed from a root seed and a path of labels.

    Args:
        root: the run's root seed.
        *path: labels (str or int) naming the consumer, e.g. ``("train", rank, epoch, step)``.

    Returns:
        A non-negative integer below 2**63; identical for identical inputs on every platform.
    """
    text = "\x1f".join([str(int(root)), *(f"{type(p).__name__}:{p}" for p in path)])
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> (64 - _SEED_BITS)


def torch_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A fresh ``torch.Generator`` on ``device`` seeded with ``seed``."""
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed))
    return generator


def numpy_generator(seed: int) -> np.random.Generator:
    """A fresh numpy ``Generator`` (PCG64) seeded with ``seed``."""
    return np.random.default_rng(int(seed))
