"""Prepare: load the dataset, make stratified train/val/test splits, normalise with train statistics.

Usage:
    python -m stages.prepare

Reads params ``seed``, ``data`` and ``paths.prepared``; writes ``<prepared>/{train,val,test}.parquet``
(``dataset`` tables) and ``<prepared>/stats.json``. Regression targets are stratified by quantile
bins and standardised with the train split's mean and std (``target_mean``/``target_std`` in
stats.json, which evaluate uses to report errors in the target's units).
"""

from __future__ import annotations

import numpy as np

from pipelines import storage
from pipelines.data import (
    channel_stats,
    load_dataset,
    normalise,
    standardise_targets,
    stratified_split,
    target_stats,
    write_split,
)
from pipelines.seeding import derive_seed
from stages.common import entrypoint, params


@entrypoint("prepare")
def main(argv: list[str]) -> None:
    p = params("data")
    dataset = load_dataset(p.data.name, p.data.source, derive_seed(p.seed, "data"), p.data.options)
    splits = stratified_split(dataset, p.data.val_fraction, p.data.test_fraction, derive_seed(p.seed, "split"))
    mean, std = channel_stats(splits.train)
    out = p.paths.prepared
    stats = {"dataset": p.data.name, "task": dataset.task, "input_shape": list(dataset.input_shape),
             "num_classes": dataset.num_classes, "mean": mean.tolist(), "std": std.tolist(), "splits": {}}
    regression = dataset.task == "regression"
    if regression:
        stats["target_mean"], stats["target_std"] = target_mean, target_std = target_stats(splits.train)
    for name, split in splits.items():
        ready = normalise(split, mean, std)
        if regression:
            ready = standardise_targets(ready, target_mean, target_std)
        write_split(storage.join(out, f"{name}.parquet"), ready, {"split": name})
        counts = {"target_range": [float(split.y.min()), float(split.y.max())]} if regression else {
            "per_class": np.bincount(split.y, minlength=dataset.num_classes).tolist()}
        stats["splits"][name] = {"rows": len(split), **counts}
    storage.write_json(storage.join(out, "stats.json"), stats)
    print(f"prepare: {p.data.name} -> " + ", ".join(f"{n} {len(s)}" for n, s in splits.items()))


if __name__ == "__main__":
    main()
