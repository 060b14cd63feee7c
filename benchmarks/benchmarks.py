"""asv benchmarks for fastbn.

Times every op × layout × dtype × shape, peak memory of forward and
backward, import + first call in a fresh interpreter, a thread sweep, and
each op's time as a ratio to a parallel copy of the same array measured in
the same process (``track_``), so that regressions show as a ratio rather
than as machine noise; the same for LayerNorm, GroupNorm and InstanceNorm
(``TimeFamily``, ``TrackFamilyCopies``). Cases and peers are shared with
``benchmarks/compare.py`` through ``fastbn.benchmark``.
"""

import numba

from fastbn import benchmark as harness  # not its names: asv reads "rounds" as a setting
from fastbn.bench_family import FAMILY, FAMILY_OPS, NO_LAYOUT, NORMS, make_case
from fastbn.benchmark import DTYPES, LARGE, LAYOUTS, OPS, SHAPES, SMALL, Case

#: The family's parameters: every norm × op × layout × dtype × shape name;
#: :func:`family_case` skips the combinations a norm does not have.
FAMILY_PARAMS = (list(FAMILY), list(FAMILY_OPS), [*LAYOUTS, NO_LAYOUT], list(DTYPES),
                 list(dict.fromkeys(name for norm in FAMILY for name in NORMS[norm].shapes)))
FAMILY_PARAM_NAMES = ["norm", "op", "layout", "dtype", "shape"]


def family_case(norm, layout, dtype, shape):
    """The case, or NotImplementedError (asv: skipped) for a shape or
    layout that ``norm`` does not have."""
    spec = NORMS[norm]
    if shape not in spec.shapes or layout not in spec.layouts:
        raise NotImplementedError(f"{norm} norm has no case {shape} {layout}")
    return make_case(norm, shape, layout, dtype)


class TimeOps:
    """Wall time of one call (JIT warmed in setup)."""

    params = (list(OPS), list(LAYOUTS), list(DTYPES), list(SHAPES))
    param_names = ["op", "layout", "dtype", "shape"]

    def setup(self, op, layout, dtype, shape):
        self.fn = Case(SHAPES[shape], layout, dtype).fastbn(op)
        self.fn()

    def time_op(self, op, layout, dtype, shape):
        self.fn()


class TimeThreads:
    """Thread sweep of the large float32 shapes (1, 2 and all threads)."""

    params = (list(OPS), list(LAYOUTS), [1, 2, "max"])
    param_names = ["op", "layout", "threads"]
    timeout = 120

    def setup(self, op, layout, threads):
        self.saved = numba.get_num_threads()
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS if threads == "max"
                              else min(threads, numba.config.NUMBA_NUM_THREADS))
        self.fn = Case(SHAPES["32x64x56x56"], layout, "float32").fastbn(op)
        self.fn()

    def teardown(self, op, layout, threads):
        numba.set_num_threads(self.saved)

    def time_op(self, op, layout, threads):
        self.fn()


class TrackCopies:
    """Time of an op in parallel copies of the same array: the median of
    per-round ratios over interleaved rounds (copy and op alternating, no
    idle gap), so that a regression shows as a ratio, not as machine noise."""

    params = (list(OPS), list(LAYOUTS), list(DTYPES), list(LARGE + SMALL))
    param_names = ["op", "layout", "dtype", "shape"]
    unit = "copies"
    timeout = 120

    def setup(self, op, layout, dtype, shape):
        self.case = Case(SHAPES[shape], layout, dtype)
        self.fn = self.case.fastbn(op)

    def track_copies(self, op, layout, dtype, shape):
        times = harness.rounds({"copy": self.case.copy, "fastbn": self.fn}, 21)
        return harness.ratio(times, "fastbn", "copy")


