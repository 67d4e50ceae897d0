"""Which input path a Train or Tune stage takes, and what its runs need to follow one epoch order."""

from __future__ import annotations

import dataclasses
import sys

from pipelines.cluster.session import RayConnection
from pipelines.cluster.shared_data import reachable_split
from pipelines.config import InputParams, Params
from pipelines.data import ArrayDataset, StoredSplit, open_split, read_split, split_url
from pipelines.data.io import verify_split


def input_mode(params: InputParams, train: StoredSplit, val: StoredSplit) -> tuple[str, str]:
    """``memory`` or ``stream`` for these splits, and the reason in words."""
    mib = (train.nbytes + val.nbytes) / (1 << 20)
    if params.mode != "auto":
        return params.mode, f"input.mode is {params.mode} ({mib:.0f} MiB of raw train and val inputs)"
    if mib > params.stream_above_mib:
        return "stream", f"the raw train and val inputs hold {mib:.0f} MiB, above input.stream_above_mib {params.stream_above_mib:g}"
    return "memory", f"the raw train and val inputs hold {mib:.0f} MiB, within input.stream_above_mib {params.stream_above_mib:g}"


def window_rows(params: InputParams, split: StoredSplit) -> int:
    """Rows of ``split`` per shuffle window: ``input.shuffle_window_mib`` of raw inputs, at least one."""
    return max(1, int(params.shuffle_window_mib * (1 << 20)) // max(split.row_bytes, 1))


@dataclasses.dataclass(frozen=True)
class TrainingData:
    """A Train or Tune stage's train and val splits, as its runs read them: raw arrays sent to
    every worker, or :class:`StoredSplit` streamed through Ray Data (``streamed``)."""

    train: ArrayDataset | StoredSplit
    val: ArrayDataset | StoredSplit
    streamed: bool
    fingerprints: tuple[str, ...]
    part_rows: tuple[int, ...] | None
    window_rows: int | None

    def job_fields(self, params: Params) -> dict:
        """What a :class:`TrainJob` needs to follow the same epoch order on either path."""
        return {"part_rows": self.part_rows, "window_rows": self.window_rows, "read_cpus": params.input.read_cpus}

    def reachable(self, params: Params, connection: RayConnection) -> TrainingData:
        """Streamed splits at a URL every worker of ``connection`` reads (:func:`reachable_split`)."""
        if not self.streamed:
            return self
        train, val = (reachable_split(s, params.storage.shared_uri, connection.started_local) for s in (self.train, self.val))
        return dataclasses.replace(self, train=train, val=val)


def training_data(params: Params, key: str, memory: bool = False) -> TrainingData:
    """The prepared train and val splits for stage ``key`` (``train``/``tune``), in memory (raw)
    or streamed as ``input.mode`` decides (``memory``: in memory whatever it says); says which on stderr."""
    train, val = (open_split(split_url(params.paths.prepared, name)) for name in ("train", "val"))
    mode, why = ("memory", "the train split comes from shards") if memory else input_mode(params.input, train, val)
    fields = {"fingerprints": (train.fingerprint(), val.fingerprint()), "part_rows": tuple(train.part_rows),
              "window_rows": window_rows(params.input, train)}
    if mode == "stream":
        for split in (train, val):
            verify_split(split)  # a damaged part fails here, not in a worker mid-epoch
        print(f"mixpipe: {key} streams its splits through Ray Data: {why}", file=sys.stderr, flush=True)
        return TrainingData(train, val, True, **fields)
    return TrainingData(read_split(train.url), read_split(val.url), False, **fields)
