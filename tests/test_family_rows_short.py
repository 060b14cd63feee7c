"""LayerNorm's short-row kernels (:mod:`fastbn.kernels.rows`: rows of at most
``SHORT_BYTES`` go a block of ``FLUSH_ROWS`` rows at a time) against the
float64 reference: row lengths on both sides of the threshold, row counts
that leave partial blocks and tasks, a mean 1e4 times the spread, and the
same bits with one thread or two."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from fastbn import _jit
from fastbn.kernels import CHUNK, rows
from family_helpers import EPS, Norm, check_forward, check_grads
from helpers import DTYPES, check_stats, data_scale

#: Row lengths below and above the threshold (float32: 48 values, float64: 24).
DIMS = (1, 2, 3, 7, 16, 17, 24, 25, 33, 48, 49, 64)
DT = pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
ND = pytest.mark.parametrize("nd", DIMS, ids=[f"D{d}" for d in DIMS])


def _n_rows(nd, tasks):
    """An odd row count: ``tasks`` tasks of rows (the last one shorter),
    each ending in a partial block and an odd row."""
    return (tasks - 1) * max(1, CHUNK // nd) + 2 * rows.FLUSH_ROWS + 3


def _run(norm, x, dy, w, b):
    y, cache = norm.forward(x, w, b)
    return (y, cache.mean, cache.var, *norm.backward(dy, cache))


def test_threshold_splits_the_dims():
    """DIMS covers both paths in both dtypes."""
    for dtype in DTYPES:
        short = [d * np.dtype(dtype).itemsize <= rows.SHORT_BYTES for d in DIMS]
        assert any(short) and not all(short)


@DT
@ND
@pytest.mark.parametrize("tasks", [1, 2], ids=["task", "tasks"])
def test_short_rows_match_reference(rng, nd, dtype, tasks):
    """y, the statistics, dx, dweight and dbias match the reference."""
    _check_against_reference(rng, Norm("layer", (_n_rows(nd, tasks), nd), nd), dtype)


def _check_against_reference(rng, norm, dtype):
    x = norm.data(rng, dtype)
    dy = rng.standard_normal(norm.shape).astype(dtype)
    w, b = norm.params(rng, dtype)
    y, cache = norm.forward(x, w, b)
    check_forward(norm, x, y, cache, *norm.reference(x, w, b), dtype)
    check_grads(norm, norm.backward(dy, cache), norm.reference_backward(dy, x, w),
                dy, x, w, EPS, dtype)


@pytest.mark.parametrize("n_rows", [1, 2, 3])
@DT
def test_few_rows(rng, n_rows, dtype):
    """One to three rows: a single block, its second row pair cut short."""
    for nd in (1, 3, 16):
        _check_against_reference(rng, Norm("layer", (n_rows, nd), nd), dtype)


@DT
@ND
def test_large_offset(rng, nd, dtype):
    """|mean| = 1e4 * std, of either sign: the statistics within SPEC's
    bounds, y as close as test_family's test_large_offset asks, dx,
    dweight and dbias as close as every other layer test asks."""
    shape = (_n_rows(nd, 1), nd)
    norm = Norm("layer", shape, nd)
    signs = np.where(np.arange(shape[0]) % 2 == 0, 1.0, -1.0)[:, None]
    for std in (0.01, 100.0):
        x = (1e4 * std * signs + std * rng.standard_normal(shape)).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        w, b = norm.params(rng, dtype)
        y, cache = norm.forward(x, w, b)
        ry, rmean, rvar = norm.reference(x, w, b)
        check_stats(cache.mean, cache.var, rmean, rvar, dtype, data_scale(x), what=f"std={std}")
        ulp = np.spacing(np.abs(rmean).astype(dtype)).astype(np.float64)
        atol = 1e-8 if dtype == np.float64 else 1e-5 + float(np.max(ulp / np.sqrt(rvar + EPS)))
        np.testing.assert_allclose(y, ry, rtol=1e-5, atol=atol * float(np.max(np.abs(w))))
        check_grads(norm, norm.backward(dy, cache), norm.reference_backward(dy, x, w),
                    dy, x, w, EPS, dtype)


#: (dtype, D) of the short-row path.
SHORT = [(dt, d) for dt in DTYPES for d in DIMS if d * np.dtype(dt).itemsize <= rows.SHORT_BYTES]


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two Numba threads")
@pytest.mark.parametrize("dtype,nd", SHORT, ids=[f"{np.dtype(t).name}-D{d}" for t, d in SHORT])
def test_one_thread_or_two_same_bits(rng, monkeypatch, nd, dtype):
    """Forward and backward give the same bits on one thread (the serial
    twin) as on two (the parallel twin), over several tasks, also with the
    parallel twin loaded from the compile cache (as conftest's warmup
    leaves it). Longer rows are not held to this: a cache-loaded parallel
    twin can round their sums an ulp apart (docs/cold-start.md)."""
    norm = Norm("layer", (_n_rows(nd, 5), nd), nd)
    x = norm.data(rng, dtype, loc=100.0)
    dy = rng.standard_normal(norm.shape).astype(dtype)
    w, b = norm.params(rng, dtype)
    monkeypatch.setattr(_jit, "PARALLEL_MIN_SIZE", 1 << 40)
    one = _run(norm, x, dy, w, b)
    monkeypatch.setattr(_jit, "PARALLEL_MIN_SIZE", 1)
    threads = numba.get_num_threads()
    numba.set_num_threads(2)
    try:
        two = _run(norm, x, dy, w, b)
    finally:
        numba.set_num_threads(threads)
    for name, a, c in zip(("y", "mean", "var", "dx", "dweight", "dbias"), one, two):
        np.testing.assert_array_equal(a, c, err_msg=name)
