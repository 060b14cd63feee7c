"""Compile ahead of use, and look into the compile cache.

``python -m fastbn warmup`` compiles, into the on-disk cache, every kernel
signature that the layouts and dtypes asked for can reach, so that no later
process waits for the compiler (for a Docker image or a CI cache).
``python -m fastbn cache`` says where the cache is, its size, and which of
those signatures it holds; ``--clear`` empties it.

The signatures are found by a dry run of the public functions
(:func:`fastbn._jit.recording`) over one small input per kernel family, so
they are exactly what user calls compile: C-contiguous or permuted views
(strided inputs that cannot be viewed so compile their own variants on
first use). Compiling happens in separate processes, one dispatcher (every
signature of one twin of one kernel) per task, so that no two of them write
the same cache index; the cache's own lock (:mod:`fastbn._jit`) covers other
processes compiling at the same time.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from dataclasses import replace
from typing import Iterable

import numba
import numpy as np

LAYOUTS = ("NCHW", "NHWC")
DTYPES = ("float32", "float64")


def _workload(layout: str, dtype: str, strided: bool) -> None:
    """Every public path over inputs of ``layout`` and ``dtype``: one shape
    per kernel family (walk, channels-first, channels-last), training with
    and without the channel-per-task kernels, eval, backward of both,
    running statistics in x's dtype and in float64; with ``strided``, also
    over every other sample of such inputs (views the kernels cannot see as
    contiguous, which compile variants of their own)."""
    from . import _choices, functional as F
    from .kernels import RUN_BYTES

    dt = np.dtype(dtype)
    if layout == "NCHW":  # runs shorter than RUN_BYTES are walked, longer ones not
        shapes = [(4, 16, 2, 2), (2, 16, 1, RUN_BYTES // dt.itemsize)]
    else:  # a sample per thread at least: the sample-per-task kernels serve it
        shapes = [(max(4, numba.get_num_threads()), 2, 2, 16)]
    saved = _choices.CHOICES
    every, none = (replace(saved, fused_max_channel_bytes=m)
                   for m in (1 << 62, 0))
    try:
        for shape, choices in ((s, c) for s in shapes for c in (none, every)):
            _choices.CHOICES = choices
            x = np.zeros((2 * shape[0], *shape[1:]), dt)[::2] if strided else np.zeros(shape, dt)
            c = shape[1] if layout == "NCHW" else shape[-1]
            for stats_dtype in (dt, np.float64):
                rm, rv = np.zeros(c, stats_dtype), np.ones(c, stats_dtype)
                y, cache = F.batch_norm_forward(x, np.ones(c, dt), np.zeros(c, dt),
                                                running_mean=rm, running_var=rv, layout=layout)
                F.batch_norm_backward(y, cache)
                y, cache = F.batch_norm_forward(x, training=False, running_mean=rm,
                                                running_var=rv, layout=layout)
                F.batch_norm_backward(y, cache)
            F.batch_stats(x, layout=layout)
            _family_workload(x, c, layout)
    finally:
        _choices.CHOICES = saved


def _family_workload(x: np.ndarray, c: int, layout: str) -> None:
    """LayerNorm, GroupNorm (groups of several channels) and InstanceNorm
    (with running statistics, and normalizing with them) over ``x``."""
    from . import family as F

    w, b = np.ones(c, x.dtype), np.zeros(c, x.dtype)
    y, cache = F.group_norm_forward(x, c // 4, w, b, layout=layout)
    F.group_norm_backward(y, cache)
    for use_input_stats in (True, False):
        y, cache = F.instance_norm_forward(x, w, b, use_input_stats=use_input_stats,
                                           running_mean=np.zeros(c), running_var=np.ones(c),
                                           layout=layout)
        F.instance_norm_backward(y, cache)
    y, cache = F.layer_norm_forward(x, x.shape[-1], np.ones(x.shape[-1], x.dtype))
    F.layer_norm_backward(y, cache)


def signatures(layouts: Iterable[str] = LAYOUTS, dtypes: Iterable[str] = DTYPES,
               strided: bool = False) -> dict[tuple[str, str], list[tuple]]:
    """``{(kernel name, "serial" or "parallel"): [argument types, ...]}``
    that calls over ``layouts`` and ``dtypes`` can compile (with
    ``strided``, also those of strided inputs)."""
    from . import _jit

    with _jit.recording() as calls, warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # a dry run computes garbage: its warnings mean nothing
        for layout in layouts:
            for dtype in dtypes:
                for variant in (False, True) if strided else (False,):
                    _workload(layout, dtype, variant)
    found: dict[tuple[str, str], list[tuple]] = {}
    for kernel, types in calls:
        for twin in ("serial", "parallel") if kernel.parallel is not None else ("serial",):
            sigs = found.setdefault((kernel.__name__, twin), [])
            if types not in sigs:
                sigs.append(types)
    return found


def dispatcher(name: str, twin: str):
    """The Numba dispatcher of twin ``twin`` of kernel ``name``."""
    from . import kernels

    return getattr(getattr(kernels, name), twin)


def _compile(name: str, twin: str, sigs: list[tuple]) -> tuple[str, str, int, int, float]:
    """Compile (or load) ``sigs`` of one dispatcher: runs in a worker process.
    Returns ``(name, twin, compiled, loaded from the cache, seconds)``."""
    disp = dispatcher(name, twin)
    disp._can_compile = True  # a parallel twin waiting for a helper (fastbn._background)
    start = time.perf_counter()
    for sig in sigs:
        disp.compile(sig)
    compiled = sum(disp.stats.cache_misses.values())
    loaded = sum(disp.stats.cache_hits.values())
    return name, twin, compiled, loaded, time.perf_counter() - start


def _progress(total: int, quiet: bool):
    """A tqdm bar when tqdm is installed, else a line per task (stderr)."""
    if quiet:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="kernel", desc="compiling", file=sys.stderr)


def warmup(layouts: Iterable[str] = LAYOUTS, dtypes: Iterable[str] = DTYPES,
           strided: bool = False, jobs: int | None = None, quiet: bool = False) -> list[tuple]:
    """Compile every signature of :func:`signatures` into the cache, in
    ``jobs`` processes (default: the usable cores). Returns the per-task
    results of :func:`_compile`, slowest first."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from ._choices import MACHINE

    work = signatures(layouts, dtypes, strided)
    jobs = max(1, min(jobs or MACHINE.cpus, len(work)))
    # Parallel twins take longest: start them first.
    order = sorted(work, key=lambda k: (k[1] != "parallel", k[0]))
    bar = _progress(len(order), quiet)
    results = []
    # spawn: a forked child of a process whose threading layer started may abort.
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_compile, name, twin, work[name, twin]) for name, twin in order]
        for done, fut in enumerate(as_completed(futures), 1):
            res = fut.result()
            results.append(res)
            if bar is not None:
                bar.update()
            elif not quiet:
                name, twin, compiled, loaded, secs = res
                print(f"[{done}/{len(futures)}] {name} ({twin}): {compiled} compiled, "
                      f"{loaded} from the cache, {secs:.1f} s", file=sys.stderr)
    if bar is not None:
        bar.close()
    return sorted(results, key=lambda r: -r[4])


