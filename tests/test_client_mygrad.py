"""examples/mygrad_batchnorm.py against MyGrad's own batchnorm (float64)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

mg = pytest.importorskip(
    "mygrad", reason="MyGrad is not installed (pip install -e '.[clients]'): "
    "the MyGrad adapter example, examples/mygrad_batchnorm.py, is not tested")
from mygrad.nnet.layers import batchnorm as mygrad_batchnorm  # noqa: E402

_PATH = Path(__file__).resolve().parents[1] / "examples" / "mygrad_batchnorm.py"
_spec = importlib.util.spec_from_file_location("mygrad_batchnorm", _PATH)
adapter = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(adapter)


@st.composite
def cases(draw):
    rank = draw(st.sampled_from([2, 4]))
    n, c = draw(st.integers(1, 4)), draw(st.integers(1, 5))
    spatial = tuple(draw(st.lists(st.integers(1, 4), min_size=rank - 2, max_size=rank - 2)))
    if n * int(np.prod(spatial)) < 2:
        n = 2  # training needs 2 values per channel
    return dict(
        shape=(n, c, *spatial),
        seed=draw(st.integers(0, 2**32 - 1)),
        # channels whose values are all equal, and that value
        constant=draw(st.sets(st.integers(0, c - 1))),
        value=draw(st.sampled_from([0.0, 1.0, -3.5, 699050.78, 1e-30])),
        eps=draw(st.sampled_from([1e-20, 1e-5, 0.1, 1.0])),
        affine=draw(st.sampled_from(["both", "gamma", "beta", "none"])),
        strided=draw(st.booleans()),  # x is a channels-last view
        x_grad=draw(st.booleans()),  # False: x is a constant (no dx wanted)
    )


def _data(shape, seed, constant, value, strided):
    rng = np.random.default_rng(seed)
    c = shape[1]
    x = rng.standard_normal(shape) * rng.uniform(0.5, 2.0, (c,) + (1,) * (len(shape) - 2))
    x += rng.uniform(-3.0, 3.0, (c,) + (1,) * (len(shape) - 2))
    x[:, sorted(constant)] = value
    if strided:
        x = np.moveaxis(np.ascontiguousarray(np.moveaxis(x, 1, -1)), -1, 1)
    x.setflags(write=False)
    gamma, beta = rng.uniform(0.5, 2.0, c), rng.uniform(-1.0, 1.0, c)
    return x, gamma, beta, rng.standard_normal(shape)


def _run(batchnorm, x, gamma, beta, dy, eps, affine, x_grad):
    """y and the gradients of sum(y * dy) through ``batchnorm``."""
    xt = mg.Tensor(x, copy=False, constant=not x_grad)
    g = mg.Tensor(gamma) if affine in ("both", "gamma") else None
    b = mg.Tensor(beta) if affine in ("both", "beta") else None
    y = batchnorm(xt, gamma=g, beta=b, eps=eps)
    assert not xt.data.flags.writeable  # MyGrad locks x while its graph lives
    (y * dy).sum().backward()
    grads = (xt.grad, None if g is None else g.grad, None if b is None else b.grad)
    return (np.array(y.data),) + tuple(None if a is None else np.array(a) for a in grads)


def _close(actual, expected, rtol=1e-9):
    np.testing.assert_allclose(actual, expected, rtol=rtol,
                               atol=rtol * max(1.0, float(np.max(np.abs(expected)))))


@given(cases())
@example(dict(shape=(3, 1), seed=0, constant={0}, value=699050.78, eps=1e-20,
              affine="none", strided=False, x_grad=True))  # the case
@example(dict(shape=(32, 3, 8, 8), seed=2, constant={0, 2}, value=699050.78, eps=1e-20,
              affine="both", strided=True, x_grad=True))  # ... over 2048 values, channels last
@example(dict(shape=(2, 3, 1, 1), seed=1, constant=set(), value=0.0, eps=1e-5,
              affine="both", strided=True, x_grad=True))  # m = 2
def test_matches_mygrad(case):
    """Values and gradients as MyGrad's batchnorm; constant channels exactly
    ``beta`` (MyGrad's own mean there may be an ulp off, which its x_norm
    turns into ulp / sqrt(eps): those channels are checked against the
    exact formulas instead)."""
    x, gamma, beta, dy = _data(case["shape"], case["seed"], case["constant"], case["value"],
                               case["strided"])
    args = (x, gamma, beta, dy, case["eps"], case["affine"], case["x_grad"])
    y, dx, dgamma, dbeta = _run(adapter.batchnorm, *args)
    y_ref, dx_ref, dgamma_ref, dbeta_ref = _run(mygrad_batchnorm, *args)
    assert y.dtype == x.dtype

    const = sorted(case["constant"])
    g = gamma if dgamma is not None else np.ones_like(gamma)
    b = beta if dbeta is not None else np.zeros_like(beta)
    y_ref[:, const] = b[const].reshape((-1,) + (1,) * (x.ndim - 2))
    np.testing.assert_array_equal(y[:, const], y_ref[:, const])  # exactly beta
    _close(y, y_ref)
    if dgamma is not None:
        dgamma_ref[const] = 0.0
        _close(dgamma, dgamma_ref)
    if dbeta is not None:
        _close(dbeta, dbeta_ref)
    if not case["x_grad"]:
        assert dx is None
        return
    # a constant channel: x_norm = 0, so dx = gamma / sqrt(eps) * (dy - mean(dy))
    axes = (0, *range(2, x.ndim))
    shape = (-1,) + (1,) * (x.ndim - 2)
    d = dy[:, const]
    dx_ref[:, const] = (g[const] / np.sqrt(case["eps"])).reshape(shape) * (
        d - d.mean(axis=axes, keepdims=True))
    _close(dx, dx_ref, rtol=1e-8)


def test_eps_zero_docstring_example():
    """MyGrad's own docstring example: eps=0."""
    x = mg.Tensor([1.0, 4.0, 1.0]).reshape(3, 1)
    y = adapter.batchnorm(x, eps=0)
    np.testing.assert_allclose(y.data[:, 0], [-0.70710678, 1.41421356, -0.70710678], rtol=1e-8)
    y.backward()  # d sum(y) / dx = 0
    np.testing.assert_allclose(x.grad, 0.0, atol=1e-12)


