"""Numba machinery in one place: compile options, serial/parallel twins,
the compile cache fallback and fork safety.

Every kernel is compiled twice from the same Python function: a parallel
version (``prange`` spread over Numba's threads) and a serial one (``prange``
runs as ``range``). The serial twin serves inputs too small to repay a
parallel launch, single-thread runs, and processes forked from a parent that
already started the threading layer (GNU OpenMP aborts such a child when it
opens a parallel region).
"""

from __future__ import annotations

import contextlib
import functools
import os
import stat
import tempfile
import types
from typing import Callable

import numba

from . import _background

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

#: LLVM fast-math flags: reassociation lets reductions vectorise, but no
#: ``nnan``/``ninf`` so that NaN and Inf still propagate, and no ``arcp``:
#: the divisions (block means, shifts) stay correctly rounded; none is in a
#: hot loop.
FASTMATH = frozenset({"nsz", "contract", "afn", "reassoc"})

#: Inputs with fewer elements than this run the serial twin (set from the
#: choices in force, :mod:`fastbn._choices`).
PARALLEL_MIN_SIZE = 1 << 16

_serial_only = False


def _threads_started() -> bool:
    """Whether Numba's threading layer may have run a parallel region here
    (conservatively True if Numba's private flag is not found)."""
    from numba.np.ufunc import parallel

    return getattr(parallel, "_is_initialized", True)


def _after_fork_in_child() -> None:
    # A child forked before any parallel region ran (e.g. a benchmark
    # runner's fork server) may still use the thread pool.
    global _serial_only
    _serial_only = _serial_only or _threads_started()


os.register_at_fork(after_in_child=_after_fork_in_child)


#: A parallel loop is cut into this many groups of tasks per thread, handed
#: out one at a time (Numba's parallel chunk size 1): a thread whose core is
#: taken by another process leaves its share to the others instead of
#: holding up the whole loop, as a static split would. A few per thread keep
#: the cost of handing out (~0.2 us each) negligible. Task boundaries, and so
#: results, do not depend on the grouping.
TASKS_PER_THREAD = 4


