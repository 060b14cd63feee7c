"""The BatchNorm layer: state, modes and bookkeeping, against RefBatchNorm."""

from __future__ import annotations

import numpy as np
import pytest

import fastbn
import reference as ref
from helpers import (
    LAYOUTS,
    as_variant,
    check_grads,
    check_y,
    make_shape,
    make_x,
)

EPS = 1e-5


def _assert_running(bn, rbn, dtype):
    t = 1e-12 if dtype == np.float64 else 1e-6
    np.testing.assert_allclose(bn.running_mean, rbn.running_mean, rtol=t, atol=t)
    np.testing.assert_allclose(bn.running_var, rbn.running_var, rtol=t, atol=t)
    assert bn.num_batches_tracked == rbn.num_batches_tracked


def test_defaults():
    bn = fastbn.BatchNorm(4)
    assert bn.num_features == 4
    assert bn.eps == 1e-5 and bn.momentum == 0.1 and bn.layout == "NCHW"
    assert bn.training is True
    assert bn.num_batches_tracked == 0
    assert isinstance(bn.num_batches_tracked, int)
    for name, value in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0),
                        ("running_var", 1.0)):
        arr = getattr(bn, name)
        assert isinstance(arr, np.ndarray), name
        assert arr.shape == (4,) and arr.dtype == np.float32, name
        assert (arr == value).all(), name
    assert bn.grad_weight is None and bn.grad_bias is None


def test_dtype_float64_and_options():
    bn = fastbn.BatchNorm(3, eps=1e-3, momentum=0.25, layout="NHWC",
                          dtype=np.float64)
    assert bn.eps == 1e-3 and bn.momentum == 0.25 and bn.layout == "NHWC"
    for name in ("weight", "bias", "running_mean", "running_var"):
        assert getattr(bn, name).dtype == np.float64, name


@pytest.mark.parametrize("momentum", [0.1, None, 0.0, 1.0])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_train_then_eval(rng, dtype, layout, momentum):
    """Several training steps (running statistics, num_batches_tracked,
    momentum=None cumulative average), then eval uses the running stats."""
    C = 3
    bn = fastbn.BatchNorm(C, momentum=momentum, layout=layout, dtype=dtype)
    rbn = ref.RefBatchNorm(C, momentum=momentum, layout=layout)
    w = rng.uniform(0.5, 2, C).astype(dtype)
    b = rng.uniform(-1, 1, C).astype(dtype)
    bn.weight[...] = w
    bn.bias[...] = b
    rbn.weight, rbn.bias = w.astype(np.float64), b.astype(np.float64)
    for step in range(4):
        shape = make_shape(4, layout, 2 + step, C, (3, 5))  # m changes per step
        x = make_x(rng, shape, layout, dtype, loc=rng.uniform(-2, 2, C))
        y = bn(x)
        ry = rbn.forward(x)
        check_y(y, ry, dtype, what=f"step {step}")
        _assert_running(bn, rbn, dtype)
    assert bn.num_batches_tracked == 4
    assert isinstance(bn.num_batches_tracked, int)
    assert bn.eval() is bn
    assert bn.training is False
    x = make_x(rng, make_shape(4, layout, 3, C, (2, 2)), layout, dtype)
    rm, rv = bn.running_mean.copy(), bn.running_var.copy()
    rbn.training = False
    y = bn(x)
    check_y(y, ref.forward_eval(x, w, b, rm, rv, EPS, layout), dtype)
    # eval changes no state
    np.testing.assert_array_equal(bn.running_mean, rm)
    np.testing.assert_array_equal(bn.running_var, rv)
    assert bn.num_batches_tracked == 4


def test_momentum_none_is_cumulative_average(rng):
    bn = fastbn.BatchNorm(2, momentum=None, dtype=np.float64)
    means, uvars = [], []
    for n in (4, 7, 5):
        x = make_x(rng, (n, 2, 3), "NCHW", np.float64, loc=rng.normal(size=2))
        bn(x)
        mean, var = ref.stats(x)
        m = n * 3
        means.append(mean)
        uvars.append(var * m / (m - 1))
    np.testing.assert_allclose(bn.running_mean, np.mean(means, axis=0), rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, np.mean(uvars, axis=0), rtol=1e-12)
    assert bn.num_batches_tracked == 3


