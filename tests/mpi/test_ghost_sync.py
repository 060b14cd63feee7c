"""SyncBatchNorm with ``virtual_batch_size`` (ghost chunks of each rank's
local batch) across MPI ranks; run under ``mpiexec`` like test_sync.py.

Each rank keeps a slice of one global batch (every slice a multiple of the
chunk size); the results must equal a single-process ``BatchNorm`` with the
same ``virtual_batch_size`` over the whole batch.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

pytest.importorskip("mpi4py")
if not any(k in os.environ for k in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK")):
    pytest.skip("run under mpiexec -n 2 or more (tests/test_mpi.py does)", allow_module_level=True)

from mpi4py import MPI  # noqa: E402

import fastbn  # noqa: E402
from helpers import assert_close, assert_message, make_shape, make_x, tol  # noqa: E402

COMM = MPI.COMM_WORLD
RANK, SIZE = COMM.Get_rank(), COMM.Get_size()
V = 2

#: Per-rank batch sizes, multiples of V: equal, uneven, and with empty ranks.
SPLITS = {
    "even": [4] * SIZE,
    "uneven": [V * (1 + r) for r in range(SIZE)],
    "empty": [0 if r % 2 else 2 * V for r in range(SIZE)],
}


def _slice(a, split):
    start = sum(split[:RANK])
    return a[start:start + split[RANK]]


def _agree(a):
    everyone = COMM.allgather(np.asarray(a))
    for other in everyone:
        np.testing.assert_array_equal(other, everyone[0])


def _pair(C, layout, dtype, **kw):
    sync = fastbn.SyncBatchNorm(C, layout=layout, dtype=dtype, virtual_batch_size=V, **kw)
    single = fastbn.BatchNorm(C, layout=layout, dtype=dtype, virtual_batch_size=V, **kw)
    rng = np.random.default_rng(1)
    sync.weight[:] = single.weight[:] = rng.uniform(0.5, 2.0, C)
    sync.bias[:] = single.bias[:] = rng.uniform(-1.0, 1.0, C)
    return sync, single


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("split", sorted(SPLITS))
@pytest.mark.parametrize("momentum", [0.1, None])
def test_matches_one_process_over_the_whole_batch(split, layout, dtype, momentum):
    sizes, C = SPLITS[split], 3
    sync, single = _pair(C, layout, dtype, momentum=momentum)
    for step in range(2):
        rng = np.random.default_rng(step)
        shape = make_shape(4, layout, sum(sizes), C)
        x = make_x(rng, shape, layout, dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        y_all, dx_all = single(x), single.backward(dy)
        y, dx = sync(_slice(x, sizes)), sync.backward(_slice(dy, sizes))
        # each chunk is local: the same kernels over the same values
        np.testing.assert_array_equal(y, _slice(y_all, sizes))
        np.testing.assert_array_equal(dx, _slice(dx_all, sizes))
        t = tol(dtype)
        for name in ("grad_weight", "grad_bias", "running_mean", "running_var"):
            assert_close(getattr(sync, name), getattr(single, name), rtol=t, atol=t,
                         what=f"step {step} rank {RANK} {name}")
            _agree(getattr(sync, name))
        assert sync.num_batches_tracked == single.num_batches_tracked == step + 1


def test_ranks_with_different_spatial_extents():
    """Chunks of different sizes on different ranks: each chunk's unbiased
    variance with its own m."""
    C = 2
    bn = fastbn.SyncBatchNorm(C, dtype=np.float64, virtual_batch_size=V, momentum=1.0)
    x = np.random.default_rng(RANK).standard_normal((2 * V, C, 2 + RANK))
    bn(x)
    parts = COMM.allgather(x)
    want_mean, want_var = [], []
    for p in parts:
        for j in range(p.shape[0] // V):
            chunk = p[j * V:(j + 1) * V]
            want_mean.append(chunk.mean(axis=(0, 2)))
            want_var.append(chunk.var(axis=(0, 2), ddof=1))
    np.testing.assert_allclose(bn.running_mean, np.mean(want_mean, axis=0), rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, np.mean(want_var, axis=0), rtol=1e-12)
    _agree(bn.running_var)


def _unchanged(bn, before):
    after = bn.state_dict()
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])


def test_batch_not_a_multiple_on_one_rank_raises_everywhere():
    bn = fastbn.SyncBatchNorm(3, virtual_batch_size=V)
    n = V + 1 if RANK == SIZE - 1 else V
    before = bn.state_dict()
    with pytest.raises(ValueError) as e:
        bn(np.ones((n, 3, 2), np.float32))
    assert_message(e, "must divide the batch size")
    if RANK != SIZE - 1:
        assert_message(e, f"rank {SIZE - 1}")
    _unchanged(bn, before)
    bn(np.random.default_rng(RANK).standard_normal((V, 3, 2)).astype(np.float32))
    assert bn.num_batches_tracked == 1  # no collective left dangling


def test_ranks_disagree_on_virtual_batch_size():
    v = 4 if RANK == SIZE - 1 else V
    bn = fastbn.SyncBatchNorm(3, virtual_batch_size=v)
    before = bn.state_dict()
    with pytest.raises(ValueError) as e:
        bn(np.ones((4, 3, 2), np.float32))
    assert_message(e, "ranks disagree on virtual_batch_size")
    _unchanged(bn, before)


def test_every_rank_empty():
    bn = fastbn.SyncBatchNorm(3, virtual_batch_size=V)
    with pytest.raises(ValueError) as e:
        bn(np.empty((0, 3, 2), np.float32))
    assert_message(e, "at least one chunk")
    assert bn.num_batches_tracked == 0


def test_bad_dy_on_one_rank_raises_everywhere():
    bn = fastbn.SyncBatchNorm(3, dtype=np.float64, virtual_batch_size=V)
    x = np.random.default_rng(RANK).standard_normal((2 * V, 3))
    bn(x)
    dy = np.ones((5, 3)) if RANK == SIZE - 1 else np.ones_like(x)
    with pytest.raises(ValueError) as e:
        bn.backward(dy)
    assert_message(e, "dy must have shape")
    bn.backward(np.ones_like(x))  # no collective left dangling


def test_nonfinite_on_one_rank_skips_the_update_everywhere():
    bn = fastbn.SyncBatchNorm(3, dtype=np.float64, virtual_batch_size=V)
    x = np.random.default_rng(RANK).standard_normal((2 * V, 3))
    if RANK == SIZE - 1:
        x[0, 1] = np.nan
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = bn(x)
    assert any(issubclass(w.category, RuntimeWarning) for w in caught)
    assert bn.num_batches_tracked == 0
    np.testing.assert_array_equal(bn.running_mean, np.zeros(3))
    assert np.isfinite(y[V:]).all()  # only the chunk holding the NaN is NaN
