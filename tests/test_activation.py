"""activation="relu": BatchNorm and ReLU in one pass, forward and backward
(SPEC "Inference folding, fused activation, small batches")."""

from __future__ import annotations

import numpy as np
import pytest

import fastbn
import reference as ref
from helpers import make_x

LAYOUTS = ("NCHW", "NHWC")
SHAPES = [(6, 5), (4, 3, 7), (4, 8, 5, 6), (16, 32, 20, 20), (2, 3, 4, 5, 6)]


def _case(rng, shape, layout, dtype):
    x = make_x(rng, shape, layout, dtype)
    c = ref.num_channels(shape, layout)
    w = rng.uniform(-1.5, 1.5, c).astype(dtype)  # negative scales flip the gate
    b = rng.normal(0, 0.5, c).astype(dtype)
    dy = rng.normal(size=shape).astype(dtype)
    return x, w, b, dy, c


def _reference(x, w, b, dy, layout, eps=1e-5, running=None):
    """float64 BatchNorm then ReLU, and the gradients of the composition."""
    if running is None:
        y, _, _ = ref.forward_train(x, w, b, eps, layout)
        mask = y > 0
        dx, dw, db = ref.backward_train(dy * mask, x, w, eps, layout)
    else:
        y = ref.forward_eval(x, w, b, *running, eps, layout)
        mask = y > 0
        dx, dw, db = ref.backward_eval(dy * mask, x, w, *running, eps, layout)
    return np.maximum(y, 0), dx, dw, db


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_relu_matches_composition(rng, shape, layout, dtype, training):
    """y and the gradients equal BatchNorm then ReLU: bit for bit against
    fastbn's own composition, and within tolerance of the float64 reference."""
    x, w, b, dy, c = _case(rng, shape, layout, dtype)
    rm, rv = rng.normal(size=c), rng.uniform(0.5, 2, c)
    kw = dict(training=training, running_mean=rm.copy(), running_var=rv.copy(), layout=layout)
    y, cache = fastbn.batch_norm_forward(x, w, b, activation="relu", **kw)
    y0, cache0 = fastbn.batch_norm_forward(x, w, b, **kw)
    np.testing.assert_array_equal(y, np.maximum(y0, 0))
    keep = y.copy()
    y[...] = -1.0  # a framework may reuse y's memory: the backward must not read it
    grads = fastbn.batch_norm_backward(dy, cache)
    grads0 = fastbn.batch_norm_backward(dy * (y0 > 0), cache0)
    for got, want in zip(grads, grads0):
        np.testing.assert_array_equal(got, want)
    ry, *rgrads = _reference(x, w, b, dy, layout, running=None if training else (rm, rv))
    tol = 1e-10 if dtype == np.float64 else 2e-4
    for got, want in zip((keep, *grads), (ry, *rgrads)):
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * max(1.0, np.abs(want).max()))


def test_relu_cache_is_small(rng):
    """The cache holds O(C) beyond x: no mask of x's size."""
    x, w, b, dy, c = _case(rng, (16, 32, 20, 20), "NCHW", np.float32)
    _, cache = fastbn.batch_norm_forward(x, w, b, activation="relu")
    assert cache.gate.nbytes <= 2 * c * x.itemsize


def test_relu_keeps_nan(rng):
    x, w, b, dy, c = _case(rng, (4, 3, 5), "NCHW", np.float64)
    x[0, 1, 2] = np.nan
    with pytest.warns(RuntimeWarning):
        y, _ = fastbn.batch_norm_forward(x, w, b, running_mean=np.zeros(c),
                                         running_var=np.ones(c), activation="relu")
    assert np.isnan(y[:, 1]).all() and not np.isnan(y[:, [0, 2]]).any()


def test_layer_relu_and_finite_differences(rng):
    """The layer's ReLU; dx by central differences of sum(dy * y) (float64)."""
    bn = fastbn.BatchNorm(3, activation="relu", dtype=np.float64)
    assert "activation='relu'" in repr(bn)
    x, w, b, dy, c = _case(rng, (5, 3, 4), "NCHW", np.float64)
    bn.weight[...], bn.bias[...] = w, b
    y = bn(x)
    assert (y >= 0).all() and (y == 0).any()
    dx = bn.backward(dy)
    h, num = 1e-6, np.empty_like(x)
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += h
        xm[i] -= h
        num[i] = (np.sum(dy * bn.train()(xp)) - np.sum(dy * bn.train()(xm))) / (2 * h)
    np.testing.assert_allclose(dx, num, rtol=1e-5, atol=1e-7)


def test_relu_against_torch(rng):
    torch = pytest.importorskip("torch")
    x, w, b, dy, c = _case(rng, (8, 4, 6, 6), "NCHW", np.float64)
    y, cache = fastbn.batch_norm_forward(x, w, b, activation="relu")
    dx, dw, db = fastbn.batch_norm_backward(dy, cache)
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    yt = torch.relu(torch.nn.functional.batch_norm(xt, None, None, wt, bt, True, 0.1, 1e-5))
    yt.backward(torch.tensor(dy))
    for got, want in ((y, yt), (dx, xt.grad), (dw, wt.grad), (db, bt.grad)):
        np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("value, error", [("gelu", ValueError), ("RELU", ValueError),
                                          (1, TypeError), (True, TypeError)])
def test_bad_activation(rng, value, error):
    x = np.ones((4, 3), np.float32)
    with pytest.raises(error, match="activation must be None or 'relu'"):
        fastbn.batch_norm_forward(x, activation=value)
    with pytest.raises(error, match="activation"):
        fastbn.BatchNorm(3, activation=value)
