"""SyncBatchNorm across MPI ranks. Run under ``mpiexec -n 2`` (or more):
``mpiexec -n 3 python -m pytest tests/mpi -q``; tests/test_mpi.py launches
that from the normal suite. Every rank runs every test, in the same order.

Each rank builds the same global batch from a shared seed and keeps its own
slice; the results on each rank must equal a single-process ``BatchNorm``
over the whole batch (and the float64 reference).
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
import reference as ref  # noqa: E402
from helpers import assert_close, assert_message, check_y, make_shape, make_x, tol  # noqa: E402

COMM = MPI.COMM_WORLD
RANK, SIZE = COMM.Get_rank(), COMM.Get_size()

#: Per-rank batch sizes: equal, uneven, and with empty ranks.
SPLITS = {
    "even": [4] * SIZE,
    "uneven": [1 + 3 * r for r in range(SIZE)],
    "empty": [0 if r % 2 else 5 for r in range(SIZE)],
}


def _slice(a: np.ndarray, split: list[int]) -> np.ndarray:
    start = sum(split[:RANK])
    return a[start:start + split[RANK]]


def _global_batch(split, rank_, layout, dtype, seed=0, loc=None, channels=3):
    rng = np.random.default_rng(seed)
    shape = make_shape(rank_, layout, sum(split), channels)
    x = make_x(rng, shape, layout, dtype, loc=loc)
    dy = rng.standard_normal(shape).astype(dtype)
    return x, dy


def _agree(a: np.ndarray) -> None:
    """``a`` is bit-identical on every rank."""
    everyone = COMM.allgather(np.asarray(a))
    for other in everyone:
        np.testing.assert_array_equal(other, everyone[0])


def _check_vector(got, want, dtype, what):
    assert_close(got, want, rtol=tol(dtype), atol=tol(dtype), what=what)


@pytest.fixture(params=[3, 20], ids=["3ch", "20ch"])
def channels(request):
    return request.param


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("split", sorted(SPLITS))
@pytest.mark.parametrize("rank_", [2, 4])
def test_layer_matches_one_process_over_the_whole_batch(rank_, split, layout, dtype, channels):
    sizes = SPLITS[split]
    sync = fastbn.SyncBatchNorm(channels, layout=layout, dtype=dtype)
    single = fastbn.BatchNorm(channels, layout=layout, dtype=dtype)
    rng = np.random.default_rng(1)
    for bn in (sync, single):
        bn.weight[:] = rng.uniform(0.5, 2.0, channels) if bn is sync else sync.weight
        bn.bias[:] = rng.uniform(-1.0, 1.0, channels) if bn is sync else sync.bias
    for step in range(2):
        x, dy = _global_batch(sizes, rank_, layout, dtype, seed=step, channels=channels)
        y_all = single(x)
        dx_all = single.backward(dy)
        y = sync(_slice(x, sizes))
        dx = sync.backward(_slice(dy, sizes))
        what = f"step {step} rank {RANK}"
        assert y.shape == _slice(x, sizes).shape and dx.shape == y.shape
        check_y(y, _slice(y_all, sizes), dtype, what + " y")
        check_y(dx, _slice(dx_all, sizes), dtype, what + " dx")
        _check_vector(sync.grad_weight, single.grad_weight, dtype, what + " dweight")
        _check_vector(sync.grad_bias, single.grad_bias, dtype, what + " dbias")
        _check_vector(sync.running_mean, single.running_mean, dtype, what + " running_mean")
        _check_vector(sync.running_var, single.running_var, dtype, what + " running_var")
        assert sync.num_batches_tracked == single.num_batches_tracked == step + 1
        for v in (sync.running_mean, sync.running_var, sync.grad_weight, sync.grad_bias):
            _agree(v)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_functional_matches_the_float64_reference(layout, dtype, channels):
    sizes = SPLITS["uneven"]
    x, dy = _global_batch(sizes, 4, layout, dtype, seed=7, channels=channels)
    w = np.linspace(0.5, 1.5, channels).astype(dtype)
    b = np.linspace(-1.0, 1.0, channels).astype(dtype)
    rm, rv = np.zeros(channels, dtype), np.ones(channels, dtype)
    y, cache = fastbn.batch_norm_forward(_slice(x, sizes), w, b, running_mean=rm,
                                         running_var=rv, layout=layout, comm=COMM)
    dx, dw, db = fastbn.batch_norm_backward(_slice(dy, sizes), cache)
    ref_y, mean, var = ref.forward_train(x, w, b, layout=layout)
    ref_dx, ref_dw, ref_db = ref.backward_train(dy, x, w, layout=layout)
    m = x.size // channels
    check_y(y, _slice(ref_y, sizes), dtype)
    check_y(dx, _slice(ref_dx, sizes), dtype, "dx")
    _check_vector(dw, ref_dw, dtype, "dweight")
    _check_vector(db, ref_db, dtype, "dbias")
    _check_vector(rm, 0.1 * mean, dtype, "running_mean")
    _check_vector(rv, 0.9 + 0.1 * var * m / (m - 1), dtype, "running_var")


def test_ranks_with_different_memory_orders(channels):
    """Odd ranks hold NCHW data stored channels last (another kernel family);
    the result is still that of the whole batch."""
    sizes = SPLITS["uneven"]
    x, dy = _global_batch(sizes, 4, "NCHW", np.float64, seed=11, channels=channels)
    mine, my_dy = _slice(x, sizes), _slice(dy, sizes)
    if RANK % 2:
        mine = np.moveaxis(np.ascontiguousarray(np.moveaxis(mine, 1, -1)), -1, 1)
    w = np.linspace(0.5, 1.5, channels)
    y, cache = fastbn.batch_norm_forward(mine, w, comm=COMM)
    dx, dw, db = fastbn.batch_norm_backward(my_dy, cache)
    ref_y, _, _ = ref.forward_train(x, w)
    ref_dx, ref_dw, ref_db = ref.backward_train(dy, x, w)
    check_y(y, _slice(ref_y, sizes), np.float64)
    check_y(dx, _slice(ref_dx, sizes), np.float64, "dx")
    _check_vector(dw, ref_dw, np.float64, "dweight")
    _check_vector(db, ref_db, np.float64, "dbias")


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_large_mean_offset_float32(layout, channels):
    """|mean| = 1e4 x std: the merged statistics stay within the SPEC bounds."""
    sizes = [64 + 16 * r for r in range(SIZE)]
    loc = np.resize([1e4, -2e4, 5e3], channels)
    x, _ = _global_batch(sizes, 4, layout, np.float32, seed=3, loc=loc, channels=channels)
    y, cache = fastbn.batch_norm_forward(_slice(x, sizes), layout=layout, comm=COMM)
    mean, var = ref.stats(x, layout)
    scale = float(np.max(np.abs(x.astype(np.float64))))
    assert_close(cache.mean, mean, rtol=0, atol=1e-6 * scale, what="mean")
    assert_close(cache.var, var, rtol=1e-4, atol=0, what="var")
    check_y(y, _slice(ref.forward_train(x, layout=layout)[0], sizes), np.float32)


def test_backward_comm_must_be_the_forward_one():
    x, _ = _global_batch(SPLITS["even"], 2, "NCHW", np.float64)
    x = _slice(x, SPLITS["even"])
    _, synced = fastbn.batch_norm_forward(x, comm=COMM)
    _, local = fastbn.batch_norm_forward(x)
    with pytest.raises(ValueError) as e:
        fastbn.batch_norm_backward(np.ones_like(x), local, comm=COMM)
    assert_message(e, "not synchronized")
    dup = COMM.Dup()
    try:
        with pytest.raises(ValueError) as e:
            fastbn.batch_norm_backward(np.ones_like(x), synced, comm=dup)
        assert_message(e, "communicator of the forward")
    finally:
        dup.Free()
    fastbn.batch_norm_backward(np.ones_like(x), synced, comm=COMM)  # the same: fine


def _rank_dependent(good, bad):
    return bad if RANK == SIZE - 1 else good


@pytest.mark.parametrize("case", ["channels", "dtype", "local-check"])
def test_mismatch_raises_on_every_rank_and_changes_nothing(case):
    C = _rank_dependent(3, 4) if case == "channels" else 3
    dtype = _rank_dependent(np.float32, np.float64) if case == "dtype" else np.float32
    bn = fastbn.SyncBatchNorm(C, dtype=dtype)
    x = np.random.default_rng(RANK).standard_normal((4, C, 3)).astype(dtype)
    if case == "local-check":
        x = _rank_dependent(x, x[:, :2])  # wrong channel count on the last rank only
    before = bn.state_dict()
    with pytest.raises(ValueError) as e:
        bn(x)
    if case == "local-check" and RANK != SIZE - 1:
        assert_message(e, f"rank {SIZE - 1}", "channels")
    elif case != "local-check":
        assert_message(e, "ranks disagree", "channels")
    after = bn.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])
    ok = fastbn.SyncBatchNorm(3)  # the communicator is still usable
    ok(np.ones((2, 3, 2), np.float32) * RANK)
    assert ok.num_batches_tracked == 1


def test_channel_mismatch_names_num_features_on_every_rank():
    """The layer checks its input before the ranks exchange their errors, so
    every rank sees the message in the layer's terms."""
    bn = fastbn.SyncBatchNorm(4)
    good = np.ones((2, 4, 3, 3), np.float32) * (RANK + 1)
    x = _rank_dependent(good, np.ones((2, 3, 3, 4), np.float32))  # NHWC-shaped on the last
    expected = ("SyncBatchNorm(num_features=4, layout='NCHW') expects 4 channels on axis 1 of a "
                "rank-4 input, got shape (2, 3, 3, 4); got an NHWC-shaped array? pass "
                "layout='NHWC'")
    with pytest.raises(ValueError) as e:
        bn(x)
    prefix = "" if RANK == SIZE - 1 else f"rank {SIZE - 1} of the communicator failed: "
    assert str(e.value) == prefix + expected
    assert bn.num_batches_tracked == 0
    np.testing.assert_array_equal(bn.running_mean, np.zeros(4, np.float32))
    bn.eval()  # no communication: each rank checks alone
    with pytest.raises(ValueError) as e:
        bn(np.ones((2, 3, 3, 4), np.float32))
    assert str(e.value) == expected
    bn.train()
    bn(good)  # no collective left dangling
    assert bn.num_batches_tracked == 1


