"""Peak resident memory of this process image, as the benchmarks report it."""

from __future__ import annotations

import resource
from pathlib import Path

_STATUS = Path("/proc/self/status")


def peak_rss_mb() -> float:
    """Peak RSS in MB since this program was exec'd: Linux's ``VmHWM``.

    ``getrusage``'s ``ru_maxrss`` is not that: Linux carries it over from the parent at
    fork and across exec, so a client started by a benchmark that had just built a large
    input in memory reported the benchmark's peak (906-1,264 MB for a run whose own peak
    was 266 MB). ``ru_maxrss`` is the fallback where there is no ``/proc``.
    """
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
