"""Ghost batch normalization: ``BatchNorm(virtual_batch_size=v)``.

Expected values come from a float64 NumPy reference written here (batch
normalization of each consecutive chunk of v samples, the textbook backward
per chunk, the running statistics as the mean over chunks), independent of
fastbn.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import fastbn
from helpers import (LAYOUTS, RANKS, as_variant, assert_close, check_y, make_params, make_shape,
                     make_x, tol)

EPS = 1e-5


# --- the reference ------------------------------------------------------------------------


def _ncs(a, layout):
    """``a`` as float64 (N, C, S)."""
    a = np.asarray(a, np.float64)
    if layout == "NHWC":
        a = np.moveaxis(a, -1, 1)
    return a.reshape(a.shape[0], a.shape[1], -1)


def _back(a_ncs, shape, layout):
    """(N, C, S) back to ``shape`` in ``layout``."""
    if layout == "NCHW":
        return a_ncs.reshape(shape)
    n, *spatial, c = shape
    return np.moveaxis(a_ncs.reshape(n, c, *spatial), 1, -1)


def ref_forward(x, weight, bias, v, layout, eps=EPS):
    """y, per-chunk mean and biased variance (float64)."""
    xs = _ncs(x, layout)
    c = xs.shape[1]
    w = np.ones(c) if weight is None else np.asarray(weight, np.float64)
    b = np.zeros(c) if bias is None else np.asarray(bias, np.float64)
    y = np.empty_like(xs)
    means, vars_ = [], []
    for j in range(xs.shape[0] // v):
        chunk = xs[j * v:(j + 1) * v]
        mean = chunk.mean(axis=(0, 2))
        var = ((chunk - mean[:, None]) ** 2).mean(axis=(0, 2))
        xhat = (chunk - mean[:, None]) / np.sqrt(var + eps)[:, None]
        y[j * v:(j + 1) * v] = xhat * w[:, None] + b[:, None]
        means.append(mean)
        vars_.append(var)
    return _back(y, x.shape, layout), np.array(means), np.array(vars_)


def ref_backward(dy, x, weight, v, layout, eps=EPS):
    """Textbook backward of each chunk: (dx, dweight, dbias), float64."""
    xs, gs = _ncs(x, layout), _ncs(dy, layout)
    c = xs.shape[1]
    w = np.ones(c) if weight is None else np.asarray(weight, np.float64)
    dx = np.empty_like(xs)
    dw, db = np.zeros(c), np.zeros(c)
    for j in range(xs.shape[0] // v):
        s = slice(j * v, (j + 1) * v)
        chunk, g = xs[s], gs[s]
        m = chunk.shape[0] * chunk.shape[2]
        mean = chunk.mean(axis=(0, 2))
        invstd = 1.0 / np.sqrt(((chunk - mean[:, None]) ** 2).mean(axis=(0, 2)) + eps)
        xhat = (chunk - mean[:, None]) * invstd[:, None]
        gxhat = g * w[:, None]
        dx[s] = (invstd[:, None] / m) * (m * gxhat - gxhat.sum(axis=(0, 2))[:, None]
                                         - xhat * (gxhat * xhat).sum(axis=(0, 2))[:, None])
        dw += (g * xhat).sum(axis=(0, 2))
        db += g.sum(axis=(0, 2))
    return _back(dx, x.shape, layout), dw, db


def ref_running(rmean, rvar, x, v, layout, momentum, unbiased=True):
    """Running statistics after one training call: the mean over chunks of
    their mean and (unbiased) variance."""
    _, means, vars_ = ref_forward(x, None, None, v, layout)
    m = v * _ncs(x, layout).shape[2]
    factor = m / (m - 1) if unbiased else 1.0
    return ((1 - momentum) * rmean + momentum * means.mean(axis=0),
            (1 - momentum) * rvar + momentum * vars_.mean(axis=0) * factor)


def _layer(c, v, layout, dtype, rng, **kw):
    bn = fastbn.BatchNorm(c, layout=layout, dtype=dtype, virtual_batch_size=v, **kw)
    if bn.weight is not None:
        bn.weight[...], bn.bias[...] = make_params(rng, c, dtype)
    return bn


def _check_grads(got, want, dtype, what=""):
    """dx judged against its largest reference value, dweight/dbias against
    the size of their sums."""
    t = tol(dtype) * (10 if np.dtype(dtype) == np.float32 else 1)
    for name, a, b in zip(("dx", "dweight", "dbias"), got, want):
        scale = max(1.0, float(np.max(np.abs(b))))
        assert_close(a, b, rtol=t, atol=t * scale * 4, what=f"{what} {name}")


# --- forward, backward, running statistics ------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("rank", RANKS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_forward_backward_running(rng, layout, rank, dtype):
    C, N, v = 3, 12, 4
    bn = _layer(C, v, layout, dtype, rng)
    shape = make_shape(rank, layout, N, C)
    # each chunk its own offset, so that whole-batch statistics would show
    x = make_x(rng, shape, layout, dtype) + np.repeat(np.arange(N // v) * 2.0, v).reshape(
        (N,) + (1,) * (rank - 1)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    rmean, rvar = bn.running_mean.astype(np.float64), bn.running_var.astype(np.float64)
    y = bn(x)
    ry, means, vars_ = ref_forward(x, bn.weight, bn.bias, v, layout)
    assert y.shape == x.shape and y.dtype == x.dtype
    check_y(y, ry, dtype)
    want_mean, want_var = ref_running(rmean, rvar, x, v, layout, 0.1)
    t = 1e-12 if dtype == np.float64 else 1e-6
    np.testing.assert_allclose(bn.running_mean, want_mean, rtol=t, atol=t)
    np.testing.assert_allclose(bn.running_var, want_var, rtol=t, atol=t)
    assert bn.num_batches_tracked == 1
    dx = bn.backward(dy)
    assert dx.shape == x.shape and dx.dtype == x.dtype
    _check_grads((dx, bn.grad_weight, bn.grad_bias),
                 ref_backward(dy, x, bn.weight, v, layout), dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_cache_holds_per_chunk_statistics(rng, layout):
    x = make_x(rng, make_shape(4, layout, 6, 2), layout, np.float64)
    bn = _layer(2, 3, layout, np.float64, rng)
    bn(x)
    _, means, vars_ = ref_forward(x, None, None, 3, layout)
    cache = bn._cache
    assert cache.mean.shape == cache.var.shape == (2, 2)
    np.testing.assert_allclose(cache.mean, means, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cache.var, vars_, rtol=1e-12)
    assert "2 chunks of 3" in repr(cache)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_finite_differences(rng, layout):
    """Gradients of sum(dy * y) against central differences (float64)."""
    C, v = 2, 2
    shape = make_shape(3, layout, 4, C, (3,))
    bn = _layer(C, v, layout, np.float64, rng)
    x = make_x(rng, shape, layout, np.float64)
    dy = rng.standard_normal(shape)

    def loss(x_, w_=None, b_=None):
        probe = fastbn.BatchNorm(C, layout=layout, dtype=np.float64, virtual_batch_size=v)
        probe.weight[...] = bn.weight if w_ is None else w_
        probe.bias[...] = bn.bias if b_ is None else b_
        return float(np.sum(dy * probe(x_)))

    bn(x)
    dx = bn.backward(dy)
    h = 1e-6
    num = np.empty_like(x)
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += h
        xm[i] -= h
        num[i] = (loss(xp) - loss(xm)) / (2 * h)
    np.testing.assert_allclose(dx, num, rtol=1e-5, atol=1e-7)
    for name, grad in (("weight", bn.grad_weight), ("bias", bn.grad_bias)):
        num = np.empty(C)
        for c in range(C):
            p, m = getattr(bn, name).copy(), getattr(bn, name).copy()
            p[c] += h
            m[c] -= h
            args = ({"w_": p}, {"w_": m}) if name == "weight" else ({"b_": p}, {"b_": m})
            num[c] = (loss(x, **args[0]) - loss(x, **args[1])) / (2 * h)
        np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-8, err_msg=name)


@pytest.mark.parametrize("momentum", [0.3, None])
@pytest.mark.parametrize("unbiased", [True, False])
def test_running_statistics_over_calls(rng, momentum, unbiased):
    """Several calls with different chunk counts: momentum, the cumulative
    average (momentum=None) and the biased variance option."""
    C, v, layout = 3, 2, "NHWC"
    bn = fastbn.BatchNorm(C, layout=layout, dtype=np.float64, momentum=momentum,
                          virtual_batch_size=v, unbiased_running_var=unbiased)
    rmean, rvar = np.zeros(C), np.ones(C)
    for step, n in enumerate((2, 6, 4)):
        x = make_x(rng, make_shape(3, layout, n, C, (5,)), layout, np.float64,
                   loc=rng.uniform(-2, 2, C))
        bn(x)
        mom = 1.0 / (step + 1) if momentum is None else momentum
        rmean, rvar = ref_running(rmean, rvar, x, v, layout, mom, unbiased)
        np.testing.assert_allclose(bn.running_mean, rmean, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(bn.running_var, rvar, rtol=1e-12, atol=1e-12)
    assert bn.num_batches_tracked == 3


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("rank", [2, 4])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16],
                         ids=["f32", "f64", "f16"])
def test_one_chunk_is_plain_batchnorm(rng, layout, rank, dtype):
    """v == N: the same bits as BatchNorm without virtual_batch_size."""
    C, N = 3, 6
    ghost, plain = _layer(C, N, layout, dtype, rng), fastbn.BatchNorm(C, layout=layout, dtype=dtype)
    plain.load_state_dict(ghost.state_dict())
    x = make_x(rng, make_shape(rank, layout, N, C), layout, dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    np.testing.assert_array_equal(ghost(x), plain(x))
    np.testing.assert_array_equal(ghost.backward(dy), plain.backward(dy))
    for k, value in plain.state_dict().items():
        np.testing.assert_array_equal(ghost.state_dict()[k], value, err_msg=k)
    np.testing.assert_array_equal(ghost.grad_weight, plain.grad_weight)
    np.testing.assert_array_equal(ghost.grad_bias, plain.grad_bias)


def test_float16(rng):
    """float16 storage: each chunk computed in float32, rounded once."""
    C, v, layout = 4, 3, "NCHW"
    bn = _layer(C, v, layout, np.float16, rng)
    x = make_x(rng, make_shape(4, layout, 9, C), layout, np.float16)
    dy = rng.standard_normal(x.shape).astype(np.float16)
    y = bn(x)
    assert y.dtype == np.float16
    ry, _, _ = ref_forward(x, bn.weight, bn.bias, v, layout)
    assert_close(y, ry, rtol=2e-3, atol=2e-3 * np.abs(ry).max(), what="y")
    dx = bn.backward(dy)
    assert dx.dtype == bn.grad_weight.dtype == np.float16
    for name, a, b in zip(("dx", "dweight", "dbias"), (dx, bn.grad_weight, bn.grad_bias),
                          ref_backward(dy, x, bn.weight, v, layout)):
        assert_close(a, b, rtol=1e-2, atol=1e-2 * np.abs(b).max(), what=name)


@pytest.mark.parametrize("kind", ["fortran", "stepped", "other_physical", "readonly",
                                  "negative"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_memory_layouts(rng, kind, layout):
    C, v = 3, 2
    x = make_x(rng, make_shape(4, layout, 6, C), layout, np.float64)
    dy = rng.standard_normal(x.shape)
    bn = _layer(C, v, layout, np.float64, rng)
    xv = as_variant(x, kind, layout)
    y = bn(xv)
    dx = bn.backward(as_variant(dy, kind, layout))
    check_y(y, ref_forward(x, bn.weight, bn.bias, v, layout)[0], np.float64)
    _check_grads((dx, bn.grad_weight, bn.grad_bias),
                 ref_backward(dy, x, bn.weight, v, layout), np.float64, kind)


def test_input_grad_false(rng):
    C, v = 2, 2
    bn = _layer(C, v, "NCHW", np.float64, rng)
    x = make_x(rng, (4, C, 5), "NCHW", np.float64)
    dy = rng.standard_normal(x.shape)
    bn(x)
    assert bn.backward(dy, input_grad=False) is None
    _, dw, db = ref_backward(dy, x, bn.weight, v, "NCHW")
    np.testing.assert_allclose(bn.grad_weight, dw, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(bn.grad_bias, db, rtol=1e-10, atol=1e-12)


def test_affine_false_and_no_running_stats(rng):
    C, v = 3, 2
    bn = fastbn.BatchNorm(C, affine=False, track_running_stats=False, dtype=np.float64,
                          virtual_batch_size=v)
    x = make_x(rng, (6, C, 4), "NCHW", np.float64)
    dy = rng.standard_normal(x.shape)
    check_y(bn(x), ref_forward(x, None, None, v, "NCHW")[0], np.float64)
    assert bn.num_batches_tracked == 0 and bn.running_mean is None
    dx = bn.backward(dy)
    rdx, rdw, rdb = ref_backward(dy, x, None, v, "NCHW")
    np.testing.assert_allclose(dx, rdx, rtol=1e-10, atol=1e-12)
    assert bn.grad_weight is None and bn.grad_bias is None
    # eval without running statistics: the whole batch's statistics, as always
    bn.eval()
    check_y(bn(x), ref_forward(x, None, None, 6, "NCHW")[0], np.float64)


def test_eval_is_unchanged(rng):
    """Eval mode normalizes with the running statistics, for any N."""
    C = 3
    ghost = _layer(C, 4, "NCHW", np.float32, rng)
    ghost(make_x(rng, (8, C, 5), "NCHW", np.float32))
    plain = fastbn.BatchNorm(C)
    plain.load_state_dict(ghost.state_dict())
    ghost.eval(), plain.eval()
    state = ghost.state_dict()
    x = make_x(rng, (5, C, 5), "NCHW", np.float32)  # 5 % 4 != 0: fine in eval
    dy = rng.standard_normal(x.shape).astype(np.float32)
    np.testing.assert_array_equal(ghost(x), plain(x))
    np.testing.assert_array_equal(ghost.backward(dy), plain.backward(dy))
    np.testing.assert_array_equal(ghost.grad_weight, plain.grad_weight)
    for k, value in state.items():
        np.testing.assert_array_equal(ghost.state_dict()[k], value)


def test_state_dict_and_repr():
    bn = fastbn.BatchNorm(3, virtual_batch_size=8)
    assert set(bn.state_dict()) == set(fastbn.BatchNorm(3).state_dict())
    assert "virtual_batch_size=8" in repr(bn)
    assert bn.virtual_batch_size == 8
    assert fastbn.BatchNorm(3).virtual_batch_size is None


# --- non-finite batches and errors --------------------------------------------------------


def test_nonfinite_chunk_skips_the_update(rng):
    bn = _layer(2, 2, "NCHW", np.float32, rng)
    x = make_x(rng, (6, 2, 3), "NCHW", np.float32)
    x[4, 0, 1] = np.nan
    state = bn.state_dict()
    with pytest.warns(RuntimeWarning, match="not finite") as record:
        y = bn(x)
    assert record[0].filename == __file__
    for k, value in state.items():
        np.testing.assert_array_equal(bn.state_dict()[k], value)
    assert bn.num_batches_tracked == 0
    assert np.isfinite(y[:4]).all() and np.isnan(y[4:, 0]).all() and np.isfinite(y[4:, 1]).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bn(x[:4])
    assert bn.num_batches_tracked == 1


@pytest.mark.parametrize("value, error", [(0, ValueError), (-2, ValueError),
                                          (2.0, TypeError), (True, TypeError),
                                          ("4", TypeError), (np.float32(2), TypeError)])
def test_bad_virtual_batch_size(value, error):
    with pytest.raises(error, match="virtual_batch_size"):
        fastbn.BatchNorm(3, virtual_batch_size=value)


def test_numpy_int_accepted():
    bn = fastbn.BatchNorm(3, virtual_batch_size=np.int64(2))
    assert bn.virtual_batch_size == 2 and type(bn.virtual_batch_size) is int


def _assert_unchanged(bn, state, cache):
    for k, value in state.items():
        np.testing.assert_array_equal(bn.state_dict()[k], value, err_msg=k)
    assert bn._cache is cache


@pytest.mark.parametrize("shape, match", [
    ((6, 3, 4), "must divide the batch size"),     # 6 % 4
    ((2, 3, 4), "must divide the batch size"),     # N < v
    ((4, 3, 0), "non-empty"),
    ((0, 3, 4), "non-empty"),
    ((8, 4, 4), "expects 3 channels"),             # the layer's own check comes first
])
def test_errors_change_nothing(rng, shape, match):
    bn = _layer(3, 4, "NCHW", np.float32, rng)
    bn(make_x(rng, (8, 3, 4), "NCHW", np.float32))
    state, cache = bn.state_dict(), bn._cache
    with pytest.raises(ValueError, match=match):
        bn(np.ones(shape, np.float32))
    _assert_unchanged(bn, state, cache)


def test_one_value_per_channel_in_a_chunk():
    bn = fastbn.BatchNorm(3, virtual_batch_size=1)
    state = bn.state_dict()
    with pytest.raises(ValueError, match="virtual_batch_size=1 leaves 1 value per channel"):
        bn(np.ones((4, 3), np.float32))
    _assert_unchanged(bn, state, None)
    bn(np.random.default_rng(0).random((4, 3, 2)).astype(np.float32))  # 2 values: fine
    assert bn.num_batches_tracked == 1


def test_bad_dy(rng):
    bn = _layer(3, 2, "NCHW", np.float32, rng)
    bn(make_x(rng, (4, 3, 2), "NCHW", np.float32))
    with pytest.raises(ValueError, match="dy must have shape"):
        bn.backward(np.ones((4, 3, 3), np.float32))
    with pytest.raises(ValueError, match="dy must have shape"):
        bn.backward(np.ones((4, 3, 2), np.float64))
    with pytest.raises(TypeError, match="input_grad"):
        bn.backward(np.ones((4, 3, 2), np.float32), input_grad=1)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_fused_relu(rng, layout):
    """activation="relu": each chunk's ReLU(BN), the gradients of the
    composition, and the running statistics of the plain ghost layer."""
    C, v = 3, 2
    x = make_x(rng, make_shape(4, layout, 6, C), layout, np.float64)
    dy = rng.standard_normal(x.shape)
    relu = _layer(C, v, layout, np.float64, rng, activation="relu")
    plain = fastbn.BatchNorm(C, layout=layout, dtype=np.float64, virtual_batch_size=v)
    plain.load_state_dict(relu.state_dict())
    y, z = relu(x), plain(x)
    ry = ref_forward(x, relu.weight, relu.bias, v, layout)[0]
    check_y(y, np.maximum(ry, 0), np.float64)
    np.testing.assert_array_equal(y, np.maximum(z, 0))
    dx = relu.backward(dy)
    gated = np.where(z > 0, dy, 0.0)
    _check_grads((dx, relu.grad_weight, relu.grad_bias),
                 ref_backward(gated, x, relu.weight, v, layout), np.float64)
    for k, value in plain.state_dict().items():
        np.testing.assert_array_equal(relu.state_dict()[k], value, err_msg=k)