def test_null_communicator_is_named():
    with pytest.raises(TypeError,
                       match=r"^comm must be an mpi4py communicator, got MPI\.COMM_NULL$"):
        fastbn.SyncBatchNorm(3, comm=MPI.COMM_NULL)


def test_bad_dy_on_one_rank_raises_on_every_rank():
    bn = fastbn.SyncBatchNorm(3, dtype=np.float64)
    x = np.random.default_rng(RANK).standard_normal((4, 3))
    bn(x)
    dy = _rank_dependent(np.ones_like(x), np.ones((5, 3)))
    with pytest.raises(ValueError) as e:
        bn.backward(dy)
    assert_message(e, ("dy must have shape", f"rank {SIZE - 1}"))
    bn.backward(np.ones_like(x))  # no collective left dangling


def test_too_few_values_in_the_whole_batch():
    bn = fastbn.SyncBatchNorm(3, dtype=np.float64)
    x = np.ones((1, 3)) if RANK == 0 else np.empty((0, 3))
    with pytest.raises(ValueError) as e:
        bn(x)
    assert_message(e, "more than 1 value per channel")
    assert bn.num_batches_tracked == 0
    np.testing.assert_array_equal(bn.running_var, np.ones(3))


def test_nonfinite_on_one_rank_skips_the_update_everywhere():
    bn = fastbn.SyncBatchNorm(3, dtype=np.float64)
    x = np.random.default_rng(RANK).standard_normal((4, 3))
    if RANK == SIZE - 1:
        x[0, 1] = np.nan
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = bn(x)
    assert any(issubclass(w.category, RuntimeWarning) for w in caught)
    assert bn.num_batches_tracked == 0
    np.testing.assert_array_equal(bn.running_mean, np.zeros(3))
    assert np.isnan(y[:, 1]).all() and np.isfinite(y[:, [0, 2]]).all()


