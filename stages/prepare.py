"""Prepare: load the dataset, make stratified train/val/test splits, record the train statistics.

Usage:
    python -m stages.prepare

Reads params ``seed``, ``data`` and ``paths.prepared``; writes ``<prepared>/{train,val,test}/``
(folders of ``dataset`` Parquet parts of at most ``data.part_mib`` MiB, and a manifest) and
``<prepared>/stats.json``. Inputs are stored as the source has them (uint8 images stay uint8); the
train split's per-channel statistics go in every manifest and are applied where the inputs are
used, on the training device. Regression targets are stratified by quantile
bins and standardised with the train split's mean and std (``target_mean``/``target_std`` in
stats.json, which evaluate uses to report errors in the target's units).
"""

from __future__ import annotations

import numpy as np

from pipelines import storage
from dataclasses import replace

from pipelines.data import (
    load_dataset,
    normalisation,
    split_url,
    standardise_targets,
    stratified_indices,
    target_stats,
    write_split,
)
from pipelines.seeding import derive_seed
from stages.common import entrypoint, params


@entrypoint("prepare")
def main(argv: list[str]) -> None:
    p = params("data")
    dataset = load_dataset(p.data.name, p.data.source, derive_seed(p.seed, "data"), p.data.options)
    # rows, not copies: each split is written from the loaded inputs a part at a time
    index = stratified_indices(dataset, p.data.val_fraction, p.data.test_fraction, derive_seed(p.seed, "split"))
    stats_of_train = normalisation(dataset, index["train"])
    out = p.paths.prepared
    stats = {"dataset": p.data.name, "task": dataset.task, "input_shape": list(dataset.input_shape),
             "dtype": dataset.x.dtype.name, "num_classes": dataset.num_classes, **stats_of_train.as_dict(), "splits": {}}
    regression = dataset.task == "regression"
    ready = replace(dataset, normalisation=stats_of_train)
    if regression:
        train_targets = dataset.subset(index["train"])
        stats["target_mean"], stats["target_std"] = target_mean, target_std = target_stats(train_targets)
        ready = standardise_targets(ready, target_mean, target_std)
    for name, rows in index.items():
        stored = write_split(split_url(out, name), ready, {"split": name}, p.data.part_mib, rows=rows)
        y = dataset.y[rows]
        counts = {"target_range": [float(y.min()), float(y.max())]} if regression else {
            "per_class": np.bincount(y, minlength=dataset.num_classes).tolist()}
        stats["splits"][name] = {"rows": len(rows), "parts": len(stored.parts), **counts}
    storage.write_json(storage.join(out, "stats.json"), stats)
    print(f"prepare: {p.data.name} -> " + ", ".join(f"{n} {len(rows)}" for n, rows in index.items()))


if __name__ == "__main__":
    main()
