"""Parallel twins compiled by a helper process while the serial twin serves.

A parallel twin takes about twice as long to compile as its serial twin
(Numba outlines each ``prange`` body into a function of its own). With an
empty compile cache, the first call of a kernel on an input large enough for
the parallel twin therefore runs the serial twin (same results: task
boundaries do not depend on the thread count) and hands the parallel
signature to a helper process, which compiles it into the on-disk cache on
another core; a later call loads it from there. The first training step then
waits only for the serial compiles.

The helper is ``python -m fastbn._background``, started on first need with
plain :mod:`subprocess` (never :mod:`multiprocessing`, whose spawn would
re-run a user's unguarded main script). It reads one job per line on stdin
and answers a line per job; when the parent exits, its stdin closes and it
ends after the job at hand. It is used only where it can pay: at least two
usable cores, a compile cache, and not disabled (``FASTBN_BACKGROUND_COMPILE=0``
or :data:`ENABLED`); otherwise, or if it fails, the parallel twin compiles
in the calling process as usual.
"""

from __future__ import annotations

import base64
import os
import pickle
import subprocess
import sys
import threading

#: Whether parallel twins may be compiled by the helper process.
ENABLED = os.environ.get("FASTBN_BACKGROUND_COMPILE", "1") != "0"

_lock = threading.Lock()
_proc: subprocess.Popen | None = None
_owner = 0  # pid of the process that started the helper
_done: dict[int, bool] = {}
_next_id = 0


def _reader(proc: subprocess.Popen) -> None:
    for line in proc.stdout:
        job, status = line.split()
        _done[int(job)] = status == "ok"
    _done[-1] = False  # the helper is gone: nothing more will be done


def _helper() -> subprocess.Popen | None:
    """The running helper process, started if need be (None if unavailable)."""
    global _proc, _owner
    if _proc is not None and _owner == os.getpid() and -1 not in _done:
        return _proc
    if _proc is not None:  # a forked child, or the helper died: not again
        return None
    import numba

    from ._choices import MACHINE

    if MACHINE.cpus < 2:
        return None
    env = dict(os.environ, FASTBN_BACKGROUND_COMPILE="0")  # the helper compiles in place
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    if numba.config.CACHE_DIR:  # also a fallback chosen at run time
        env["NUMBA_CACHE_DIR"] = numba.config.CACHE_DIR
    try:
        _proc = subprocess.Popen([sys.executable, "-m", "fastbn._background"], env=env,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, text=True, bufsize=1)
    except OSError:
        _proc = False
        return None
    _owner = os.getpid()
    threading.Thread(target=_reader, args=(_proc,), daemon=True).start()
    return _proc


def submit(kernel_name: str, types: tuple) -> int | None:
    """Queue the parallel twin of ``kernel_name`` for argument ``types``;
    returns a job id for :func:`finished`, or None if no helper can take it."""
    global _next_id
    if not ENABLED:
        return None
    with _lock:
        proc = _helper()
        if not proc:
            return None
        _next_id += 1
        line = base64.b64encode(pickle.dumps((_next_id, kernel_name, types))).decode()
        try:
            proc.stdin.write(line + "\n")
        except (OSError, ValueError):
            return None
        return _next_id


def finished(job: int) -> bool:
    """Whether job ``job`` is over (compiled into the cache or failed: either
    way the calling process may now compile or load it itself)."""
    return job in _done or -1 in _done


def _serve() -> None:
    """The helper's loop: compile each job's signature, answer its status."""
    from . import kernels

    for line in sys.stdin:
        job, name, types = pickle.loads(base64.b64decode(line))
        try:
            twin = getattr(kernels, name).parallel
            twin._can_compile = True
            twin.compile(types)
            status = "ok"
        except Exception:  # the caller then compiles it itself
            status = "error"
        print(job, status, flush=True)


if __name__ == "__main__":
    _serve()