class CountingComm(MPI.Intracomm):
    """COMM_WORLD's handle, counting the collective calls made on it."""

    calls = 0

    def _count(self, name):
        def call(*args, **kwargs):
            CountingComm.calls += 1
            return getattr(MPI.Intracomm, name)(self, *args, **kwargs)
        return call

    def __getattribute__(self, name):
        if name in ("allgather", "Allgather", "allreduce", "Allreduce", "Barrier", "bcast",
                    "Bcast", "gather", "Gather", "reduce", "Reduce"):
            return object.__getattribute__(self, "_count")(name)
        return super().__getattribute__(name)


@pytest.mark.parametrize("track", [True, False])
def test_eval_mode_does_not_communicate(track):
    counting = CountingComm(COMM)
    sync = fastbn.SyncBatchNorm(3, comm=counting, track_running_stats=track, dtype=np.float64)
    local = fastbn.BatchNorm(3, track_running_stats=track, dtype=np.float64)
    x = np.random.default_rng(RANK).standard_normal((4, 3, 2))
    sync.eval(), local.eval()
    CountingComm.calls = 0
    np.testing.assert_array_equal(sync(x), local(x))
    np.testing.assert_array_equal(sync.backward(x), local.backward(x))
    assert CountingComm.calls == 0
    sync.train()
    sync(x)
    sync.backward(x)
    assert CountingComm.calls == 4  # forward and backward: one allgather and one Allgather each


