"""``train.deterministic``: deterministic kernels only, on the worker that trains.

What is bit-reproducible, given the same seed, params and data:

- **CPU** (any setting): the same run on the same machine type, torch build and thread count. A
  different thread count changes the order of some reductions, hence the last bits.
- **GPU, deterministic on**: the same run on the same GPU model, driver, CUDA, cuDNN, NCCL and
  torch versions, and the same number of workers. cuBLAS then uses a fixed workspace
  (``CUBLAS_WORKSPACE_CONFIG``), cuDNN picks no algorithm by benchmarking, and every op that has
  no deterministic kernel fails with PyTorch's error naming it instead of running
  nondeterministically. Mixing draws, data order and DDP sharding are seeded already.
- **GPU, deterministic off** (the default, faster): atomics in some backward kernels (scatter,
  index_add, some convolutions) and cuDNN's benchmarked algorithm choice change the last bits from
  run to run; results agree statistically, not bitwise.
- **Never bitwise across**: GPU models, library versions, worker counts (the global batch is
  reduced in a different order), CPU versus GPU, bf16 autocast on versus off.
"""

from __future__ import annotations

import os

import torch

# The cuBLAS setting PyTorch documents for deterministic matmuls (":16:8" also works, slower).
CUBLAS_WORKSPACE = ":4096:8"


def use_deterministic_kernels(enabled: bool) -> None:
    """Switch this process to deterministic kernels (or back to PyTorch's defaults).

    Called at the top of the worker loop, before the first CUDA matmul: cuBLAS reads its
    workspace setting when the handle is made.
    """
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = enabled