def cache_dir() -> str | None:
    """The directory of the kernels' compile cache (None without a cache)."""
    from .kernels import stats_cf

    return getattr(getattr(stats_cf.serial, "_cache", None), "_cache_path", None)


def cache_files() -> list[str]:
    """fastbn's files in the compile cache: index, data and lock files of
    the kernels (not the calibration kept beside them). Numba names them
    after the kernel's module file (``stats.stats_cf-...nbi``)."""
    from . import kernels

    path = cache_dir()
    if path is None or not os.path.isdir(path):
        return []
    modules = tuple({d.py_func.__module__.rpartition(".")[2] + "." for d in kernels.dispatchers()})
    return sorted(os.path.join(path, f) for f in os.listdir(path)
                  if f.startswith(modules) and f.endswith((".nbi", ".nbc", ".lock")))


def is_cached(name: str, twin: str, sig: tuple) -> bool | None:
    """Whether the cache holds ``sig`` of a dispatcher (None if unknown:
    Numba's private cache attributes not found)."""
    disp = dispatcher(name, twin)
    cache = getattr(disp, "_cache", None)
    try:
        key = cache._index_key(sig, disp.targetctx.codegen())
        return key in cache._cache_file._load_index()
    except AttributeError:
        return None


def clear() -> int:
    """Remove fastbn's compiled kernels from the cache; returns bytes freed."""
    freed = 0
    for f in cache_files():
        try:
            size = os.path.getsize(f)
            os.remove(f)
            freed += size
        except FileNotFoundError:
            pass
    return freed
