"""Functional API against the float64 reference: every rank x layout x dtype
x mode, both kernel sizes (serial and parallel), every memory layout."""

from __future__ import annotations

import gc

import numpy as np
import pytest

import fastbn
import reference as ref
from helpers import (
    DTYPES,
    LARGE_DIMS,
    LAYOUTS,
    RANKS,
    VARIANTS,
    as_variant,
    channel_shape,
    check_grads,
    check_stats,
    check_y,
    data_scale,
    make_params,
    make_running,
    make_shape,
    make_x,
)

EPS = 1e-5


def _shape(rank, layout, size):
    if size == "small":
        return make_shape(rank, layout, 4, 3)
    N, C, spatial = LARGE_DIMS[rank]
    return make_shape(rank, layout, N, C, spatial)


@pytest.mark.parametrize("size", ["small", "large"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("rank", RANKS)
def test_batch_stats_parity(rng, rank, layout, dtype, size):
    x0 = make_x(rng, _shape(rank, layout, size), layout, dtype)
    for kind in VARIANTS:
        x = as_variant(x0, kind, layout)
        mean, var = fastbn.batch_stats(x, layout=layout)
        assert mean.dtype == dtype and var.dtype == dtype
        rmean, rvar = ref.stats(x, layout)
        check_stats(mean, var, rmean, rvar, dtype, data_scale(x), what=kind)


@pytest.mark.parametrize("size", ["small", "large"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("rank", RANKS)
def test_forward_backward_parity(rng, rank, layout, dtype, training, size):
    """y, running statistics, dx, dweight and dbias match the reference for
    every memory layout of x (and of dy), with and without ``out=``."""
    shape = _shape(rank, layout, size)
    C = ref.num_channels(shape, layout)
    m = int(np.prod(shape)) // C
    x0 = make_x(rng, shape, layout, dtype)
    dy0 = rng.standard_normal(shape).astype(dtype)
    weight, bias = make_params(rng, C, dtype)
    rm0, rv0 = make_running(rng, C, dtype)
    for i, kind in enumerate(VARIANTS):
        x = as_variant(x0, kind, layout)
        dy = as_variant(dy0, VARIANTS[(i + 3) % len(VARIANTS)], layout)
        x_before, dy_before = x.copy(), dy.copy()
        rm, rv = rm0.copy(), rv0.copy()
        use_out = i % 2 == 1
        out = np.full(shape, 7.0, dtype=dtype) if use_out else None
        y, cache = fastbn.batch_norm_forward(
            x, weight, bias, training=training, running_mean=rm, running_var=rv,
            momentum=0.1, eps=EPS, layout=layout, out=out)
        assert y.shape == shape and y.dtype == dtype
        if training:
            ref_y, mean, var = ref.forward_train(x, weight, bias, EPS, layout)
            ref_rm, ref_rv = ref.update_running(rm0, rv0, mean, var, m, 0.1)
            t = 1e-12 if dtype == np.float64 else 1e-6
            np.testing.assert_allclose(rm, ref_rm, rtol=t, atol=t * data_scale(x))
            np.testing.assert_allclose(rv, ref_rv, rtol=max(t, 1e-4 * (dtype == np.float32)),
                                       atol=t * data_scale(x) ** 2)
        else:
            ref_y = ref.forward_eval(x, weight, bias, rm0, rv0, EPS, layout)
            mean, var = rm0.astype(np.float64), rv0.astype(np.float64)
            np.testing.assert_array_equal(rm, rm0)  # eval never updates
            np.testing.assert_array_equal(rv, rv0)
        check_y(y, ref_y, dtype, what=f"{kind} y")
        if use_out:
            check_y(out, ref_y, dtype, what=f"{kind} out")
        grads = fastbn.batch_norm_backward(dy, cache)
        if training:
            rgrads = ref.backward_train(dy, x, weight, EPS, layout)
        else:
            rgrads = ref.backward_eval(dy, x, weight, rm0, rv0, EPS, layout)
        assert grads[0].shape == shape and grads[0].dtype == dtype
        assert grads[1].shape == (C,) and grads[2].shape == (C,)
        check_grads(grads, rgrads, dy, x, weight, mean, var, EPS, dtype, layout,
                    what=f"{kind}")
        # inputs are never written
        np.testing.assert_array_equal(x, x_before)
        np.testing.assert_array_equal(dy, dy_before)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_no_affine(rng, layout, dtype, training):
    """weight=None means ones, bias=None zeros; dweight/dbias still returned."""
    shape = make_shape(4, layout, 3, 5)
    x = make_x(rng, shape, layout, dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    rm, rv = make_running(rng, 5, dtype)
    y, cache = fastbn.batch_norm_forward(
        x, training=training, running_mean=rm.copy(), running_var=rv.copy(),
        layout=layout)
    ones, zeros = np.ones(5), np.zeros(5)
    if training:
        ry, mean, var = ref.forward_train(x, None, None, EPS, layout)
        rg = ref.backward_train(dy, x, None, EPS, layout)
    else:
        ry = ref.forward_eval(x, None, None, rm, rv, EPS, layout)
        mean, var = rm, rv
        rg = ref.backward_eval(dy, x, None, rm, rv, EPS, layout)
    check_y(y, ry, dtype)
    # the same as explicit ones/zeros
    y2, _ = fastbn.batch_norm_forward(
        x, ones.astype(dtype), zeros.astype(dtype), training=training,
        running_mean=rm.copy(), running_var=rv.copy(), layout=layout)
    check_y(y2, ry, dtype)
    grads = fastbn.batch_norm_backward(dy, cache)
    assert grads[1].shape == (5,) and grads[2].shape == (5,)
    check_grads(grads, rg, dy, x, None, mean, var, EPS, dtype, layout)
    # weight only / bias only
    w = rng.uniform(0.5, 2, 5).astype(dtype)
    b = rng.uniform(-1, 1, 5).astype(dtype)
    for ww, bb in ((w, None), (None, b)):
        y3, _ = fastbn.batch_norm_forward(
            x, ww, bb, training=training, running_mean=rm.copy(),
            running_var=rv.copy(), layout=layout)
        if training:
            r3 = ref.forward_train(x, ww, bb, EPS, layout)[0]
        else:
            r3 = ref.forward_eval(x, ww, bb, rm, rv, EPS, layout)
        check_y(y3, r3, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_training_without_running_stats(rng, layout, dtype):
    shape = make_shape(3, layout, 6, 4)
    x = make_x(rng, shape, layout, dtype)
    w, b = make_params(rng, 4, dtype)
    y, cache = fastbn.batch_norm_forward(x, w, b, training=True, layout=layout)
    check_y(y, ref.forward_train(x, w, b, EPS, layout)[0], dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    _, mean, var = ref.forward_train(x, w, b, EPS, layout)
    check_grads(fastbn.batch_norm_backward(dy, cache),
                ref.backward_train(dy, x, w, EPS, layout),
                dy, x, w, mean, var, EPS, dtype, layout)


@pytest.mark.parametrize("momentum", [0.0, 0.3, 1.0])
def test_running_stats_momentum(rng, momentum):
    shape = (5, 3, 4, 2)
    x = make_x(rng, shape, "NCHW", np.float64)
    rm0, rv0 = make_running(rng, 3, np.float64)
    rm, rv = rm0.copy(), rv0.copy()
    fastbn.batch_norm_forward(x, running_mean=rm, running_var=rv, momentum=momentum)
    mean, var = ref.stats(x)
    erm, erv = ref.update_running(rm0, rv0, mean, var, 40, momentum)
    np.testing.assert_allclose(rm, erm, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(rv, erv, rtol=1e-12, atol=1e-14)
    if momentum == 0.0:
        np.testing.assert_array_equal(rm, rm0)
        np.testing.assert_array_equal(rv, rv0)


@pytest.mark.parametrize("xdtype", DTYPES, ids=["x32", "x64"])
@pytest.mark.parametrize("pdtype", DTYPES, ids=["p32", "p64"])
def test_mixed_parameter_dtypes(rng, xdtype, pdtype):
    """Parameters and running stats of another float dtype are cast to x's
    dtype; output has x's dtype; running stats keep their own dtype and are
    updated in place."""
    shape = (6, 3, 5)
    x = make_x(rng, shape, "NCHW", xdtype)
    w, b = make_params(rng, 3, pdtype)
    rm, rv = make_running(rng, 3, pdtype)
    rm0, rv0 = rm.copy(), rv.copy()
    y, cache = fastbn.batch_norm_forward(x, w, b, running_mean=rm, running_var=rv)
    assert y.dtype == xdtype
    assert rm.dtype == pdtype and rv.dtype == pdtype
    wc, bc = w.astype(xdtype), b.astype(xdtype)
    ry, mean, var = ref.forward_train(x, wc, bc, EPS, "NCHW")
    check_y(y, ry, xdtype)
    erm, erv = ref.update_running(rm0, rv0, mean, var, 30, 0.1)
    t = 1e-12 if (xdtype == np.float64 and pdtype == np.float64) else 1e-6
    np.testing.assert_allclose(rm, erm, rtol=t, atol=t)
    np.testing.assert_allclose(rv, erv, rtol=t, atol=t)
    dy = rng.standard_normal(shape).astype(xdtype)
    dx, dw, db = fastbn.batch_norm_backward(dy, cache)
    assert dx.dtype == xdtype
    check_grads((dx, dw, db), ref.backward_train(dy, x, wc, EPS, "NCHW"),
                dy, x, wc, mean, var, EPS, xdtype, "NCHW")
    # eval with running stats of the other dtype
    ye, _ = fastbn.batch_norm_forward(x, w, b, training=False, running_mean=rm0,
                                      running_var=rv0)
    assert ye.dtype == xdtype
    check_y(ye, ref.forward_eval(x, wc, bc, rm0.astype(xdtype),
                                 rv0.astype(xdtype), EPS, "NCHW"), xdtype)


def test_array_like_inputs(rng):
    """Lists are array-like inputs (x, weight, bias; running stats in eval)."""
    x = make_x(rng, (4, 3), "NCHW", np.float64)
    w, b = [1.5, 0.5, 2.0], [0.0, 1.0, -1.0]
    y, cache = fastbn.batch_norm_forward(x.tolist(), w, b)
    assert y.dtype == np.float64
    check_y(y, ref.forward_train(x, w, b)[0], np.float64)
    ye, _ = fastbn.batch_norm_forward(x.tolist(), w, b, training=False,
                                      running_mean=[0.0, 1.0, 2.0],
                                      running_var=[1.0, 2.0, 3.0])
    check_y(ye, ref.forward_eval(x, w, b, [0, 1, 2], [1, 2, 3]), np.float64)
    mean, var = fastbn.batch_stats(x.tolist())
    check_stats(mean, var, *ref.stats(x), np.float64, data_scale(x))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_eval_single_value_per_channel(rng, layout):
    """Eval needs no batch statistics: one value per channel is fine."""
    x = make_x(rng, make_shape(4, layout, 1, 3, (1, 1)), layout, np.float32)
    rm, rv = make_running(rng, 3, np.float32)
    y, cache = fastbn.batch_norm_forward(x, training=False, running_mean=rm,
                                         running_var=rv, layout=layout)
    check_y(y, ref.forward_eval(x, None, None, rm, rv, EPS, layout), np.float32)
    dy = np.ones_like(x)
    dx, dw, db = fastbn.batch_norm_backward(dy, cache)
    rdx, rdw, rdb = ref.backward_eval(dy, x, None, rm, rv, EPS, layout)
    np.testing.assert_allclose(dx, rdx, rtol=1e-6)
    np.testing.assert_allclose(db, rdb, rtol=1e-6)


def test_constant_channel(rng):
    """Zero variance: y is the bias, dx is finite."""
    x = make_x(rng, (8, 3, 4), "NCHW", np.float32)
    x[:, 1, :] = 12.5
    b = np.array([0.0, 0.75, 0.0], np.float32)
    mean, var = fastbn.batch_stats(x)
    check_stats(mean, var, *ref.stats(x), np.float32, data_scale(x))
    y, cache = fastbn.batch_norm_forward(x, None, b)
    np.testing.assert_allclose(y[:, 1, :], 0.75, atol=1e-6)
    dx, dw, db = fastbn.batch_norm_backward(np.ones_like(x), cache)
    assert np.isfinite(dx).all()


@pytest.mark.parametrize("eps", [1e-3, 0.5])
def test_eps_is_used(rng, eps):
    x = make_x(rng, (5, 2, 3), "NCHW", np.float64)
    y, cache = fastbn.batch_norm_forward(x, eps=eps)
    check_y(y, ref.forward_train(x, eps=eps)[0], np.float64)
    dy = rng.standard_normal(x.shape)
    _, mean, var = ref.forward_train(x, eps=eps)
    check_grads(fastbn.batch_norm_backward(dy, cache),
                ref.backward_train(dy, x, None, eps), dy, x, None, mean, var,
                eps, np.float64, "NCHW")
    rm, rv = np.zeros(2), np.full(2, 0.25)
    ye, _ = fastbn.batch_norm_forward(x, training=False, running_mean=rm,
                                      running_var=rv, eps=eps)
    check_y(ye, ref.forward_eval(x, None, None, rm, rv, eps), np.float64)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_out_strided_and_other_order(rng, layout):
    """`out` may be any writable array of x's shape and dtype."""
    shape = make_shape(4, layout, 3, 4, (5, 6))
    x = make_x(rng, shape, layout, np.float64)
    ry = ref.forward_train(x, layout=layout)[0]
    big = np.full(tuple(2 * s for s in shape), 9.0)
    outs = [np.empty(shape, order="F"), big[::2, ::2, ::2, ::2],
            as_variant(np.empty(shape), "other_physical", layout)]
    for out in outs:
        y, _ = fastbn.batch_norm_forward(x, layout=layout, out=out)
        check_y(out, ry, np.float64)
        check_y(y, ry, np.float64)
    # the gaps of the strided out were not touched
    mask = np.ones(big.shape, bool)
    mask[::2, ::2, ::2, ::2] = False
    assert (big[mask] == 9.0).all()


def test_backward_uses_its_own_cache(rng):
    """Caches are independent: an older cache still gives its gradients."""
    x1 = make_x(rng, (6, 3), "NCHW", np.float64)
    x2 = make_x(rng, (6, 3), "NCHW", np.float64) * 3
    dy = rng.standard_normal((6, 3))
    _, c1 = fastbn.batch_norm_forward(x1)
    _, c2 = fastbn.batch_norm_forward(x2)
    g1 = fastbn.batch_norm_backward(dy, c1)
    _, mean, var = ref.forward_train(x1)
    check_grads(g1, ref.backward_train(dy, x1), dy, x1, None, mean, var, EPS,
                np.float64, "NCHW")


def _arrays_reachable(obj, limit=10000):
    """ndarrays reachable from ``obj`` through containers and instances."""
    import types

    seen, stack, found = set(), [obj], []
    skip = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType,
            types.MethodType, str, bytes)
    while stack and len(seen) < limit:
        o = stack.pop()
        if id(o) in seen or isinstance(o, skip):
            continue
        seen.add(id(o))
        if isinstance(o, np.ndarray):
            found.append(o)
            continue
        stack.extend(gc.get_referents(o))
    return found


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_cache_is_small(rng, training):
    """The cache holds nothing larger than O(C) beyond references to x."""
    shape = (64, 3, 16, 16)
    x = make_x(rng, shape, "NCHW", np.float32)
    rm, rv = make_running(rng, 3, np.float32)
    y, cache = fastbn.batch_norm_forward(x, training=training, running_mean=rm,
                                         running_var=rv)
    arrays = _arrays_reachable(cache)
    assert any(np.shares_memory(a, x) for a in arrays)  # it does hold x
    for a in arrays:
        if np.shares_memory(a, x):
            continue
        assert not np.shares_memory(a, y), "cache keeps y alive"
        assert a.nbytes <= 64 * 3 * 8, f"cache holds an array of shape {a.shape}"


def test_float16_parameters_and_running_stats(rng):
    """float16 parameters and running statistics (no kernel dtype) are cast;
    the running statistics are updated in place and stay float16."""
    x = make_x(rng, (6, 3, 5), "NCHW", np.float32)
    w, b = make_params(rng, 3, np.float16)
    rm, rv = make_running(rng, 3, np.float16)
    rm0, rv0 = rm.copy(), rv.copy()
    y, _ = fastbn.batch_norm_forward(x, w, b, running_mean=rm, running_var=rv)
    ry, mean, var = ref.forward_train(x, w.astype(np.float32), b.astype(np.float32), EPS, "NCHW")
    check_y(y, ry, np.float32)
    erm, erv = ref.update_running(rm0.astype(np.float64), rv0.astype(np.float64), mean, var, 30, 0.1)
    assert rm.dtype == rv.dtype == np.float16
    np.testing.assert_allclose(rm, erm, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(rv, erv, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("size", ["small", "large"])
def test_backward_input_grad_and_out(rng, layout, training, size):
    """input_grad=False: dx is None, dweight/dbias as with dx, nothing of
    x's size written (the fused path is not taken for it); out receives dx."""
    spatial = (3, 4) if size == "small" else (40, 41)
    shape = make_shape(4, layout, 4, 16, spatial)
    x = rng.standard_normal(shape)
    dy = rng.standard_normal(shape)
    C = shape[ref.channel_axis(4, layout)]
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    rm, rv = np.zeros(C), np.ones(C) + rng.random(C)
    _, cache = fastbn.batch_norm_forward(x, w, b, training=training, running_mean=rm,
                                         running_var=rv, layout=layout)
    dx, dw, db = fastbn.batch_norm_backward(dy, cache)
    none, dw2, db2 = fastbn.batch_norm_backward(dy, cache, input_grad=False)
    assert none is None
    # the same sums, but maybe another kernel (fused with dx or not): an ulp apart
    # at most where one was compiled here and the other loaded (docs/cold-start.md)
    np.testing.assert_allclose(dw2, dw, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(db2, db, rtol=1e-13, atol=1e-13)
    out = np.full_like(x, np.nan)
    dx3, dw3, db3 = fastbn.batch_norm_backward(dy, cache, out=out)
    assert dx3 is out
    # another output buffer, another alignment: the vectorized loop's peeled
    # elements differ, and with fast-math an element may round an ulp apart
    np.testing.assert_allclose(out, dx, rtol=1e-14, atol=1e-15)
    strided = np.full(shape[:-1] + (2 * shape[-1],), np.nan)[..., ::2]  # a copy is made, then written
    dx4, _, _ = fastbn.batch_norm_backward(dy, cache, out=strided)
    assert dx4 is strided
    np.testing.assert_allclose(strided, dx, rtol=1e-14, atol=1e-15)
    if training:
        ref_dx, ref_dw, ref_db = ref.backward_train(dy, x, w, 1e-5, layout)
        check_y(dx, ref_dx, np.float64, "dx")


def test_backward_out_errors(rng):
    x = rng.standard_normal((4, 3, 5))
    dy = rng.standard_normal(x.shape)
    _, cache = fastbn.batch_norm_forward(x)
    for bad, message in ((np.empty((4, 3)), "shape"), (np.empty(x.shape, np.float32), "dtype"),
                         (dy, "overlap dy"), (x, "overlap x")):
        with pytest.raises(ValueError, match=message):
            fastbn.batch_norm_backward(dy, cache, out=bad)
    with pytest.raises(TypeError, match="input_grad must be True or False, got"):
        fastbn.batch_norm_backward(dy, cache, input_grad="no")


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_cache_mean_and_var_are_the_statistics_used(rng, training):
    x = rng.standard_normal((6, 4, 5)).astype(np.float32)
    rm, rv = rng.standard_normal(4).astype(np.float32), 1 + rng.random(4).astype(np.float32)
    before = rm.copy(), rv.copy()
    _, cache = fastbn.batch_norm_forward(x, training=training, running_mean=rm, running_var=rv)
    mean, var = ref.stats(x) if training else (before[0].astype(np.float64), before[1].astype(np.float64))
    assert cache.mean.dtype == cache.var.dtype == np.float64
    assert cache.mean.shape == cache.var.shape == (4,)
    np.testing.assert_allclose(cache.mean, mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(cache.var, var, rtol=1e-5)
    with pytest.raises(ValueError, match="read-only"):
        cache.mean[0] = 1.0
    with pytest.raises(AttributeError):
        cache.var = np.zeros(4)


def test_layer_backward_input_grad(rng):
    bn = fastbn.BatchNorm(3, dtype=np.float64)
    x = rng.standard_normal((5, 3, 4))
    dy = rng.standard_normal(x.shape)
    y = bn.forward(x)
    dx = bn.backward(dy)
    gw, gb = bn.grad_weight.copy(), bn.grad_bias.copy()
    assert bn.backward(dy, input_grad=False) is None
    np.testing.assert_array_equal(bn.grad_weight, gw)
    np.testing.assert_array_equal(bn.grad_bias, gb)
    assert dx.shape == y.shape


@pytest.mark.parametrize("unbiased", [True, False])
def test_unbiased_running_var(rng, unbiased):
    """False: the running variance gets the biased batch variance (Keras,
    Flax, numpy-ml); functional API and layer alike."""
    x = rng.standard_normal((6, 3, 4, 5))
    m = x.size // 3
    mean, var = ref.stats(x)
    rm, rv = np.zeros(3), np.ones(3)
    fastbn.batch_norm_forward(x, running_mean=rm, running_var=rv, momentum=0.25,
                              unbiased_running_var=unbiased)
    want = var * m / (m - 1) if unbiased else var
    np.testing.assert_allclose(rv, 0.75 + 0.25 * want, rtol=1e-12)
    np.testing.assert_allclose(rm, 0.25 * mean, rtol=1e-12, atol=1e-15)
    bn = fastbn.BatchNorm(3, momentum=0.25, dtype=np.float64, unbiased_running_var=unbiased)
    bn.forward(x)
    np.testing.assert_allclose(bn.running_var, rv, rtol=1e-12)
    with pytest.raises(TypeError, match="unbiased_running_var must be True or False, got"):
        fastbn.batch_norm_forward(x, unbiased_running_var="yes")
    with pytest.raises(TypeError, match="unbiased_running_var must be True or False, got"):
        fastbn.BatchNorm(3, unbiased_running_var=None)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_broadcastable_parameter_shapes(rng, layout):
    """weight, bias and running statistics of any shape that broadcasts along
    the channel axis: the results of (C,) vectors; running statistics updated
    in place in their own shape."""
    shape = make_shape(4, layout, 5, 3, (4, 2))
    x = rng.standard_normal(shape)
    C = 3
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    y0, c0 = fastbn.batch_norm_forward(x, w, b, running_mean=np.zeros(C), running_var=np.ones(C),
                                       layout=layout)
    full = channel_shape(4, layout, C)
    shapes = [full, full[1:]] if layout == "NCHW" else [full, (C,), (1, C)]
    for s in shapes:
        rm, rv = np.zeros(s), np.ones(s)
        y, c = fastbn.batch_norm_forward(x, w.reshape(s), b.reshape(s), running_mean=rm,
                                         running_var=rv, layout=layout)
        np.testing.assert_array_equal(y, y0)
        assert rm.shape == s and rv.shape == s
        np.testing.assert_allclose(rm.reshape(C), c0.mean * 0.1, rtol=1e-12)
    with pytest.raises(ValueError, match=r"weight must have shape \(3,\)"):
        fastbn.batch_norm_forward(x, np.ones((C, 1, 1, 1)), layout=layout)