def parallel_threads(size: int) -> int:
    """Threads a kernel over ``size`` elements should use (1: the serial
    twin): none below :data:`PARALLEL_MIN_SIZE`, then one more per half of
    it, so that a mid-sized input does not wake a large pool for little
    work; :meth:`Kernel.launch` caps it at Numba's count. The count never
    changes results."""
    if size < PARALLEL_MIN_SIZE or _serial_only:
        return 1
    return max(2, 2 * size // PARALLEL_MIN_SIZE)


def _fallback_cache_dir() -> str:
    """A private per-user cache directory under the system temp dir.

    The cache holds code that is loaded and run, so a directory that another
    user created or can write is never used: then a fresh one is made.
    """
    uid = os.getuid()
    path = os.path.join(tempfile.gettempdir(), f"fastbn-numba-cache-{uid}")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or st.st_mode & 0o022:
        path = tempfile.mkdtemp(prefix="fastbn-numba-cache-")
    return path


def _lock_cache_writes(dispatcher: numba.core.registry.CPUDispatcher) -> None:
    """Make ``dispatcher``'s cache writes exclusive between processes.

    Numba adds an entry by reading the function's index, picking the first
    free data file name and writing both: two processes adding different
    signatures of one function at once (``python -m fastbn warmup``, MPI
    ranks, test workers) can pick the same name, and the index may then
    point at another signature's code. An advisory lock beside the index
    serializes the read-modify-write (numba's own files, private names:
    without them, or without ``fcntl``, nothing is locked).
    """
    cache_file = getattr(getattr(dispatcher, "_cache", None), "_cache_file", None)
    index = getattr(cache_file, "_index_path", None)
    if fcntl is None or index is None:
        return
    save = cache_file.save

    def save_locked(key, data):
        with open(index + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            save(key, data)

    cache_file.save = save_locked


@functools.lru_cache(maxsize=None)
def _folder_stamp(folder: str) -> tuple:
    """(name, mtime, size) of every Python file in ``folder``."""
    stamps = []
    for name in sorted(os.listdir(folder)):
        if name.endswith(".py"):
            st = os.stat(os.path.join(folder, name))
            stamps.append((name, st.st_mtime, st.st_size))
    return tuple(stamps)


def _stamp_siblings(dispatcher: numba.core.registry.CPUDispatcher) -> None:
    """Make ``dispatcher``'s cache entries stale when any module beside its
    source file changes, not only that file.

    Numba checks the stamp of the kernel's own file only, but the machine
    code it caches includes the helpers and constants the kernel takes from
    the other modules of its package (:mod:`fastbn.kernels`): their stamps
    are added to the one Numba stores (numba's private names: without them,
    Numba's own stamp stays).
    """
    cache_file = getattr(getattr(dispatcher, "_cache", None), "_cache_file", None)
    stamp = getattr(cache_file, "_source_stamp", None)
    if stamp is None:
        return
    folder = os.path.dirname(os.path.abspath(dispatcher.py_func.__code__.co_filename))
    try:
        cache_file._source_stamp = (stamp, _folder_stamp(folder))
    except OSError:
        pass


def _cached_njit(func: Callable, **options) -> numba.core.registry.CPUDispatcher:
    """``numba.njit(cache=True)`` that survives a read-only install.

    Numba caches next to the source, else in the user's cache directory; when
    neither is writable it refuses to build the dispatcher, so fall back to a
    per-user directory under the system temp dir.
    """
    try:
        dispatcher = numba.njit(cache=True, **options)(func)
    except RuntimeError as exc:
        if "no locator available" not in str(exc) or numba.config.CACHE_DIR:
            raise
        numba.config.CACHE_DIR = _fallback_cache_dir()
        dispatcher = numba.njit(cache=True, **options)(func)
    _stamp_siblings(dispatcher)
    _lock_cache_writes(dispatcher)
    return dispatcher


def _renamed(func: Callable, suffix: str) -> Callable:
    """A copy of ``func`` with its own qualname, hence its own cache files.

    Numba's cache index does not include the ``parallel`` flag, so the twins
    must not share a cache entry.
    """
    twin = types.FunctionType(
        func.__code__, func.__globals__, func.__name__ + suffix,
        func.__defaults__, func.__closure__,
    )
    twin.__qualname__ = func.__qualname__ + suffix
    twin.__module__ = func.__module__
    twin.__doc__ = func.__doc__
    return twin


def _options() -> dict:
    """Compile options of kernels and helpers. Kernels are called from
    Python only and helpers from kernels only: no wrapper is built that
    nothing calls (each costs a compile of its own, a fifth of a small
    kernel's compile time)."""
    return dict(nogil=True, fastmath=set(FASTMATH), error_model="numpy", no_cfunc_wrapper=True)


#: While not None, kernel calls are recorded here instead of run
#: (:func:`recording`).
_recorded: list | None = None


@contextlib.contextmanager
def recording():
    """Within this context kernel calls run nothing: each appends
    ``(kernel, argument types)`` to the list yielded (what the call would
    compile) and returns True. Results computed meanwhile are garbage; used
    to list the signatures a workload compiles (``python -m fastbn warmup``)."""
    global _recorded
    saved, _recorded = _recorded, []
    try:
        yield _recorded
    finally:
        _recorded = saved


class Kernel:
    """A kernel's parallel and serial twins, dispatched on input size
    (``parallel`` is None for a kernel that never runs in parallel)."""

    __slots__ = ("parallel", "serial", "__name__", "jobs")

    def __init__(self, func: Callable, parallel: bool = True):
        self.parallel = _cached_njit(func, parallel=True, **_options()) if parallel else None
        self.serial = _cached_njit(_renamed(func, "_serial"), **_options())
        self.__name__ = func.__name__
        #: Parallel signatures being compiled by the helper process
        #: (:mod:`fastbn._background`), by argument types: job ids.
        self.jobs: dict[tuple, int] = {}
        if parallel and _background.ENABLED:
            # A call that would compile raises instead (see _run_parallel);
            # numba's disable_compile() refuses a dispatcher with no signature.
            self.parallel._can_compile = False

    def __call__(self, size: int, *args):
        """Run on ``args``; ``size`` (elements touched) picks the twin. The
        kernel's last argument, the number of task groups of its parallel
        loops, is added here."""
        return self.launch(parallel_threads(size) if self.parallel else 1, *args)

    def launch(self, threads: int, *args):
        """Run on ``args`` with ``threads`` threads (1: the serial twin; at
        most the calling thread's Numba thread count)."""
        if _recorded is not None:
            _recorded.append((self, tuple(numba.typeof(a) for a in (*args, 1))))
            return True
        if threads == 1:
            return self.serial(*args, 1)
        pool = numba.get_num_threads()
        threads = min(threads, pool)
        if threads == 1:
            return self.serial(*args, 1)
        if threads < pool:
            numba.set_num_threads(threads)
        old = numba.set_parallel_chunksize(1)
        try:
            return self._run_parallel(args, TASKS_PER_THREAD * threads)
        finally:
            numba.set_parallel_chunksize(old)
            if threads < pool:
                numba.set_num_threads(pool)

    def _run_parallel(self, args: tuple, tasks: int):
        """The parallel twin on ``args``, unless it is not compiled yet: then
        the helper process compiles it and the serial twin runs meanwhile
        (where there is no helper, it compiles here, as usual)."""
        if self.jobs:
            self._load_finished()
        try:
            return self.parallel(*args, tasks)
        except TypeError:  # no compiled signature (or a real type error)
            if self.parallel._can_compile:
                raise
        sig = tuple(numba.typeof(a) for a in (*args, 1))
        if sig not in self.jobs:
            job = _background.submit(self.__name__, sig)
            if job is None:
                self.parallel._can_compile = True
                return self.parallel(*args, tasks)
            self.jobs[sig] = job
        return self.serial(*args, 1)

    def _load_finished(self) -> None:
        """Load the signatures the helper has compiled into the cache (or
        compile them here if it failed)."""
        for sig, job in list(self.jobs.items()):
            if _background.finished(job):
                del self.jobs[sig]
                self.parallel._can_compile = True
                try:
                    self.parallel.compile(sig)
                finally:
                    self.parallel._can_compile = False

    def dispatchers(self) -> tuple:
        return (self.serial,) if self.parallel is None else (self.parallel, self.serial)


def kernel(func: Callable) -> Kernel:
    """Decorator turning a plain loop nest into a :class:`Kernel`."""
    return Kernel(func)


def serial_kernel(func: Callable) -> Kernel:
    """Decorator for a kernel over O(C) data: a serial twin only."""
    return Kernel(func, parallel=False)


def helper(func: Callable | None = None, *, inline: bool = False, strict: bool = False):
    """Decorator for small helpers called from kernels (never cached alone).

    A helper is compiled once per signature and called; ``inline=True``
    instead splices its body into each caller at Numba's IR level, which
    saves that compile where a helper has one call site per kernel, but
    types the body again at every site (slower where there are several).
    ``strict=True`` compiles without fast-math flags: LLVM keeps them per
    instruction, also once inlined into a kernel, and with ``reassoc`` and
    ``nsz`` together it may rewrite the float64 merges of partial moments so
    that a constant channel's mean comes out an ulp off (its variance 0, so
    its output far from ``bias``); the merges are O(C) work."""
    if func is None:
        return lambda f: helper(f, inline=inline, strict=strict)
    options = _options()
    if strict:
        options["fastmath"] = False
    return numba.njit(no_cpython_wrapper=True, inline="always" if inline else "never",
                      **options)(func)
