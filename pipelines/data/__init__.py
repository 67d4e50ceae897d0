"""Datasets: the registry, splits, and Arrow shard reading and writing. Knows nothing of Ray or models."""

from pipelines.data.dataset import ArrayDataset, MixedDataset, Normalisation
from pipelines.data.io import (
    StoredSplit,
    dataset_table,
    mixed_samples_table,
    open_split,
    read_part,
    read_prepared,
    read_rows,
    read_shards,
    read_split,
    split_url,
    write_split,
)
from pipelines.data.sources import DATASETS, dataset_task, load_dataset
from pipelines.data.splits import (
    Splits,
    channel_stats,
    contiguous_share,
    normalisation,
    normalise,
    standardise_targets,
    stratified_indices,
    stratified_split,
    target_stats,
)

__all__ = [
    "DATASETS",
    "ArrayDataset",
    "MixedDataset",
    "Normalisation",
    "Splits",
    "StoredSplit",
    "channel_stats",
    "contiguous_share",
    "dataset_table",
    "dataset_task",
    "load_dataset",
    "mixed_samples_table",
    "normalisation",
    "normalise",
    "open_split",
    "read_part",
    "read_rows",
    "split_url",
    "read_prepared",
    "read_shards",
    "read_split",
    "standardise_targets",
    "stratified_indices",
    "stratified_split",
    "target_stats",
    "write_split",
]
