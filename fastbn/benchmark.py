"""Side-by-side timing of fastbn, PyTorch, NumPy and the memory roof.

The machines this runs on are shared and noisy: the same call moves by
10-50% from one second to the next, and a call after an idle gap is several
times slower. So competitors are timed in interleaved rounds: each round
calls the roof (a parallel copy of the same array: one read, one write),
fastbn and PyTorch once each, in an order that rotates from round to round,
with no idle gap; a ratio is the median over rounds of that round's ratio,
so that what slows one round slows both sides of it. Times are also given
in copies, against the traffic floor of each operation (with
write-allocate): forward-train 4/3 copy (a read for the statistics, then
read and write), eval 1 copy, backward 2 copies (read x and dy twice, write
dx). The obvious NumPy implementation, 10-30 times slower, is timed outside
the rounds, for a rough ratio only. The same runs time LayerNorm, GroupNorm
and InstanceNorm (``norm``; cases and floors: :mod:`fastbn.bench_family`).

Each row also keeps two signs of a busy machine, for the report to warn
about: the spread of the roof's own per-round times (:func:`spread`), and
the time of a parallel copy of 4 KiB timed after the case (``launch_ms``),
a few microseconds when Numba's threads find a free core, a scheduler time
slice (milliseconds) when they wait for one.

Used by ``benchmarks/compare.py``, ``python -m fastbn bench`` and the asv
suite (reports: :mod:`fastbn.benchmark_report`). PyTorch, tqdm and
matplotlib are optional.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

import numba
import numpy as np

from .bench_cases import DTYPES, FLOORS, LARGE, LAYOUTS, OPS, SHAPES, SMALL, Case, parallel_copy
from .bench_family import NORMS, make_case

__all__ = ["Case", "DTYPES", "FLOORS", "LARGE", "LAYOUTS", "NORMS", "OPS", "SHAPES", "SMALL",
           "Row", "BusyRow", "case_label", "launch_ms", "median_ms", "parallel_copy", "ratio",
           "rounds", "run", "run_busy", "spread"]


def median_ms(fn: Callable[[], object], repeat: int, min_time: float = 0.0) -> float:
    """Median wall time of ``fn`` in milliseconds, after one warm-up call
    (for a peer timed alone)."""
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < repeat or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


#: Each timed sample lasts at least this long (short calls are repeated
#: within a sample), so that the clock's resolution does not matter.
SAMPLE_S = 2e-4


def rounds(fns: dict[str, Callable[[], object]], n: int) -> dict[str, np.ndarray]:
    """Seconds per call of each of ``fns``, timed in ``n`` interleaved rounds.

    Each round times every function once (a sample of ``number`` calls,
    ``number`` the same for all, so that a sample lasts at least
    :data:`SAMPLE_S`), starting one further along the list each round.
    Returns one array of ``n`` per-call times per name.
    """
    names = list(fns)
    fastest = np.inf
    for fn in fns.values():
        fn()
        t0 = time.perf_counter()
        fn()
        fastest = min(fastest, time.perf_counter() - t0)
    number = int(min(1000, max(1, np.ceil(SAMPLE_S / max(fastest, 1e-9)))))
    times = {name: np.empty(n) for name in names}
    for r in range(n):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            fn = fns[name]
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            times[name][r] = (time.perf_counter() - t0) / number
    return times


def ratio(times: dict[str, np.ndarray], num: str, den: str) -> float:
    """Median over rounds of ``times[num] / times[den]``."""
    return float(np.median(times[num] / times[den]))


def spread(times: np.ndarray) -> float:
    """90th over 10th percentile of per-round times: near 1 when every
    round ran alike; robust to one slow round, unlike max / median."""
    p10, p90 = np.percentile(times, [10, 90])
    return float(p90 / p10)


_PROBE = (np.zeros(1024, np.float32), np.empty(1024, np.float32))


def launch_ms() -> float:
    """Median time in ms of a parallel copy of 4 KiB: the cost of waking
    Numba's threads (microseconds), or of waiting for cores taken by
    another process (milliseconds)."""
    src, dst = _PROBE
    return median_ms(lambda: parallel_copy(src, dst), 5)


@dataclass
class Row:
    """One case: medians in ms, and medians of per-round ratios; with
    ``copy_spread`` (:func:`spread` of the roof's rounds) and ``launch_ms``
    (:func:`launch_ms` after the case), the signs of a busy machine;
    ``norm``: a key of :data:`NORMS`."""

    shape: str
    layout: str
    dtype: str
    op: str
    copy_ms: float
    fastbn_ms: float
    fastbn_copies: float
    torch_ms: float | None = None
    torch_over_fastbn: float | None = None
    numpy_ms: float | None = None
    copy_spread: float | None = None
    launch_ms: float | None = None
    norm: str = "batch"
    floor_copies: float = field(init=False)

    def __post_init__(self):
        self.floor_copies = NORMS[self.norm].floors[self.op]

    @property
    def fastbn_over_floor(self) -> float:
        return self.fastbn_copies / self.floor_copies

    @property
    def numpy_over_fastbn(self) -> float | None:
        return None if self.numpy_ms is None else self.numpy_ms / self.fastbn_ms

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(fastbn_over_floor=self.fastbn_over_floor, numpy_over_fastbn=self.numpy_over_fastbn)
        return d


@contextlib.contextmanager
def _torch_threads(n: int):
    try:
        import torch
    except ImportError:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _combos(shapes, layouts, dtypes, norm) -> list[tuple[str, str, str]]:
    layouts = NORMS[norm].pick_layouts(layouts)
    return [(s, l, d) for s in shapes for l in layouts for d in dtypes]


def case_label(norm: str, *names: str) -> str:
    """``names`` (shape, layout, dtype, op) joined, the norm first unless
    BatchNorm."""
    return " ".join(names if norm == "batch" else (norm, *names))


def run(shapes: Iterable[str] | None = None, layouts: Iterable[str] = LAYOUTS,
        dtypes: Iterable[str] = ("float32",), ops: Iterable[str] | None = None, repeat: int = 15,
        peers: Iterable[str] = ("torch", "numpy"), progress: bool = True,
        norm: str = "batch") -> list[Row]:
    """Time every shape × layout × dtype × op of ``norm`` (default: all of
    its shapes and ops; LayerNorm has no layout) in ``repeat`` interleaved
    rounds of copy, fastbn and (if in ``peers`` and installed) PyTorch."""
    spec = NORMS[norm]
    combos = _combos(spec.shapes if shapes is None else shapes, layouts, dtypes, norm)
    ops = spec.ops if ops is None else tuple(ops)
    bar = _progress(len(combos) * len(ops), progress)
    rows = []
    with _torch_threads(numba.get_num_threads()):
        for shape, layout, dtype in combos:
            case = make_case(norm, shape, layout, dtype)
            for op in ops:
                bar.set_description(case_label(norm, shape, layout, dtype, op))
                fns = {"copy": case.copy, "fastbn": case.fastbn(op)}
                if "torch" in peers and (fn := case.torch(op)) is not None:
                    fns["torch"] = fn
                t = rounds(fns, repeat)
                row = Row(shape, layout, dtype, op, 1e3 * float(np.median(t["copy"])),
                          1e3 * float(np.median(t["fastbn"])), ratio(t, "fastbn", "copy"),
                          copy_spread=spread(t["copy"]), launch_ms=launch_ms(), norm=norm)
                if "torch" in t:
                    row.torch_ms = 1e3 * float(np.median(t["torch"]))
                    row.torch_over_fastbn = ratio(t, "torch", "fastbn")
                if "numpy" in peers:
                    row.numpy_ms = median_ms(case.numpy(op), max(3, repeat // 3))
                rows.append(row)
                bar.update(1)
    bar.close()
    return rows


def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


@contextlib.contextmanager
def busy_core(seconds: float = 3600.0):
    """A competing process spinning on one core for the duration (spawned,
    not forked: it must not inherit the parent's thread pools)."""
    proc = multiprocessing.get_context("spawn").Process(target=_spin, args=(seconds,), daemon=True)
    proc.start()
    try:
        time.sleep(0.5)  # let it start spinning
        yield
    finally:
        proc.terminate()
        proc.join()


def _at_threads(n: int, fn: Callable[[], object]) -> Callable[[], object]:
    def call():
        old = numba.get_num_threads()
        numba.set_num_threads(n)
        try:
            return fn()
        finally:
            numba.set_num_threads(old)

    return call


@dataclass
class BusyRow:
    """One case with another process spinning on a core: fastbn at all of
    its threads against fastbn at one thread, in interleaved rounds."""

    shape: str
    layout: str
    dtype: str
    op: str
    threads: int
    all_ms: float
    one_ms: float
    all_over_one: float
    norm: str = "batch"


def run_busy(shapes: Iterable[str], layouts: Iterable[str] = LAYOUTS,
             dtypes: Iterable[str] = ("float32",), ops: Iterable[str] | None = None,
             repeat: int = 15, progress: bool = True, norm: str = "batch") -> list[BusyRow]:
    """fastbn at ``numba.get_num_threads()`` threads vs 1 thread while a
    competing process keeps one core busy."""
    combos = _combos(shapes, layouts, dtypes, norm)
    ops = NORMS[norm].ops if ops is None else tuple(ops)
    threads = numba.get_num_threads()
    bar = _progress(len(combos) * len(ops), progress)
    rows = []
    with busy_core():
        for shape, layout, dtype in combos:
            case = make_case(norm, shape, layout, dtype)
            for op in ops:
                bar.set_description("busy " + case_label(norm, shape, layout, dtype, op))
                fn = case.fastbn(op)
                t = rounds({"all": _at_threads(threads, fn), "one": _at_threads(1, fn)}, repeat)
                rows.append(BusyRow(shape, layout, dtype, op, threads,
                                    1e3 * float(np.median(t["all"])), 1e3 * float(np.median(t["one"])),
                                    ratio(t, "all", "one"), norm))
                bar.update(1)
    bar.close()
    return rows


class _NoBar:
    def set_description(self, _):
        pass

    def update(self, _):
        pass

    def close(self):
        pass


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, unit="case", leave=False)
