"""Data where every node of a cluster reaches it: prepared splits to stream, folders tasks write to."""

from __future__ import annotations

import os

from pipelines import storage
from pipelines.data import StoredSplit
from pipelines.data.io import SPLIT_MANIFEST
from pipelines.errors import ClusterError


def reachable_split(split: StoredSplit, shared_uri: str | None, started_local: bool) -> StoredSplit:
    """``split``, at a URL every Ray worker can read.

    A split in an object store already is; one on this machine's disk is for a local instance
    (every worker runs here). On a cluster it is copied to ``<shared_uri>/splits/<content hash>/``,
    part by part (so memory stays at one part), once: a later run of the same data finds it there.

    Raises:
        ClusterError: a cluster, a split on local disk and no ``storage.shared_uri``.
    """
    if not storage.is_local(split.url):
        return split
    if started_local:  # workers do not run in this process's directory
        return split.moved(os.path.abspath(split.url.removeprefix("file://")))
    name = split.url.rstrip("/").rsplit("/", 1)[-1]
    if not shared_uri:
        raise ClusterError(_unreachable(split.url))
    target = storage.join(shared_uri, "splits", split.fingerprint(), name)
    fs, manifest = storage.filesystem(storage.join(target, SPLIT_MANIFEST))
    if not fs.exists(manifest):
        for index, part in enumerate(split.parts):
            storage.write_bytes(storage.join(target, part.file), storage.read_bytes(split.part_url(index)))
        # the manifest last: a copy without one is unfinished, and is redone
        storage.write_bytes(storage.join(target, SPLIT_MANIFEST), storage.read_bytes(storage.join(split.url, SPLIT_MANIFEST)))
    return split.moved(target)


def _unreachable(url: str) -> str:
    return (f"{url} is on this machine's disk, which the cluster's other nodes do not see; set storage.shared_uri "
            "(an object store every node reads)")


def task_output_folder(out: str, shared_uri: str | None, started_local: bool, key: str) -> tuple[str, bool]:
    """Where Ray tasks write files meant for folder ``out``, and whether that is a staging folder:
    ``out`` itself (absolute) when every task reaches it, else ``<shared_uri>/staging/<key>/``
    (the driver copies from there).

    Raises:
        ClusterError: a cluster, ``out`` on local disk and no ``storage.shared_uri``.
    """
    if not storage.is_local(out):
        return out, False
    if started_local:
        return os.path.abspath(out.removeprefix("file://")), False
    if not shared_uri:
        raise ClusterError(_unreachable(out))
    return storage.join(shared_uri, "staging", key), True
