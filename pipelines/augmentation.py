"""Offline mixing: the train split cut into shards, each mixed by one Ray task.

Shard ``i`` of method ``m`` is mixed with a generator seeded from ``(seed, "augment", m, i)``,
partners are drawn within the shard, and the task returns the shard's Parquet bytes, so the
driver writes every file (a cluster's nodes need no access to the workspace) and the same
params give byte-identical shards.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipelines import storage, tables
from pipelines.data import ArrayDataset, contiguous_share, mixed_samples_table
from pipelines.errors import ConfigError
from pipelines.mixing import MixingSpec
from pipelines.seeding import derive_seed, torch_generator


@dataclass(frozen=True)
class Shard:
    """One written shard, as the manifest records it."""

    file: str
    rows: int
    seed: int
    sha256: str
    data: bytes
    node_id: str


def shard_seed(seed: int, method: str, index: int) -> int:
    return derive_seed(seed, "augment", method, index)


def mix_shard(dataset: ArrayDataset, mixing: MixingSpec, seed: int) -> bytes:
    """Mix every sample of ``dataset`` with a partner from the same shard; a ``mixed_samples`` table."""
    out = mixing.build()(torch.tensor(dataset.x), torch.tensor(dataset.y), generator=torch_generator(seed))
    index = out.index.numpy()
    arrow = mixed_samples_table(
        x=out.x.numpy(),
        sample_id=dataset.ids,
        partner_id=dataset.ids[index],
        y=dataset.y,
        y_partner=dataset.y[index],
        lam=out.lam.numpy(),
        task=dataset.task,
    )
    metadata = {"input_shape": list(dataset.input_shape), "num_classes": dataset.num_classes, "task": dataset.task, "seed": seed}
    return tables.parquet_bytes(arrow, metadata)


def _shard_task(dataset: ArrayDataset, mixing: MixingSpec, seed: int) -> tuple[bytes, str]:
    import ray

    return mix_shard(dataset, mixing, seed), ray.get_runtime_context().get_node_id()


def check_shard_count(num_shards: int, rows: int) -> None:
    """Every shard gets at least one row (checked before Ray starts).

    Raises:
        ConfigError: naming ``augment.num_shards``.
    """
    if not 1 <= num_shards <= rows:
        raise ConfigError(f"augment.num_shards must be in [1, {rows}] (the train split's rows), got {num_shards}")


def build_shards(dataset: ArrayDataset, mixing: MixingSpec, num_shards: int, seed: int) -> list[Shard]:
    """Mix ``dataset`` into ``num_shards`` shards, one Ray task each (needs a connected Ray)."""
    import ray

    check_shard_count(num_shards, len(dataset))
    task = ray.remote(num_cpus=1)(_shard_task)
    seeds = [shard_seed(seed, mixing.method, i) for i in range(num_shards)]
    pending = [
        task.remote(dataset.subset(np.arange(len(dataset))[contiguous_share(len(dataset), num_shards, i)]), mixing, s)
        for i, s in enumerate(seeds)
    ]
    index = {ref: i for i, ref in enumerate(pending)}
    shards: list[Shard | None] = [None] * num_shards
    waiting = list(pending)
    while waiting:
        ready, waiting = ray.wait(waiting, num_returns=1)
        i = index[ready[0]]
        data, node_id = ray.get(ready[0])
        rows = contiguous_share(len(dataset), num_shards, i)
        shards[i] = Shard(f"part-{i:05d}.parquet", rows.stop - rows.start, seeds[i], storage.sha256_bytes(data), data, node_id)
        print(f"augment {mixing.method}: shard {i + 1} mixed ({num_shards - len(waiting)}/{num_shards})", flush=True)
    return [s for s in shards if s is not None]


def manifest(method: str, mixing: MixingSpec, seed: int, shards: list[Shard]) -> dict:
    """What the shard set holds and how to regenerate it."""
    return {
        "method": method,
        "mixing": {"alpha": mixing.alpha, "mode": mixing.mode, "prob": mixing.prob, "options": dict(mixing.options)},
        "seed": seed,
        "rows": sum(s.rows for s in shards),
        "shards": [{"file": s.file, "rows": s.rows, "seed": s.seed, "sha256": s.sha256} for s in shards],
    }
