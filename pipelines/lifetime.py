"""A stage process lives no longer than the DVC process that started it.

When ``dvc repro`` is killed (SIGKILL: no chance to pass anything on), the stage it was running
would go on as an orphan, with its Ray instance, writing outputs that ``dvc.lock`` never records.
DVC runs a stage as ``$SHELL -c "<cmd>"``, and a shell such as dash stays between the two; so the
stage watches its nearest ancestor that is not a shell (DVC itself), by PID and start time (a
reused PID is another process), and stops itself gracefully when that process is gone: a SIGHUP
to itself (the signal for "the controlling side went away") becomes ``SystemExit`` in the main
thread, which unwinds the stage so that a local Ray instance is shut down on the way out, with a
hard exit if that does not finish in time. Not SIGTERM: once Ray is initialised, its C++ failure
handler turns a SIGTERM into an abort, which leaves the instance's agents running.

Only Linux's ``/proc`` is read; elsewhere nothing is watched.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

SHELLS = frozenset({"sh", "dash", "bash", "zsh", "fish", "ksh", "mksh", "busybox"})


@dataclass(frozen=True)
class ProcessStat:
    """The parts of ``/proc/<pid>/stat`` that identify a process and say whether it still runs."""

    pid: int
    name: str
    state: str
    ppid: int
    start_ticks: int

    @property
    def running(self) -> bool:
        return self.state not in ("Z", "X")  # a zombie has exited; it only waits to be reaped


def process_stat(pid: int) -> ProcessStat | None:
    """The process ``pid`` as ``/proc`` shows it, or None if there is none."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the name is in parentheses and may itself hold spaces or parentheses
    name = text[text.index("(") + 1 : text.rindex(")")]
    fields = text[text.rindex(")") + 2 :].split()
    return ProcessStat(pid, name, fields[0], int(fields[1]), int(fields[19]))


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, theirs, ...), from ``/proc``."""
    children: dict[int, list[int]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        stat = process_stat(int(entry))
        if stat is not None:
            children.setdefault(stat.ppid, []).append(stat.pid)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def guardian(start_pid: int | None = None) -> ProcessStat | None:
    """The nearest ancestor of this process (from ``start_pid``, default the parent) that is not a
    shell, or None (no procfs, or only init above)."""
    pid = os.getppid() if start_pid is None else start_pid
    while pid > 1:
        stat = process_stat(pid)
        if stat is None:
            return None
        if stat.name not in SHELLS:
            return stat
        pid = stat.ppid
    return None


def is_alive(watched: ProcessStat) -> bool:
    """Whether the process ``watched`` still runs (the same PID with another start time does not count)."""
    now = process_stat(watched.pid)
    return now is not None and now.start_ticks == watched.start_ticks and now.running


def exit_on_signals() -> None:
    """Turn SIGTERM and SIGHUP into ``SystemExit`` in the main thread, so ``finally`` blocks (Ray's
    shutdown among them) run; Ray installs the same for SIGTERM once it is initialised."""

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stop)


def watch_parent(label: str, poll_s: float = 1.0, grace_s: float = 60.0) -> threading.Thread | None:
    """Stop this process when its guardian (:func:`guardian`) is gone; needs
    :func:`exit_on_signals` (a Python handler for SIGHUP).

    Args:
        label: who is stopping, for the one line printed on stderr.
        poll_s: how often the guardian is checked.
        grace_s: how long a graceful exit may take before the process exits hard.

    Returns:
        The watching daemon thread, or None when there is nothing to watch.
    """
    watched = guardian()
    if watched is None:
        return None

    def watch() -> None:
        while is_alive(watched):
            time.sleep(poll_s)
        print(f"{label}: the process that started it ({watched.name}, pid {watched.pid}) is gone; stopping",
              file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGHUP)
        time.sleep(grace_s)
        os._exit(128 + signal.SIGHUP)

    thread = threading.Thread(target=watch, name="mixpipe-parent-watch", daemon=True)
    thread.start()
    return thread
