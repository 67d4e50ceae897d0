"""Which samples each rank trains on, per epoch and step.

Every epoch has one seeded global permutation. Global batch ``k`` is
``perm[k*B : (k+1)*B]`` with ``B = per_worker_batch * world_size``, and rank ``r`` takes the
``r``-th contiguous slice of it. DDP averages the ranks' mean gradients, so ``n`` workers at
batch ``b`` see exactly the batches one worker at ``n*b`` sees. The last partial global batch is
dropped so every rank runs the same number of steps.
"""

from __future__ import annotations

import torch

from pipelines.seeding import derive_seed, torch_generator


def steps_per_epoch(num_samples: int, per_worker_batch: int, world_size: int) -> int:
    return num_samples // (per_worker_batch * world_size)


def rank_batches(
    num_samples: int, per_worker_batch: int, world_size: int, rank: int, seed: int, epoch: int
) -> list[torch.Tensor]:
    """Index tensors of this rank's batches in ``epoch``.

    Raises:
        ValueError: fewer samples than one global batch, or a rank outside ``[0, world_size)``.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    global_batch = per_worker_batch * world_size
    steps = steps_per_epoch(num_samples, per_worker_batch, world_size)
    if steps == 0:
        raise ValueError(f"{num_samples} samples do not fill one global batch of {global_batch}")
    order = torch.randperm(num_samples, generator=torch_generator(derive_seed(seed, "epoch-order", epoch)))
    start = rank * per_worker_batch
    return [
        order[k * global_batch + start : k * global_batch + start + per_worker_batch] for k in range(steps)
    ]



def mixing_seed(seed: int, rank: int, epoch: int, step: int) -> int:
    """The seed of one rank's mixing draws at one step: ranks never share λ or partners."""
    return derive_seed(seed, "mix", rank, epoch, step)