def test_forward_equals_call(rng):
    x = make_x(rng, (5, 3), "NCHW", np.float32)
    a, b = fastbn.BatchNorm(3), fastbn.BatchNorm(3)
    np.testing.assert_array_equal(a(x), b.forward(x))
    np.testing.assert_array_equal(a.running_mean, b.running_mean)
    assert a.num_batches_tracked == b.num_batches_tracked == 1


@pytest.mark.parametrize("layout", LAYOUTS)
def test_backward_train_and_eval(rng, layout):
    C = 4
    dtype = np.float64
    bn = fastbn.BatchNorm(C, layout=layout, dtype=dtype)
    bn.weight[...] = rng.uniform(0.5, 2, C)
    bn.bias[...] = rng.uniform(-1, 1, C)
    shape = make_shape(3, layout, 5, C, (6,))
    x = as_variant(make_x(rng, shape, layout, dtype), "stepped", layout)
    dy = rng.standard_normal(shape)
    bn(x)
    dx = bn.backward(dy)
    _, mean, var = ref.forward_train(x, bn.weight, bn.bias, EPS, layout)
    rg = ref.backward_train(dy, x, bn.weight, EPS, layout)
    check_grads((dx, bn.grad_weight, bn.grad_bias), rg, dy, x, bn.weight, mean,
                var, EPS, dtype, layout)
    g = bn.gradients()
    assert set(g) == {"weight", "bias"}
    np.testing.assert_array_equal(g["weight"], bn.grad_weight)
    np.testing.assert_array_equal(g["bias"], bn.grad_bias)
    # eval cache: statistics are constants
    bn.eval()
    rm, rv = bn.running_mean.copy(), bn.running_var.copy()
    bn(x)
    dx = bn.backward(dy)
    rg = ref.backward_eval(dy, x, bn.weight, rm, rv, EPS, layout)
    check_grads((dx, bn.grad_weight, bn.grad_bias), rg, dy, x, bn.weight, rm, rv,
                EPS, dtype, layout)


