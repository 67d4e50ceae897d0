"""Augment: write mixed-sample shards of the train split for one mixing method, one Ray task per shard.

Usage:
    python -m stages.augment METHOD

METHOD is one of ``augment.methods`` (dvc.yaml runs it for each). Reads ``seed``,
``augment.num_shards`` and ``mixing.{alpha,mode,prob}``; writes ``<shards>/METHOD/part-NNNNN.parquet``
(``mixed_samples`` tables), ``manifest.json`` (rows, seed and sha256 of every shard) and a
picture of mixed examples, ``<plots>/augment/METHOD.png`` (a DVC image plot).
"""

from __future__ import annotations

from pipelines import storage, tables
from pipelines.augmentation import build_shards, check_shard_count, manifest
from pipelines.data import read_prepared
from pipelines.errors import ConfigError
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
    train = read_prepared(p.paths.prepared, "train")
    check_shard_count(p.augment.num_shards, len(train))
    with stage_ray(p):
        shards = build_shards(train, mixing, p.augment.num_shards, p.seed)
    out = storage.join(p.paths.shards, method)
    for shard in shards:
        storage.write_bytes(storage.join(out, shard.file), shard.data)
    storage.write_json(storage.join(out, "manifest.json"), manifest(method, mixing, p.seed, shards))
    first = tables.read_table(storage.join(out, shards[0].file), "mixed_samples")
    title = f"{method} (alpha={mixing.alpha:g}, {mixing.mode}): own label / partner label, λ"
    storage.write_bytes(storage.join(p.paths.plots, "augment", f"{method}.png"), mixed_examples_png(first, train.input_shape, title))
    nodes = len({s.node_id for s in shards})
    print(f"augment {method}: {len(shards)} shards, {sum(s.rows for s in shards)} rows, on {nodes} node(s)")


if __name__ == "__main__":
    main()
