"""Gradients against central finite differences (float64)."""

from __future__ import annotations

import numpy as np
import pytest

import fastbn
from helpers import LAYOUTS, make_shape, make_x

EPS = 1e-5
H = 1e-6


def _loss(x, weight, bias, dy, training, rm, rv, layout):
    y, _ = fastbn.batch_norm_forward(
        x, weight, bias, training=training,
        running_mean=None if training else rm,
        running_var=None if training else rv,
        eps=EPS, layout=layout)
    return float(np.sum(dy * y))


def _numeric_grad(f, a):
    """Central differences of scalar f() with respect to every entry of a
    (perturbed in place)."""
    g = np.zeros_like(a)
    it = np.nditer(a, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = a[i]
        a[i] = old + H
        fp = f()
        a[i] = old - H
        fm = f()
        a[i] = old
        g[i] = (fp - fm) / (2 * H)
    return g


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("rank", [2, 3, 4, 5])
def test_finite_differences(rng, rank, layout, training):
    C = 3
    spatial = {2: (), 3: (3,), 4: (2, 2), 5: (2, 1, 2)}[rank]
    shape = make_shape(rank, layout, 3, C, spatial)
    x = make_x(rng, shape, layout, np.float64)
    weight = rng.uniform(0.5, 2.0, C)
    bias = rng.uniform(-1.0, 1.0, C)
    rm = rng.uniform(-1.0, 1.0, C)
    rv = rng.uniform(0.5, 2.0, C)
    dy = rng.standard_normal(shape)

    _, cache = fastbn.batch_norm_forward(
        x, weight, bias, training=training,
        running_mean=None if training else rm,
        running_var=None if training else rv, eps=EPS, layout=layout)
    dx, dw, db = fastbn.batch_norm_backward(dy, cache)

    f = lambda: _loss(x, weight, bias, dy, training, rm, rv, layout)  # noqa: E731
    ndx = _numeric_grad(f, x)
    ndw = _numeric_grad(f, weight)
    ndb = _numeric_grad(f, bias)
    # central differences are accurate to ~1e-9 here (h = 1e-6, O(1) data)
    np.testing.assert_allclose(dx, ndx, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dw, ndw, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(db, ndb, rtol=1e-6, atol=1e-7)


def test_finite_differences_without_affine(rng):
    """weight=None: gradient as if weight were ones (dweight still given)."""
    shape = (4, 2, 3)
    x = make_x(rng, shape, "NCHW", np.float64)
    dy = rng.standard_normal(shape)
    _, cache = fastbn.batch_norm_forward(x, eps=EPS)
    dx, dw, db = fastbn.batch_norm_backward(dy, cache)
    ones, zeros = np.ones(2), np.zeros(2)
    f = lambda: _loss(x, ones, zeros, dy, True, None, None, "NCHW")  # noqa: E731
    np.testing.assert_allclose(dx, _numeric_grad(f, x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dw, _numeric_grad(f, ones), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(db, _numeric_grad(f, zeros), rtol=1e-6, atol=1e-7)


def test_layer_backward_finite_differences(rng):
    bn = fastbn.BatchNorm(2, layout="NHWC", dtype=np.float64)
    bn.weight[...] = [1.5, 0.7]
    bn.bias[...] = [0.2, -0.3]
    x = make_x(rng, (3, 2, 2), "NHWC", np.float64)
    dy = rng.standard_normal(x.shape)
    bn(x)
    dx = bn.backward(dy)
    w, b = bn.weight.copy(), bn.bias.copy()
    f = lambda: _loss(x, w, b, dy, True, None, None, "NHWC")  # noqa: E731
    np.testing.assert_allclose(dx, _numeric_grad(f, x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(bn.grad_weight, _numeric_grad(f, w), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(bn.grad_bias, _numeric_grad(f, b), rtol=1e-6, atol=1e-7)
