"""Augment: write mixed-sample shards of the train split for one mixing method, one Ray task per shard.

Usage:
    python -m stages.augment METHOD

METHOD is one of ``augment.methods`` (dvc.yaml runs it for each). Reads ``seed``,
``augment.num_shards`` and ``mixing.{alpha,mode,prob}``. Each task reads its own rows of the
prepared train split and writes its shard; writes ``<shards>/METHOD/part-NNNNN.parquet``
(``mixed_samples`` tables), ``manifest.json`` (rows, seed and sha256 of every shard) and a
picture of mixed examples, ``<plots>/augment/METHOD.png`` (a DVC image plot).
"""

from __future__ import annotations

from pipelines import storage, tables
from pipelines.augmentation import build_shards, check_shard_count, manifest
from pipelines.cluster.shared_data import reachable_split, task_output_folder
from pipelines.config import fingerprint
from pipelines.data import open_split, split_url
from pipelines.data.io import first_rows, verify_split
from pipelines.errors import ConfigError, DataError
from pipelines.evaluation.report import mixed_examples_png
from pipelines.mixing import MixingSpec
from stages.common import entrypoint, params, stage_ray


@entrypoint("augment", uses_ray=True)
def main(argv: list[str]) -> None:
    p = params("data", "mixing", "augment")
    if len(argv) != 1 or argv[0] not in p.augment.methods:
        raise ConfigError(f"usage: python -m stages.augment METHOD, METHOD in augment.methods {p.augment.methods}")
    method = argv[0]
    mixing = MixingSpec.from_params(p.mixing, method=method)
    train = open_split(split_url(p.paths.prepared, "train"))
    check_shard_count(p.augment.num_shards, train.rows)
    verify_split(train)  # a damaged part fails here, naming it, not inside a Ray task
    out = storage.join(p.paths.shards, method)
    with stage_ray(p) as connection:
        shared, local = p.storage.shared_uri, connection.started_local
        key = f"augment-{fingerprint(train.fingerprint(), mixing, p.augment.num_shards, p.seed)}"
        written, staged = task_output_folder(out, shared, local, key)
        shards = build_shards(reachable_split(train, shared, local), mixing, p.augment.num_shards, p.seed, written)
    for shard in shards if staged else ():
        data = storage.read_bytes(storage.join(written, shard.file))  # one shard at a time
        if storage.sha256_bytes(data) != shard.sha256:
            raise DataError(f"{storage.join(written, shard.file)}: changed since its task wrote it")
        storage.write_bytes(storage.join(out, shard.file), data)
    storage.write_json(storage.join(out, "manifest.json"), manifest(method, mixing, p.seed, shards))
    first = tables.to_frame(first_rows(storage.join(out, shards[0].file), 16))
    title = f"{method} (alpha={mixing.alpha:g}, {mixing.mode}): own label / partner label, λ"
    storage.write_bytes(storage.join(p.paths.plots, "augment", f"{method}.png"), mixed_examples_png(first, train.input_shape, title))
    nodes = len({s.node_id for s in shards})
    print(f"augment {method}: {len(shards)} shards, {sum(s.rows for s in shards)} rows, on {nodes} node(s)")


if __name__ == "__main__":
    main()
