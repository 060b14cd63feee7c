"""``python -m fastbn tune``: measure this machine's crossover points.

Each choice of :mod:`fastbn._choices` is settled by timing both candidate
kernels in interleaved rounds (median of per-round ratios, as in
:mod:`fastbn.benchmark`) on a few synthetic shapes; results are the same
whichever wins, so a calibration can only change speed.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numba
import numpy as np

from . import _choices
from .benchmark import ratio, rounds
from .kernels import KERNELS

#: A candidate must win by this factor to move a threshold away from the
#: default (noise on a shared machine is a few percent).
MARGIN = 0.95
#: Bytes of the synthetic inputs of the fused-or-two-pass comparisons.
TOTAL = 24 << 20


def _train_forward(fused: bool, x: np.ndarray) -> Callable[[], object]:
    """Training forward at all threads: channel per task, or the statistics
    then the normalization."""
    c = x.shape[2]
    mean, var, y = np.empty(c), np.empty(c), np.empty_like(x)
    w, b = np.ones(c, x.dtype), np.zeros(c, x.dtype)
    lo, none = x.dtype.type(-np.inf), np.empty(0, x.dtype)  # no activation
    n = numba.get_num_threads()
    if fused:
        forward = KERNELS["fused_forward"]["cf"]
        return lambda: forward.launch(n, x, 1, w, b, 1e-5, lo, mean, var, none, y)
    stats, affine = KERNELS["stats"]["cf"], KERNELS["affine"]["cf"]
    return lambda: (stats.launch(n, x, mean, var),
                    affine.launch(n, x, mean, var, w, b, 1e-5, lo, none, y))


def _fused_wins(n: int, c: int, s: int, repeat: int) -> float:
    """Fused over two-pass time, training forward, float32 (n, c, s)."""
    x = np.random.default_rng(0).standard_normal((1, n, c, s), dtype=np.float32)
    t = rounds({"fused": _train_forward(True, x), "two": _train_forward(False, x)}, repeat)
    return ratio(t, "fused", "two")


def _parallel_wins(size: int, repeat: int) -> float:
    """2 threads' time over 1 thread's, eval kernel, ``size`` float32 values
    (the threshold where a second thread starts to pay; each further
    thread then needs half as much again, see ``_jit.parallel_threads``)."""
    x = np.random.default_rng(0).standard_normal((1, size // 64, 64), dtype=np.float32)
    mean, var, y = np.zeros(64), np.ones(64), np.empty_like(x)
    w = b = np.empty(0, np.float32)
    affine = KERNELS["affine"]["cl"]
    lo = np.float32(-np.inf)  # no activation
    t = rounds({"parallel": lambda: affine.launch(2, x, mean, var, w, b, 1e-5, lo, w, y),
                "serial": lambda: affine.launch(1, x, mean, var, w, b, 1e-5, lo, w, y)}, repeat)
    return ratio(t, "parallel", "serial")


def calibrate(repeat: int = 15, log: Callable[[str], None] = print) -> _choices.Choices:
    """Measure the choices of this machine (a few seconds)."""
    base = _choices.derive(_choices.MACHINE)
    threads = numba.get_num_threads()
    parallel_min = base.parallel_min_size
    if threads > 1:
        parallel_min = 1 << 22
        for size in (1 << k for k in range(12, 22)):
            r = _parallel_wins(size, repeat)
            log(f"2 threads / 1 thread, {size} values: {r:.2f}")
            if r < MARGIN:
                parallel_min = size
                break
    # Fused vs two-pass on inputs of TOTAL bytes (larger than most caches,
    # like real activations), by channel size, at runs of 16 KiB.
    best_bytes = 0
    for kib in (32, 64, 128, 256, 512, 1024, 2048):
        n = max(1, kib * 1024 // (4 * 4096))
        r = _fused_wins(n, max(16, TOTAL // (kib * 1024)), 4096, repeat)
        log(f"fused / two-pass, {kib} KiB channels, 16 KiB runs: {r:.2f}")
        if r < MARGIN:
            best_bytes = kib * 1024
        elif best_bytes:
            break
    return replace(base, parallel_min_size=parallel_min, fused_max_channel_bytes=best_bytes,
                   source=f"calibrated at {threads} threads")


def main(repeat: int = 15) -> int:
    from . import _background

    _background.ENABLED = False  # time the parallel twins, not their stand-ins
    choices = calibrate(repeat)
    path = _choices.tuning_path()
    if path is None:
        print("no compile cache directory: the calibration cannot be kept")
        return 1
    _choices.save(choices, _choices.MACHINE, path)
    print(f"wrote {path}")
    _choices.activate()
    return 0
