"""Datasets: the registry, splits, and Arrow shard reading and writing. Knows nothing of Ray or models."""

from pipelines.data.dataset import ArrayDataset, MixedDataset
from pipelines.data.io import (
    dataset_table,
    mixed_samples_table,
    read_prepared,
    read_shards,
    read_split,
    write_split,
)
from pipelines.data.sources import DATASETS, dataset_task, load_dataset
from pipelines.data.splits import (
    Splits,
    channel_stats,
    contiguous_share,
    normalise,
    standardise_targets,
    stratified_split,
    target_stats,
)

__all__ = [
    "DATASETS",
    "ArrayDataset",
    "MixedDataset",
    "Splits",
    "channel_stats",
    "contiguous_share",
    "dataset_table",
    "dataset_task",
    "load_dataset",
    "mixed_samples_table",
    "normalise",
    "read_prepared",
    "read_shards",
    "read_split",
    "standardise_targets",
    "stratified_split",
    "target_stats",
    "write_split",
]