class TimeFamily:
    """Wall time of one LayerNorm, GroupNorm or InstanceNorm call (JIT
    warmed in setup)."""

    params = FAMILY_PARAMS
    param_names = FAMILY_PARAM_NAMES

    def setup(self, norm, op, layout, dtype, shape):
        self.fn = family_case(norm, layout, dtype, shape).fastbn(op)
        self.fn()

    def time_op(self, norm, op, layout, dtype, shape):
        self.fn()


class TrackFamilyCopies:
    """TrackCopies for LayerNorm, GroupNorm and InstanceNorm (floors:
    forward 1 copy, backward 4/3; ``fastbn.bench_family``)."""

    params = FAMILY_PARAMS
    param_names = FAMILY_PARAM_NAMES
    unit = "copies"
    timeout = 120

    def setup(self, norm, op, layout, dtype, shape):
        self.case = family_case(norm, layout, dtype, shape)
        self.fn = self.case.fastbn(op)

    def track_copies(self, norm, op, layout, dtype, shape):
        times = harness.rounds({"copy": self.case.copy, "fastbn": self.fn}, 21)
        return harness.ratio(times, "fastbn", "copy")


class PeakMemory:
    """Peak resident memory of a process running forward or backward."""

    params = (list(LAYOUTS), list(LARGE))
    param_names = ["layout", "shape"]

    def setup(self, layout, shape):
        self.case = Case(SHAPES[shape], layout, "float32")
        self.forward = self.case.fastbn("forward")
        self.backward = self.case.fastbn("backward")
        self.forward()
        self.backward()

    def peakmem_forward(self, layout, shape):
        self.forward()

    def peakmem_backward(self, layout, shape):
        self.backward()


class TrackExtraMemory:
    """Bytes a call allocates beyond its output, as a multiple of x.nbytes.

    Measured with ``tracemalloc`` (NumPy reports its buffers to it): 1.0
    means the output alone; the kernels' O(C x tasks) partials add a little.
    """

    params = (list(OPS), list(LAYOUTS))
    param_names = ["op", "layout"]
    unit = "x.nbytes"

    def setup(self, op, layout):
        self.case = Case(SHAPES["32x64x56x56"], layout, "float32")
        self.fn = self.case.fastbn(op)
        self.fn()

    def track_peak_alloc(self, op, layout):
        import tracemalloc

        tracemalloc.start()
        try:
            self.fn()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        return peak / self.case.x.nbytes


def timeraw_cold_first_step(layout, dtype):
    """Import plus a first training forward, backward and eval forward
    (8x16x8x8) with an empty compile cache: what a first run waits for the
    compiler (python -m fastbn warmup removes that wait)."""
    shape = (8, 16, 8, 8) if layout == "NCHW" else (8, 8, 8, 16)
    return f"""
import os, shutil, tempfile
cache = tempfile.mkdtemp()
os.environ["NUMBA_CACHE_DIR"] = cache
import numpy as np
import fastbn
x = np.random.default_rng(0).standard_normal({shape}).astype("{dtype}")
bn = fastbn.BatchNorm(16, layout="{layout}", dtype=np.{dtype})
y = bn.forward(x)
bn.backward(np.ones_like(y))
bn.eval()
bn.forward(x)
shutil.rmtree(cache)
"""


timeraw_cold_first_step.params = (["NCHW", "NHWC"], ["float32", "float64"])
timeraw_cold_first_step.param_names = ["layout", "dtype"]
timeraw_cold_first_step.repeat = (1, 3, 60.0)
timeraw_cold_first_step.timeout = 300


def timeraw_import_and_first_call():
    """Import plus a first forward and backward in a fresh interpreter.

    asv runs it several times and reports the median, so the on-disk compile
    cache is warm for all but (at most) the first run.
    """
    return """
import numpy as np
import fastbn
x = np.ones((8, 16, 8, 8), np.float32)
x[0] = 2
y, cache = fastbn.batch_norm_forward(x)
fastbn.batch_norm_backward(y, cache)
"""