def test_grads_overwritten_not_accumulated(rng):
    bn = fastbn.BatchNorm(3, dtype=np.float64)
    x1 = make_x(rng, (6, 3, 4), "NCHW", np.float64)
    x2 = make_x(rng, (6, 3, 4), "NCHW", np.float64)
    dy1, dy2 = rng.standard_normal(x1.shape), rng.standard_normal(x1.shape)
    bn(x1)
    bn.backward(dy1)
    bn(x2)
    dx2 = bn.backward(dy2)
    rdx, rdw, rdb = ref.backward_train(dy2, x2, bn.weight)
    np.testing.assert_allclose(bn.grad_weight, rdw, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(bn.grad_bias, rdb, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dx2, rdx, rtol=1e-9, atol=1e-10)
    # a second backward on the same forward gives the same, not doubled
    bn.backward(dy2)
    np.testing.assert_allclose(bn.grad_bias, rdb, rtol=1e-10, atol=1e-10)


def test_backward_before_forward():
    bn = fastbn.BatchNorm(3)
    with pytest.raises(RuntimeError) as exc:
        bn.backward(np.ones((4, 3), np.float32))
    assert "forward" in str(exc.value).lower()
    assert bn.grad_weight is None and bn.grad_bias is None


def test_train_eval_return_layer():
    bn = fastbn.BatchNorm(2)
    assert bn.eval() is bn and bn.training is False
    assert bn.train() is bn and bn.training is True
    assert bn.train(False) is bn and bn.training is False
    assert bn.train(True) is bn and bn.training is True
    assert bn.train(mode=False) is bn and bn.training is False
    assert bn.train(mode=True) is bn and bn.training is True


def test_parameters_are_live(rng):
    bn = fastbn.BatchNorm(3, dtype=np.float64)
    p = bn.parameters()
    assert set(p) == {"weight", "bias"}
    assert p["weight"] is bn.weight and p["bias"] is bn.bias
    x = make_x(rng, (8, 3), "NCHW", np.float64)
    p["weight"] *= 3.0   # an optimizer step in place
    p["bias"] += 0.5
    y = bn(x)
    check_y(y, ref.forward_train(x, np.full(3, 3.0), np.full(3, 0.5))[0], np.float64)


def test_gradients_before_backward():
    bn = fastbn.BatchNorm(3)
    assert bn.gradients() == {"weight": None, "bias": None}
    assert fastbn.BatchNorm(3, affine=False).gradients() == {}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_affine_false(rng, layout):
    bn = fastbn.BatchNorm(3, affine=False, layout=layout, dtype=np.float64)
    assert bn.weight is None and bn.bias is None
    assert bn.parameters() == {}
    assert set(bn.state_dict()) == {"running_mean", "running_var", "num_batches_tracked"}
    shape = make_shape(4, layout, 3, 3, (2, 3))
    x = make_x(rng, shape, layout, np.float64)
    check_y(bn(x), ref.forward_train(x, layout=layout)[0], np.float64)
    dy = rng.standard_normal(shape)
    dx = bn.backward(dy)
    rdx = ref.backward_train(dy, x, layout=layout)[0]
    np.testing.assert_allclose(dx, rdx, rtol=1e-9, atol=1e-9)
    bn.eval()
    check_y(bn(x), ref.forward_eval(x, None, None, bn.running_mean,
                                    bn.running_var, EPS, layout), np.float64)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_no_running_stats(rng, layout):
    """track_running_stats=False: no buffers, eval normalizes with the batch
    statistics (PyTorch semantics)."""
    bn = fastbn.BatchNorm(3, track_running_stats=False, layout=layout,
                          dtype=np.float64)
    assert bn.running_mean is None and bn.running_var is None
    assert set(bn.state_dict()) == {"weight", "bias"}
    bn.weight[...] = [1.0, 2.0, 0.5]
    shape = make_shape(3, layout, 4, 3, (5,))
    x = make_x(rng, shape, layout, np.float64)
    ry = ref.forward_train(x, bn.weight, bn.bias, EPS, layout)[0]
    check_y(bn(x), ry, np.float64)
    bn.eval()
    check_y(bn(x), ry, np.float64)
    assert bn.running_mean is None and bn.running_var is None
    dy = rng.standard_normal(shape)
    dx = bn.backward(dy)
    np.testing.assert_allclose(dx, ref.backward_train(dy, x, bn.weight, EPS, layout)[0],
                               rtol=1e-9, atol=1e-9)


def test_no_running_stats_eval_needs_two_values():
    """Eval without running stats normalises with batch statistics, so like
    PyTorch it needs more than one value per channel."""
    bn = fastbn.BatchNorm(3, track_running_stats=False).eval()
    with pytest.raises(ValueError):
        bn(np.ones((1, 3), np.float32))


def test_state_dict_keys_and_copies(rng):
    bn = fastbn.BatchNorm(3)
    bn(make_x(rng, (4, 3), "NCHW", np.float32))
    sd = bn.state_dict()
    assert set(sd) == {"weight", "bias", "running_mean", "running_var",
                       "num_batches_tracked"}
    nbt = sd["num_batches_tracked"]
    assert isinstance(nbt, np.ndarray) and nbt.shape == () and nbt.dtype == np.int64
    assert int(nbt) == 1
    for k in ("weight", "bias", "running_mean", "running_var"):
        assert isinstance(sd[k], np.ndarray) and sd[k].shape == (3,)
        np.testing.assert_array_equal(sd[k], getattr(bn, k))
        assert not np.shares_memory(sd[k], getattr(bn, k)), k
    rm = bn.running_mean.copy()
    sd["running_mean"][:] = 42.0
    sd["weight"][:] = 42.0
    np.testing.assert_array_equal(bn.running_mean, rm)
    assert (bn.weight == 1.0).all()
    assert set(fastbn.BatchNorm(2, affine=False, track_running_stats=False)
               .state_dict()) == set()


def test_load_state_dict(rng):
    src = fastbn.BatchNorm(3, dtype=np.float64)
    for _ in range(3):
        src(make_x(rng, (5, 3, 2), "NCHW", np.float64))
    src.weight[...] = [0.5, 1.5, 2.5]
    src.bias[...] = [-1.0, 0.0, 1.0]
    dst = fastbn.BatchNorm(3, dtype=np.float64)
    ids = {k: id(v) for k, v in dst.parameters().items()}
    live = dst.parameters()
    dst.load_state_dict(src.state_dict())
    for k in ("weight", "bias", "running_mean", "running_var"):
        np.testing.assert_array_equal(getattr(dst, k), getattr(src, k))
    assert dst.num_batches_tracked == 3
    # assigned in place: the live arrays from parameters() see the new values
    assert {k: id(v) for k, v in dst.parameters().items()} == ids
    np.testing.assert_array_equal(live["weight"], [0.5, 1.5, 2.5])
    x = make_x(rng, (4, 3, 2), "NCHW", np.float64)
    src.eval(), dst.eval()
    np.testing.assert_array_equal(src(x), dst(x))


def test_load_state_dict_array_like_and_cast():
    """Values may be lists / other float dtypes; the layer keeps its dtype."""
    bn = fastbn.BatchNorm(2)  # float32
    bn.load_state_dict({
        "weight": [2.0, 3.0], "bias": np.array([0.5, -0.5]),
        "running_mean": (1.0, 2.0), "running_var": np.array([4.0, 9.0], np.float64),
        "num_batches_tracked": 7,
    })
    assert bn.weight.dtype == np.float32 and bn.running_var.dtype == np.float32
    np.testing.assert_array_equal(bn.weight, [2.0, 3.0])
    np.testing.assert_array_equal(bn.running_var, [4.0, 9.0])
    assert bn.num_batches_tracked == 7
    bn.eval()
    x = np.array([[1.0, 2.0], [3.0, 5.0]], np.float32)
    check_y(bn(x), ref.forward_eval(x, [2, 3], [0.5, -0.5], [1, 2], [4, 9]),
            np.float32)


@pytest.mark.parametrize("ldtype,xdtype", [(np.float64, np.float32),
                                           (np.float32, np.float64)],
                         ids=["layer64-x32", "layer32-x64"])
def test_layer_x_of_other_float_dtype(rng, ldtype, xdtype):
    """A layer accepts x of the other float dtype (params cast to x's dtype);
    its own arrays keep the layer's dtype."""
    bn = fastbn.BatchNorm(3, dtype=ldtype)
    x = make_x(rng, (6, 3, 4), "NCHW", xdtype)
    y = bn(x)
    assert y.dtype == xdtype
    check_y(y, ref.forward_train(x)[0], xdtype)
    assert bn.running_mean.dtype == ldtype and bn.running_var.dtype == ldtype
    assert bn.weight.dtype == ldtype
    mean, var = ref.stats(x)
    np.testing.assert_allclose(bn.running_mean, 0.1 * mean, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(bn.running_var, 0.9 + 0.1 * var * 24 / 23,
                               rtol=1e-6)
    dx = bn.backward(np.ones_like(x))
    assert dx.dtype == xdtype


@pytest.mark.parametrize("kind", ["readonly", "negative", "other_physical"])
def test_layer_noncontiguous_input(rng, kind):
    bn = fastbn.BatchNorm(4, layout="NHWC", dtype=np.float64)
    shape = make_shape(4, "NHWC", 3, 4, (5, 2))
    x = as_variant(make_x(rng, shape, "NHWC", np.float64), kind, "NHWC")
    check_y(bn(x), ref.forward_train(x, layout="NHWC")[0], np.float64)