def test_bad_communicator():
    with pytest.raises(TypeError) as e:
        fastbn.SyncBatchNorm(3, comm="world")
    assert_message(e, "mpi4py communicator")
    with pytest.raises(TypeError):
        fastbn.batch_norm_forward(np.ones((2, 3)), comm=42)


def test_state_dict_and_repr():
    bn = fastbn.SyncBatchNorm(3, comm=COMM)
    assert set(bn.state_dict()) == {"weight", "bias", "running_mean", "running_var",
                                    "num_batches_tracked"}
    assert f"over {SIZE} ranks" in repr(bn)
    assert bn.comm is COMM


def test_data_parallel_example_matches_one_process():
    """examples/mpi_digits.py: SyncBatchNorm plus summed gradients train the
    same network as one process on the whole mini-batches."""
    pytest.importorskip("sklearn")
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "mpi_digits.py"
    spec = importlib.util.spec_from_file_location("mpi_digits", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    model, history = example.train(COMM, epochs=1, hidden=(32, 32))
    single, single_history = example.train(MPI.COMM_SELF, epochs=1, hidden=(32, 32))
    assert any(isinstance(layer, fastbn.SyncBatchNorm) for layer in model.layers)
    for a, b in zip(model.layers, single.layers):
        for name in a.parameters():
            assert_close(a.parameters()[name], b.parameters()[name], rtol=1e-9, atol=1e-9,
                         what=f"{a!r} {name}")
        if isinstance(a, fastbn.BatchNorm):
            assert_close(a.running_var, b.running_var, rtol=1e-9, atol=1e-9, what="running_var")
    assert_close(history, single_history, rtol=1e-9, atol=1e-9, what="history")


@pytest.mark.parametrize("split", ["uneven", "empty"])
def test_embedding_options_over_ranks(split):
    """The framework-facing options in a synchronized call: biased running
    variance, (1, C, 1, 1) parameters and running statistics, cache.mean and
    cache.var of the whole batch, input_grad=False, dx into out, float16."""
    sizes = SPLITS[split]
    x, dy = _global_batch(sizes, 4, "NCHW", np.float64, seed=11)
    C = 3
    w = np.linspace(0.5, 1.5, C).reshape(1, C, 1, 1)
    b = np.linspace(-1.0, 1.0, C).reshape(1, C, 1, 1)
    rm, rv = np.zeros((1, C, 1, 1)), np.ones((1, C, 1, 1))
    xs, dys = _slice(x, sizes), _slice(dy, sizes)
    y, cache = fastbn.batch_norm_forward(xs, w, b, running_mean=rm, running_var=rv, comm=COMM,
                                         unbiased_running_var=False)
    ref_y, mean, var = ref.forward_train(x, w.reshape(C), b.reshape(C))
    check_y(y, _slice(ref_y, sizes), np.float64)
    _check_vector(cache.mean, mean, np.float64, "cache.mean")
    _check_vector(cache.var, var, np.float64, "cache.var")
    _check_vector(rv.reshape(C), 0.9 + 0.1 * var, np.float64, "biased running_var")
    ref_dx, ref_dw, ref_db = ref.backward_train(dy, x, w.reshape(C))
    none, dw, db = fastbn.batch_norm_backward(dys, cache, input_grad=False)
    assert none is None
    _check_vector(dw, ref_dw, np.float64, "dweight")
    out = np.empty_like(xs)
    dx, _, _ = fastbn.batch_norm_backward(dys, cache, out=out)
    assert dx is out
    check_y(out, _slice(ref_dx, sizes), np.float64, "dx")

    half = fastbn.SyncBatchNorm(C, comm=COMM, dtype=np.float16)
    y16 = half.forward(xs.astype(np.float16))
    dx16 = half.backward(dys.astype(np.float16))
    assert y16.dtype == dx16.dtype == half.grad_weight.dtype == np.float16
    y_ref16, _, _ = ref.forward_train(x.astype(np.float16).astype(np.float64))
    np.testing.assert_allclose(y16, _slice(y_ref16, sizes), rtol=2e-3, atol=2e-3)
