"""Peak resident memory of a block of code, in the running process (Linux)."""

from __future__ import annotations

import re
import resource
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

_STATUS = "/proc/self/status"


def _status_kib(field: str) -> int | None:
    try:
        with open(_STATUS) as status:
            match = re.search(rf"^{field}:\s+(\d+) kB", status.read(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _reset_peak() -> bool:
    """Reset the kernel's high-water mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        return True
    except OSError:
        return False


@dataclass
class PeakMemory:
    """Filled in when the block exits: the peak RSS above the RSS at its start, in MiB.
    ``exact`` is False where the peak could not be reset and the process-lifetime peak was used."""

    mib: float = 0.0
    exact: bool = True


@contextmanager
def peak_rss_above_start() -> Iterator[PeakMemory]:
    """Measure how far the process's resident memory rose above its starting level inside the block.

    The kernel's peak (VmHWM) is reset at entry, so earlier peaks do not count; where that is not
    possible, the lifetime peak (``ru_maxrss``) minus the starting RSS is an upper bound.
    """
    result = PeakMemory()
    result.exact = _reset_peak()
    start = _status_kib("VmRSS") or 0
    try:
        yield result
    finally:
        peak = _status_kib("VmHWM") if result.exact else None
        if peak is None:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        result.mib = max(peak - start, 0) / 1024
