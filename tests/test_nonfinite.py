"""Non-finite input: NaN/Inf propagate to y as IEEE arithmetic says; a batch
with non-finite statistics leaves running statistics and num_batches_tracked
alone and says so with a RuntimeWarning."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import fastbn
import reference as ref
from helpers import LAYOUTS, make_shape, make_x

EPS = 1e-5


def _poison(x, layout, value, channel=1):
    """Put ``value`` in one entry of ``channel``."""
    x = x.copy()
    idx = [0] * x.ndim
    idx[ref.channel_axis(x.ndim, layout)] = channel
    idx[0] = x.shape[0] - 1
    x[tuple(idx)] = value
    return x


def _check_like_reference(y, ry, dtype):
    """Same NaN/Inf pattern as the IEEE reference; finite values close."""
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ry))
    np.testing.assert_array_equal(np.isposinf(y), np.isposinf(ry))
    np.testing.assert_array_equal(np.isneginf(y), np.isneginf(ry))
    fin = np.isfinite(ry)
    t = 1e-10 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(y[fin], ry[fin], rtol=t, atol=t * 10)


@pytest.mark.parametrize("size", ["small", "large"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_functional_training(rng, layout, dtype, value, size):
    spatial = (3, 4) if size == "small" else (64, 64)
    shape = make_shape(4, layout, 4, 3, spatial)
    x = _poison(make_x(rng, shape, layout, dtype), layout, value)
    rm0 = rng.uniform(-1, 1, 3).astype(dtype)
    rv0 = rng.uniform(0.5, 2, 3).astype(dtype)
    rm, rv = rm0.copy(), rv0.copy()
    with pytest.warns(RuntimeWarning):
        y, cache = fastbn.batch_norm_forward(x, running_mean=rm, running_var=rv,
                                             layout=layout)
    np.testing.assert_array_equal(rm, rm0)
    np.testing.assert_array_equal(rv, rv0)
    with np.errstate(all="ignore"):
        ry = ref.forward_train(x, eps=EPS, layout=layout)[0]
    _check_like_reference(y, ry, dtype)
    # the poisoned channel is all NaN, the others are untouched by it
    ax = ref.channel_axis(x.ndim, layout)
    assert np.isnan(np.take(y, 1, axis=ax)).all()
    assert np.isfinite(np.take(y, 0, axis=ax)).all()
    assert np.isfinite(np.take(y, 2, axis=ax)).all()
    mean, var = fastbn.batch_stats(x, layout=layout)
    assert np.isfinite(mean[[0, 2]]).all() and np.isfinite(var[[0, 2]]).all()
    assert not np.isfinite(mean[1]) or not np.isfinite(var[1])


@pytest.mark.parametrize("value", [np.nan, np.inf], ids=["nan", "inf"])
def test_eval_propagates_elementwise(rng, value):
    """Eval is an affine map per element: only the poisoned entry is hit."""
    x = _poison(make_x(rng, (4, 3, 5), "NCHW", np.float64), "NCHW", value)
    rm = rng.uniform(-1, 1, 3)
    rv = rng.uniform(0.5, 2, 3)
    rm0, rv0 = rm.copy(), rv.copy()
    y, _ = fastbn.batch_norm_forward(x, training=False, running_mean=rm,
                                     running_var=rv)
    with np.errstate(all="ignore"):
        ry = ref.forward_eval(x, None, None, rm, rv, EPS, "NCHW")
    _check_like_reference(y, ry, np.float64)
    assert (~np.isfinite(y)).sum() == 1
    np.testing.assert_array_equal(rm, rm0)
    np.testing.assert_array_equal(rv, rv0)


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_layer(rng, layout, momentum):
    bn = fastbn.BatchNorm(3, layout=layout, momentum=momentum)
    shape = make_shape(3, layout, 4, 3, (6,))
    good = make_x(rng, shape, layout, np.float32)
    bn(good)
    state = {k: v.copy() for k, v in bn.state_dict().items()}
    with pytest.warns(RuntimeWarning):
        y = bn(_poison(good, layout, np.nan, channel=2))
    ax = ref.channel_axis(len(shape), layout)
    assert np.isnan(np.take(y, 2, axis=ax)).all()
    assert np.isfinite(np.take(y, 0, axis=ax)).all()
    for k, v in bn.state_dict().items():
        np.testing.assert_array_equal(v, state[k], err_msg=k)
    assert bn.num_batches_tracked == 1
    # the next finite batch updates as if the bad batch never happened
    ref_bn = ref.RefBatchNorm(3, momentum=momentum, layout=layout)
    ref_bn.forward(good)
    x2 = make_x(rng, shape, layout, np.float32)
    bn(x2)
    ref_bn.forward(x2)
    np.testing.assert_allclose(bn.running_mean, ref_bn.running_mean, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(bn.running_var, ref_bn.running_var, rtol=1e-6, atol=1e-7)
    assert bn.num_batches_tracked == 2


def test_finite_input_does_not_warn(rng):
    x = make_x(rng, (8, 3, 4), "NCHW", np.float32)
    bn = fastbn.BatchNorm(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bn(x)
        fastbn.batch_norm_forward(x, running_mean=np.zeros(3), running_var=np.ones(3))
        fastbn.batch_stats(x)
    assert bn.num_batches_tracked == 1


def test_backward_after_nonfinite_forward(rng):
    """The cache of a NaN batch still gives a backward (NaNs where IEEE says)."""
    x = _poison(make_x(rng, (4, 2, 3), "NCHW", np.float64), "NCHW", np.nan, channel=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        _, cache = fastbn.batch_norm_forward(x)
    dx, dw, db = fastbn.batch_norm_backward(np.ones_like(x), cache)
    assert np.isnan(dx[:, 0]).all()
    assert np.isfinite(dx[:, 1]).all()
    np.testing.assert_allclose(db, [12.0, 12.0])