def test_float32_and_op_attributes():
    """float32 data stays float32; the op exposes mean and var as MyGrad's
    does (here from fastbn's cache, float64)."""
    rng = np.random.default_rng(0)
    x = mg.Tensor(rng.standard_normal((4, 3, 5, 5)).astype(np.float32))
    gamma = mg.Tensor(np.ones(3, np.float32))
    y = adapter.batchnorm(x, gamma=gamma, eps=1e-5)
    y_ref = mygrad_batchnorm(mg.Tensor(x.data), gamma=mg.Tensor(gamma.data), eps=1e-5)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y.data, y_ref.data, atol=1e-5)
    op = y.creator
    np.testing.assert_allclose(op.mean, x.data.mean(axis=(0, 2, 3)), atol=1e-6)
    np.testing.assert_allclose(op.var, x.data.astype(np.float64).var(axis=(0, 2, 3)), rtol=1e-5)
    (y * y).sum().backward()
    assert x.grad.dtype == np.float32 and gamma.grad.shape == (3,)


def test_parameters_shaped_1c11():
    """gamma and beta shaped (1, C, 1, 1) get gradients of their own shape."""
    rng = np.random.default_rng(1)
    x = mg.Tensor(rng.standard_normal((4, 3, 2, 2)))
    gamma = mg.Tensor(rng.uniform(0.5, 2.0, (1, 3, 1, 1)))
    beta = mg.Tensor(rng.uniform(-1.0, 1.0, (1, 3, 1, 1)))
    y = adapter.batchnorm(x, gamma=gamma, beta=beta, eps=1e-5)
    y_ref = mygrad_batchnorm(x.data, gamma=gamma.data.ravel(), beta=beta.data.ravel(), eps=1e-5)
    _close(y.data, y_ref.data)
    y.sum().backward()
    assert gamma.grad.shape == (1, 3, 1, 1) and beta.grad.shape == (1, 3, 1, 1)
    np.testing.assert_allclose(beta.grad.ravel(), 16.0)


def test_float16_storage():
    """float16 data (MyGrad keeps it float16): within float16 rounding of
    MyGrad's float64 result."""
    rng = np.random.default_rng(2)
    x64 = rng.standard_normal((8, 3, 4, 4)) * 2 + 1
    x = mg.Tensor(x64.astype(np.float16))
    y = adapter.batchnorm(x, eps=1e-5)
    assert y.dtype == np.float16
    y_ref = mygrad_batchnorm(x.data.astype(np.float64), eps=1e-5)
    np.testing.assert_allclose(y.data, y_ref.data, rtol=2e-3, atol=2e-3)
    dy = rng.standard_normal(x.shape).astype(np.float16)
    (y * dy).sum().backward()
    x_ref = mg.Tensor(x.data.astype(np.float64))
    (mygrad_batchnorm(x_ref, eps=1e-5) * dy.astype(np.float64)).sum().backward()
    assert x.grad.dtype == np.float16
    np.testing.assert_allclose(x.grad, x_ref.grad, rtol=1e-2, atol=1e-2)
