"""Batch Renormalization (SPEC "Inference folding, fused activation, small
batches"): forward, r and d, running statistics and gradients against the
float64 reference of the paper's equations (reference_renorm.py), with r
and d clipped and not; eval is BatchNorm's eval; the layer's state dict;
errors that change nothing."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import fastbn
import reference_renorm as rr
from helpers import (DTYPES, LAYOUTS, RANKS, as_variant, assert_close, assert_message,
                     make_params, make_shape, make_x, tol, unchanged)
from reference import channel_axis

EPS = 1e-5


def _running(x, layout, case):
    """Running statistics that put r and d inside their bounds
    (``"inside"``), or that clip them at both ends (``"clipped"``, with
    rmax=2, dmax=1: r at 2 and 1/2, d at +1 and -1 on alternating channels)."""
    mu, var = rr.batch_moments(x.astype(np.float64), layout)
    C = mu.size
    if case == "inside":  # s_B / s in (0.8, 1.25), |d| < 0.5
        factor = np.linspace(0.7, 1.5, C)
        rv = var * factor
        rm = mu - 0.4 * np.sqrt(rv + EPS) * np.linspace(-1, 1, C)
    else:
        sign = np.where(np.arange(C) % 2 == 0, 1.0, -1.0)
        rv = np.where(sign > 0, var / 16, var * 16)  # s_B / s = 4 or 1/4
        rm = mu - sign * 3 * np.sqrt(rv + EPS)  # (mu_B - mu) / s = +-3
    return rm, rv


def _bounds(case):
    return (3.0, 5.0) if case == "inside" else (2.0, 1.0)


def _check_clipping(r, d, case, rmax, dmax):
    if case == "inside":
        assert np.all((r > 1 / rmax) & (r < rmax) & (r != 1.0)) and np.all(np.abs(d) < dmax)
    else:
        assert set(np.round(r, 12)) == {rmax, 1 / rmax} and set(np.round(d, 12)) == {dmax, -dmax}


@pytest.mark.parametrize("case", ["inside", "clipped"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("rank", RANKS)
def test_forward_backward_running_stats(rng, rank, layout, dtype, case):
    shape = make_shape(rank, layout, 6, 4)
    x = make_x(rng, shape, layout, dtype)
    C = shape[channel_axis(rank, layout)]
    w, b = make_params(rng, C, dtype)
    rm64, rv64 = _running(x, layout, case)
    rm, rv = rm64.astype(dtype), rv64.astype(dtype)
    rmax, dmax = _bounds(case)
    x64, w64, b64 = (a.astype(np.float64) for a in (x, w, b))
    y_ref, r_ref, d_ref, rm_ref, rv_ref = rr.forward(x64, w64, b64, rm, rv, EPS, rmax, dmax,
                                                     0.1, layout)
    _check_clipping(r_ref, d_ref, case, rmax, dmax)

    y, cache = fastbn.batch_renorm_forward(x, w, b, rm, rv, rmax=rmax, dmax=dmax, layout=layout)
    t = tol(dtype)
    assert y.dtype == dtype and y.shape == x.shape and cache.training
    assert_close(y, y_ref, rtol=t, atol=t * np.abs(y_ref).max(), what="y")
    assert_close(cache.r, r_ref, rtol=t, atol=0, what="r")
    assert_close(cache.d, d_ref, rtol=t, atol=t, what="d")
    mu, var = rr.batch_moments(x64, layout)
    assert_close(cache.mean, mu, rtol=t, atol=t * np.abs(x64).max(), what="mean")
    assert_close(cache.var, var, rtol=t * 10, atol=0, what="var")
    assert_close(rm, rm_ref, rtol=t, atol=t * np.abs(x64).max(), what="running_mean")
    assert_close(rv, rv_ref, rtol=t * 10, atol=0, what="running_var")

    dy = rng.standard_normal(shape).astype(dtype)
    dx, dw, db = fastbn.batch_renorm_backward(dy, cache)
    dx_ref, dw_ref, db_ref = rr.backward(dy.astype(np.float64), x64, w64, r_ref, d_ref, EPS,
                                         layout)
    g = np.abs(dy.astype(np.float64))
    assert dx.dtype == dw.dtype == db.dtype == dtype
    assert_close(dx, dx_ref, rtol=t, atol=10 * t * np.abs(dx_ref).max(), what="dx")
    assert_close(dw, dw_ref, rtol=t, atol=10 * t * g.sum() * (rmax + dmax) / C, what="dweight")
    assert_close(db, db_ref, rtol=t, atol=10 * t * g.sum() / C, what="dbias")


@pytest.mark.parametrize("case", ["inside", "clipped"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_finite_differences_with_r_and_d_frozen(rng, layout, case):
    """d/dx of sum(dy * y), r and d held at the values of the unperturbed
    batch, by central differences of the reference; fastbn's gradients,
    float64, agree."""
    shape = make_shape(4, layout, 3, 3, (2, 3))
    x = make_x(rng, shape, layout, np.float64)
    C = 3
    w, b = make_params(rng, C, np.float64)
    rm, rv = _running(x, layout, case)
    rmax, dmax = _bounds(case)
    r, d = rr.r_and_d(x, rm, rv, EPS, rmax, dmax, layout)
    dy = rng.standard_normal(shape)

    def loss(x_, w_=w, b_=b):
        return float(np.sum(dy * rr.forward_frozen(x_, w_, b_, r, d, EPS, layout)))

    h = 1e-6
    fd_dx = np.empty(shape)
    for i in np.ndindex(shape):
        e = np.zeros(shape)
        e[i] = h
        fd_dx[i] = (loss(x + e) - loss(x - e)) / (2 * h)
    fd_dw = np.array([(loss(x, w + h * np.eye(C)[c]) - loss(x, w - h * np.eye(C)[c])) / (2 * h)
                      for c in range(C)])
    fd_db = np.array([(loss(x, w, b + h * np.eye(C)[c]) - loss(x, w, b - h * np.eye(C)[c]))
                      / (2 * h) for c in range(C)])

    _, cache = fastbn.batch_renorm_forward(x, w, b, rm.copy(), rv.copy(), rmax=rmax, dmax=dmax,
                                           layout=layout)
    np.testing.assert_allclose(cache.r, r, rtol=1e-12)
    np.testing.assert_allclose(cache.d, d, rtol=1e-12, atol=1e-12)
    dx, dw, db = fastbn.batch_renorm_backward(dy, cache)
    np.testing.assert_allclose(dx, fd_dx, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dw, fd_dw, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(db, fd_db, rtol=1e-6, atol=1e-7)
    # the analytic reference agrees with its own finite differences
    np.testing.assert_allclose(rr.backward(dy, x, w, r, d, EPS, layout)[0], fd_dx,
                               rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_without_correction_is_batch_norm(rng, layout, dtype):
    """rmax=1, dmax=0 (r = 1, d = 0): BatchNorm's training forward,
    running statistics and backward."""
    shape = make_shape(3, layout, 5, 4)
    x = make_x(rng, shape, layout, dtype)
    w, b = make_params(rng, 4, dtype)
    rm1, rv1 = np.full(4, 0.3, dtype), np.full(4, 2.0, dtype)
    rm2, rv2 = rm1.copy(), rv1.copy()
    y1, c1 = fastbn.batch_renorm_forward(x, w, b, rm1, rv1, rmax=1.0, dmax=0.0, layout=layout)
    y2, c2 = fastbn.batch_norm_forward(x, w, b, running_mean=rm2, running_var=rv2,
                                       layout=layout)
    t = tol(dtype)
    assert_close(y1, y2, rtol=t, atol=t * 4, what="y")
    np.testing.assert_array_equal(rm1, rm2)
    np.testing.assert_array_equal(rv1, rv2)
    dy = rng.standard_normal(shape).astype(dtype)
    for g1, g2 in zip(fastbn.batch_renorm_backward(dy, c1), fastbn.batch_norm_backward(dy, c2)):
        assert_close(g1, g2, rtol=t, atol=t * 10 * float(np.abs(g2).max()))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_eval_is_batch_norm_eval(rng, layout):
    shape = make_shape(4, layout, 4, 3)
    x = make_x(rng, shape, layout, np.float32)
    w, b = make_params(rng, 3, np.float32)
    rm, rv = np.array([0.5, -1, 2], np.float32), np.array([0.5, 1, 3], np.float32)
    ro_rm, ro_rv = rm.copy(), rv.copy()
    ro_rm.setflags(write=False)
    ro_rv.setflags(write=False)
    y1, c1 = fastbn.batch_renorm_forward(x, w, b, ro_rm, ro_rv, training=False, layout=layout)
    y2, c2 = fastbn.batch_norm_forward(x, w, b, training=False, running_mean=rm,
                                       running_var=rv, layout=layout)
    np.testing.assert_array_equal(y1, y2)
    assert not c1.training
    np.testing.assert_array_equal(c1.r, 1.0)
    np.testing.assert_array_equal(c1.d, 0.0)
    dy = rng.standard_normal(shape).astype(np.float32)
    for g1, g2 in zip(fastbn.batch_renorm_backward(dy, c1), fastbn.batch_norm_backward(dy, c2)):
        np.testing.assert_array_equal(g1, g2)

    brn, bn = fastbn.BatchRenorm(3, layout=layout), fastbn.BatchNorm(3, layout=layout)
    for layer in (brn, bn):
        layer.load_state_dict({"weight": w, "bias": b, "running_mean": rm, "running_var": rv,
                               "num_batches_tracked": np.array(7)})
        layer.eval()
    np.testing.assert_array_equal(brn(x), bn(x))
    np.testing.assert_array_equal(brn.backward(dy), bn.backward(dy))
    np.testing.assert_array_equal(brn.grad_weight, bn.grad_weight)
    np.testing.assert_array_equal(brn.grad_bias, bn.grad_bias)
    assert brn.num_batches_tracked == 7


@pytest.mark.parametrize("kind", ["fortran", "stepped", "negative", "other_physical",
                                  "readonly", "broadcast"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_strided_inputs_and_out(rng, layout, kind):
    shape = make_shape(4, layout, 4, 3)
    x0 = make_x(rng, shape, layout, np.float64)
    x = as_variant(x0, kind, layout)
    w, b = make_params(rng, 3, np.float64)
    rm, rv = _running(np.ascontiguousarray(x), layout, "clipped")
    y_ref, r, d, rm_ref, rv_ref = rr.forward(x, w, b, rm, rv, EPS, 2.0, 1.0, 0.1, layout)
    out = np.full(shape, np.nan)
    y, cache = fastbn.batch_renorm_forward(x, w, b, rm, rv, rmax=2.0, dmax=1.0, layout=layout,
                                           out=out)
    assert y is out
    assert_close(y, y_ref, rtol=1e-10, atol=1e-10 * np.abs(y_ref).max(), what="y")
    assert_close(rv, rv_ref, rtol=1e-10, atol=0, what="running_var")
    dy = as_variant(rng.standard_normal(shape), kind, layout)
    dx_out = np.empty(shape)
    dx, dw, db = fastbn.batch_renorm_backward(dy, cache, out=dx_out)
    assert dx is dx_out
    dx_ref, dw_ref, db_ref = rr.backward(dy, x, w, r, d, EPS, layout)
    assert_close(dx, dx_ref, rtol=1e-9, atol=1e-9 * np.abs(dx_ref).max(), what="dx")
    assert_close(dw, dw_ref, rtol=1e-9, atol=1e-9 * np.abs(dy).sum(), what="dweight")
    none, dw2, db2 = fastbn.batch_renorm_backward(dy, cache, input_grad=False)
    assert none is None
    np.testing.assert_array_equal(dw2, dw)
    np.testing.assert_array_equal(db2, db)


def test_broadcastable_parameters_and_no_affine(rng):
    """weight/bias/running statistics of shape (1, C, 1) like BatchNorm's,
    None weight and bias as ones and zeros."""
    x = make_x(rng, (5, 3, 4), "NCHW", np.float64)
    rm, rv = _running(x, "NCHW", "clipped")
    y_ref, r, d, rm_ref, rv_ref = rr.forward(x, None, None, rm, rv, EPS, 2.0, 1.0, 0.1, "NCHW")
    rm_b, rv_b = rm.reshape(1, 3, 1).copy(), rv.reshape(1, 3, 1).copy()
    ones = np.ones((1, 3, 1))
    y1, _ = fastbn.batch_renorm_forward(x, None, None, rm.copy(), rv.copy(), rmax=2.0,
                                        dmax=1.0)
    y2, _ = fastbn.batch_renorm_forward(x, ones, ones * 0, rm_b, rv_b, rmax=2.0, dmax=1.0)
    np.testing.assert_allclose(y1, y_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_allclose(rm_b.ravel(), rm_ref, rtol=1e-12)
    np.testing.assert_allclose(rv_b.ravel(), rv_ref, rtol=1e-12)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_float16(rng, layout):
    """float16 stored, computed in float32, each result rounded once."""
    shape = make_shape(4, layout, 6, 3)
    x = (rng.standard_normal(shape) * 2 + 1).astype(np.float16)
    x64 = x.astype(np.float64)
    w, b = (rng.uniform(0.5, 2, 3).astype(np.float16), rng.uniform(-1, 1, 3).astype(np.float16))
    rm64, rv64 = _running(x64, layout, "clipped")
    rm, rv = rm64.astype(np.float16), rv64.astype(np.float16)
    y_ref, r, d, _, _ = rr.forward(x64, w, b, rm, rv, EPS, 2.0, 1.0, 0.1, layout)
    y, cache = fastbn.batch_renorm_forward(x, w, b, rm, rv, rmax=2.0, dmax=1.0, layout=layout)
    assert y.dtype == np.float16
    ulp = np.spacing(np.abs(y_ref).astype(np.float16)).astype(np.float64)
    assert np.max(np.abs(y - y_ref) / ulp) <= 1.0
    dy = rng.standard_normal(shape).astype(np.float16)
    dx, dw, db = fastbn.batch_renorm_backward(dy, cache)
    for got, want in zip((dx, dw, db), rr.backward(dy.astype(np.float64), x64, w, r, d, EPS,
                                                    layout)):
        assert got.dtype == np.float16
        ulp = np.spacing(np.abs(want).astype(np.float16)).astype(np.float64)
        assert np.max(np.abs(got - want) / ulp) <= 1.0
    out = np.empty_like(x)
    assert fastbn.batch_renorm_backward(dy, cache, out=out)[0] is out
    np.testing.assert_array_equal(out, dx)
    with pytest.raises(ValueError, match="overlap"):
        fastbn.batch_renorm_backward(dy, cache, out=dy)
    with pytest.raises(ValueError, match="dy"):
        fastbn.batch_renorm_backward(dy.astype(np.float32), cache)
    layer = fastbn.BatchRenorm(3, layout=layout, dtype=np.float16)
    assert layer(x).dtype == layer.backward(dy).dtype == layer.grad_weight.dtype == np.float16


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layer_matches_reference_and_functional(rng, layout):
    C = 3
    brn = fastbn.BatchRenorm(C, rmax=2.0, dmax=1.0, momentum=0.2, layout=layout,
                             dtype=np.float64)
    w, b = make_params(rng, C, np.float64)
    brn.weight[...], brn.bias[...] = w, b
    rm, rv = brn.running_mean.copy(), brn.running_var.copy()
    for step in range(3):
        x = make_x(rng, make_shape(4, layout, 2, C), layout, np.float64)
        y_ref, r, d, rm, rv = rr.forward(x, w, b, rm, rv, EPS, 2.0, 1.0, 0.2, layout)
        y = brn(x)
        np.testing.assert_allclose(y, y_ref, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(brn.running_mean, rm, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(brn.running_var, rv, rtol=1e-12)
        assert brn.num_batches_tracked == step + 1
        dy = rng.standard_normal(x.shape)
        dx = brn.backward(dy)
        dx_ref, dw_ref, db_ref = rr.backward(dy, x, w, r, d, EPS, layout)
        np.testing.assert_allclose(dx, dx_ref, rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(brn.grad_weight, dw_ref, rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(brn.grad_bias, db_ref, rtol=1e-9, atol=1e-10)
    # momentum=None: a cumulative average, as BatchNorm
    cum, bn = fastbn.BatchRenorm(C, momentum=None, layout=layout), fastbn.BatchNorm(
        C, momentum=None, layout=layout)
    for _ in range(3):
        x = make_x(rng, make_shape(3, layout, 4, C), layout, np.float32)
        cum(x)
        bn(x)
    np.testing.assert_allclose(cum.running_mean, bn.running_mean, rtol=1e-6)
    np.testing.assert_allclose(cum.running_var, bn.running_var, rtol=1e-6)
    # rmax and dmax may be changed between calls (the paper's schedule)
    brn.rmax, brn.dmax = 1.0, 0.0
    x = make_x(rng, make_shape(4, layout, 2, C), layout, np.float64)
    y_bn, _ = fastbn.batch_norm_forward(x, w, b, layout=layout)
    np.testing.assert_allclose(brn(x), y_bn, rtol=1e-12, atol=1e-12)


def test_layer_state_dict(rng):
    brn = fastbn.BatchRenorm(4, dtype=np.float64)
    assert list(brn.state_dict()) == list(fastbn.BatchNorm(4).state_dict())
    brn(rng.standard_normal((3, 4, 5)))
    brn.weight *= 2
    state = brn.state_dict()
    other = fastbn.BatchRenorm(4, dtype=np.float64)
    other.load_state_dict(state)
    unchanged(state, other.state_dict())
    bn = fastbn.BatchNorm(4, dtype=np.float64)
    bn.load_state_dict(state)  # interchangeable with BatchNorm's
    x = rng.standard_normal((3, 4, 5))
    np.testing.assert_array_equal(other.eval()(x), bn.eval()(x))
    assert "BatchRenorm(4, rmax=3.0, dmax=5.0" in repr(brn)
    assert brn.parameters().keys() == {"weight", "bias"}
    assert fastbn.BatchRenorm(4, affine=False).parameters() == {}


def _snapshot(layer):
    return {**layer.state_dict(), "cache": id(layer._cache)}


@pytest.mark.parametrize("kwargs, words", [
    ({"rmax": 0.5}, ("rmax", ">= 1", "0.5")),
    ({"rmax": float("nan")}, ("rmax", ">= 1")),
    ({"dmax": -1.0}, ("dmax", ">= 0", "-1")),
])
def test_bad_limits_change_nothing(rng, kwargs, words):
    with pytest.raises(ValueError) as e:
        fastbn.BatchRenorm(3, **kwargs)
    assert_message(e, *words)
    x = rng.standard_normal((4, 3))
    rm, rv, out = np.zeros(3), np.ones(3), np.full((4, 3), 7.0)
    with pytest.raises(ValueError) as e:
        fastbn.batch_renorm_forward(x, None, None, rm, rv, out=out, **kwargs)
    assert_message(e, *words)
    unchanged({"rm": np.zeros(3), "rv": np.ones(3), "out": np.full((4, 3), 7.0)},
              {"rm": rm, "rv": rv, "out": out})
    layer = fastbn.BatchRenorm(3, dtype=np.float64)
    layer(x)
    before = _snapshot(layer)
    for k, v in kwargs.items():
        setattr(layer, k, v)
    with pytest.raises(ValueError):
        layer(x + 1)
    unchanged(before, _snapshot(layer))
    with pytest.raises(TypeError):
        fastbn.BatchRenorm(3, rmax="2")


def test_errors_change_nothing(rng):
    x = rng.standard_normal((4, 3, 5))
    rm, rv, out = np.zeros(3), np.ones(3), np.full(x.shape, 7.0)
    keep = {"rm": rm.copy(), "rv": rv.copy(), "out": out.copy()}
    calls = [
        (lambda: fastbn.batch_renorm_forward(x, None, None, None, rv), ("running_mean", "None")),
        (lambda: fastbn.batch_renorm_forward(x, None, None, rm, None, training=False),
         ("running_var",)),
        (lambda: fastbn.batch_renorm_forward(x, np.ones(4), None, rm, rv, out=out),
         ("weight", "(3,)")),
        (lambda: fastbn.batch_renorm_forward(x, None, None, np.zeros(2), rv, out=out),
         ("running_mean", "(3,)")),
        (lambda: fastbn.batch_renorm_forward(x, None, None, rm, rv, layout="NHWC", out=out),
         ("(5,)", "running_mean")),
        (lambda: fastbn.batch_renorm_forward(x[:1, :, :1], None, None, rm, rv),
         ("more than 1 value",)),
        (lambda: fastbn.batch_renorm_forward(x, None, None, rm, rv, out=out[:2]), ("out",)),
        (lambda: fastbn.batch_renorm_forward(x, None, None, rm, rv, eps=-1.0, out=out),
         ("eps",)),
        (lambda: fastbn.batch_renorm_forward(x, None, None, rm, rv, momentum=2, out=out),
         ("momentum",)),
        (lambda: fastbn.batch_renorm_forward(x[0, 0], None, None, rm, rv), ("rank",)),
    ]
    for call, words in calls:
        with pytest.raises(ValueError) as e:
            call()
        assert_message(e, *words)
        unchanged(keep, {"rm": rm, "rv": rv, "out": out})
    ro = rm.copy()
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="writable"):
        fastbn.batch_renorm_forward(x, None, None, ro, rv)
    with pytest.raises(TypeError, match="int64"):
        fastbn.batch_renorm_forward(x.astype(np.int64), None, None, rm, rv)
    unchanged(keep, {"rm": rm, "rv": rv, "out": out})

    y, cache = fastbn.batch_renorm_forward(x, None, None, rm, rv)
    dx_out = np.full(x.shape, 7.0)
    with pytest.raises(ValueError, match="dy"):
        fastbn.batch_renorm_backward(np.ones((4, 3, 4)), cache, out=dx_out)
    with pytest.raises(ValueError, match="out"):
        fastbn.batch_renorm_backward(np.ones(x.shape), cache, out=dx_out[:2])
    np.testing.assert_array_equal(dx_out, 7.0)
    with pytest.raises(TypeError, match="BatchRenormCache"):
        fastbn.batch_renorm_backward(np.ones(x.shape), fastbn.batch_norm_forward(x)[1])
    with pytest.raises(TypeError, match="BatchRenormCache"):
        fastbn.batch_norm_backward(np.ones(x.shape), cache)

    layer = fastbn.BatchRenorm(3, dtype=np.float64)
    with pytest.raises(RuntimeError):
        layer.backward(np.ones(x.shape))
    layer(x)
    before = _snapshot(layer)
    with pytest.raises(ValueError) as e:
        layer(np.ones((4, 5, 3)))
    assert_message(e, "num_features=3", "NHWC")
    with pytest.raises(ValueError):
        layer.backward(np.ones((4, 3, 4)))
    with pytest.raises(ValueError, match="keys"):
        layer.load_state_dict({"weight": np.ones(3)})
    unchanged(before, _snapshot(layer))


def test_non_finite_batch_leaves_running_stats(rng):
    x = rng.standard_normal((4, 3, 5))
    x[1, 2, 3] = np.nan
    layer = fastbn.BatchRenorm(3, dtype=np.float64)
    before = layer.state_dict()
    with pytest.warns(RuntimeWarning, match="not finite") as record:
        y = layer(x)
    assert record[0].filename == __file__
    unchanged(before, layer.state_dict())
    assert np.isnan(y[:, 2]).all() and np.isfinite(y[:, :2]).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer(np.nan_to_num(x))
    assert layer.num_batches_tracked == 1


def test_eps_zero_and_constant_channel(rng):
    """A constant channel normalizes to d * weight + bias; eps=0 with a zero
    running variance gives the clip bounds, not NaN."""
    x = rng.standard_normal((6, 2, 3))
    x[:, 1] = 4.0
    rm, rv = np.array([0.0, 1.0]), np.array([1.0, 1.0])
    y, cache = fastbn.batch_renorm_forward(x, np.full(2, 2.0), np.full(2, 0.5), rm, rv,
                                           rmax=2.0, dmax=1.0)
    assert cache.d[1] == 1.0
    np.testing.assert_array_equal(y[:, 1], 2.0 * 1.0 + 0.5)
    x0 = np.array([[1.0, 2.0], [3.0, 2.0]])
    _, cache = fastbn.batch_renorm_forward(x0, None, None, np.array([2.0, 2.0]),
                                           np.zeros(2), eps=0.0, rmax=2.0, dmax=1.0)
    np.testing.assert_array_equal(cache.r, [2.0, 1.0])
    np.testing.assert_array_equal(cache.d, [0.0, 0.0])
