"""Prepare: load the dataset, make stratified train/val/test splits, normalise with train statistics.

Usage:
    python -m stages.prepare

Reads params ``seed``, ``data`` and ``paths.prepared``; writes ``<prepared>/{train,val,test}.parquet``
(``dataset`` tables) and ``<prepared>/stats.json``.
"""

from __future__ import annotations

import numpy as np

from pipelines import storage
from pipelines.data import channel_stats, load_dataset, normalise, stratified_split, write_split
from pipelines.seeding import derive_seed
from stages.common import entrypoint, params


@entrypoint("prepare")
def main(argv: list[str]) -> None:
    p = params()
    dataset = load_dataset(p.data.name, p.data.source, derive_seed(p.seed, "data"), p.data.options)
    splits = stratified_split(dataset, p.data.val_fraction, p.data.test_fraction, derive_seed(p.seed, "split"))
    mean, std = channel_stats(splits.train)
    out = p.paths.prepared
    stats = {"dataset": p.data.name, "input_shape": list(dataset.input_shape), "num_classes": dataset.num_classes,
             "mean": mean.tolist(), "std": std.tolist(), "splits": {}}
    for name, split in splits.items():
        write_split(storage.join(out, f"{name}.parquet"), normalise(split, mean, std), {"split": name})
        stats["splits"][name] = {"rows": len(split), "per_class": np.bincount(split.y, minlength=dataset.num_classes).tolist()}
    storage.write_json(storage.join(out, "stats.json"), stats)
    print(f"prepare: {p.data.name} -> " + ", ".join(f"{n} {len(s)}" for n, s in splits.items()))


if __name__ == "__main__":
    main()
