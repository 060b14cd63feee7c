"""The default thread count: the cores this process may really use.

Numba sizes its thread pool from the CPU affinity mask, which does not see
a cgroup CPU quota: a container limited to 2 CPUs on a 64-core host would
start 64 threads, each parallel region then waiting for descheduled
threads. Imported before Numba, this sets ``NUMBA_NUM_THREADS`` to the
usable count unless the user set it; if Numba was imported first, it
lowers the importing thread's count instead (Numba's counts are per
thread). Results never depend on the thread count.
"""

from __future__ import annotations

import os
import sys

from ._machine import usable_cpus


def limit_to_usable_cpus() -> int | None:
    """Apply the limit; returns the count set, or None if left alone."""
    if "NUMBA_NUM_THREADS" in os.environ:
        return None
    n = usable_cpus()
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count() or 1
    if n >= affinity:
        return None
    if "numba" not in sys.modules:
        os.environ["NUMBA_NUM_THREADS"] = str(n)
        return n
    import numba

    if n < numba.get_num_threads():
        numba.set_num_threads(n)
        return n
    return None
