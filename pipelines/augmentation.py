"""Offline mixing: the train split cut into shards, each mixed by one Ray task.

Shard ``i`` of method ``m`` is mixed with a generator seeded from ``(seed, "augment", m, i)``,
partners are drawn within the shard, and the same params give byte-identical shards. Each task
reads only its own rows of the prepared split (the parts they lie in), normalises them, mixes,
writes its shard and returns its manifest row: a task holds one shard, the driver none. Tasks
write where every node reaches (the output folder for a local instance or an object store,
else a staging folder under ``storage.shared_uri`` that the driver copies from, shard by shard).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pipelines import storage, tables
from pipelines.data import ArrayDataset, StoredSplit, contiguous_share, mixed_samples_table, read_rows
from pipelines.data.io import ROW_GROUP_BYTES
from pipelines.errors import ConfigError
from pipelines.mixing import MixingSpec
from pipelines.seeding import derive_seed, torch_generator


@dataclass(frozen=True)
class Shard:
    """One written shard, as the manifest records it, and the node that mixed it."""

    file: str
    rows: int
    seed: int
    sha256: str
    node_id: str


def shard_seed(seed: int, method: str, index: int) -> int:
    return derive_seed(seed, "augment", method, index)


def shard_file(index: int) -> str:
    return f"part-{index:05d}.parquet"


def mix_shard(dataset: ArrayDataset, mixing: MixingSpec, seed: int) -> bytes:
    """Mix every sample of ``dataset`` (normalised first, if raw) with a partner from the same
    shard; a ``mixed_samples`` table."""
    dataset = dataset.normalised()
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
    # bounded row groups: the stage's picture of a shard's first rows decodes one group, not the shard
    row_bytes = 4 * max(1, math.prod(dataset.input_shape))
    return tables.parquet_bytes(arrow, metadata, row_group_rows=max(1, ROW_GROUP_BYTES // row_bytes))


def _shard_task(split: StoredSplit, rows: slice, mixing: MixingSpec, seed: int, url: str) -> tuple[str, str]:
    """Read ``rows`` of ``split``, mix them, write the shard to ``url``; its sha256 and the node."""
    import ray

    data = mix_shard(read_rows(split, rows), mixing, seed)
    storage.write_bytes(url, data)
    return storage.sha256_bytes(data), ray.get_runtime_context().get_node_id()


def check_shard_count(num_shards: int, rows: int) -> None:
    """Every shard gets at least one row (checked before Ray starts).

    Raises:
        ConfigError: naming ``augment.num_shards``.
    """
    if not 1 <= num_shards <= rows:
        raise ConfigError(f"augment.num_shards must be in [1, {rows}] (the train split's rows), got {num_shards}")


def build_shards(split: StoredSplit, mixing: MixingSpec, num_shards: int, seed: int, out: str) -> list[Shard]:
    """Mix ``split`` into ``num_shards`` shards written to folder ``out``, one Ray task each
    (needs a connected Ray; ``split`` and ``out`` at URLs every node reaches)."""
    import ray

    check_shard_count(num_shards, split.rows)
    task = ray.remote(num_cpus=1)(_shard_task)
    seeds = [shard_seed(seed, mixing.method, i) for i in range(num_shards)]
    shares = [contiguous_share(split.rows, num_shards, i) for i in range(num_shards)]
    pending = [task.remote(split, shares[i], mixing, s, storage.join(out, shard_file(i))) for i, s in enumerate(seeds)]
    index = {ref: i for i, ref in enumerate(pending)}
    shards: list[Shard | None] = [None] * num_shards
    waiting = list(pending)
    while waiting:
        ready, waiting = ray.wait(waiting, num_returns=1)
        i = index[ready[0]]
        sha256, node_id = ray.get(ready[0])
        shards[i] = Shard(shard_file(i), shares[i].stop - shares[i].start, seeds[i], sha256, node_id)
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
