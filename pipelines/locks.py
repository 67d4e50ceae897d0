"""One process at a time per Ray run: a run name is a hash of everything the run computes, and a
second process with the same name would resume, checkpoint and report into the same run folder.

The lock is an advisory ``flock`` held for the life of the stage, so a killed stage releases it
with its process. A run on the local disk locks a file beside its folder (seen by every process
that sees the folder); a run in object storage, which has no portable exclusive create, locks a
file of this machine named by the run's URL (job mode serialises identical runs across machines
by their deterministic submission ids).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from pipelines import storage
from pipelines.errors import MixpipeError


class RunInUse(MixpipeError):
    """Another process is running the run of the same name."""


def lock_path(storage_path: str, run_name: str) -> Path:
    url = storage.join(storage_path, run_name)
    if storage.is_local(storage_path):
        return Path(storage.filesystem(url)[1] + ".lock")
    digest = hashlib.sha256(url.encode()).hexdigest()[:24]
    return Path(tempfile.gettempdir()) / "mixpipe-run-locks" / f"{digest}.lock"


@contextlib.contextmanager
def run_lock(storage_path: str, run_name: str, key: str) -> Iterator[None]:
    """Hold the lock of run ``run_name`` under ``storage_path`` for the block.

    Args:
        key: the params section the run comes from (``train``), for the message.

    Raises:
        RunInUse: another process holds it; the message says which (pid, host, since when).
    """
    path = lock_path(storage_path, run_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115 - held open for the block: closing releases the lock
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RunInUse(
                f"{key}: run {run_name} is in use by {holder}; two processes would write into one run folder. "
                "Wait for that one to finish (this stage then resumes its result), or stop it"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        handle.flush()
        yield
    finally:
        handle.close()
