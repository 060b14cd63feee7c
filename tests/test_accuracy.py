"""SPEC accuracy clause: large offsets and more than 2**24 values per channel.

float32: mean within 1e-6 of the scale of the data (max |x|), variance
within 1e-4 relative; float64: within 1e-10 relative of the float64
two-pass reference (run on the very same input values).
"""

from __future__ import annotations

import numpy as np
import pytest

import fastbn
import reference as ref
from helpers import LAYOUTS, channel_shape, check_stats, data_scale, make_shape

EPS = 1e-5


def _offset_data(rng, shape, layout, dtype, ratio, std):
    C = shape[ref.channel_axis(len(shape), layout)]
    cs = channel_shape(len(shape), layout, C)
    signs = np.where(np.arange(C) % 2 == 0, 1.0, -1.0)  # both signs of mean
    loc = (ratio * std * signs).reshape(cs)
    return (loc + std * rng.standard_normal(shape)).astype(dtype)


@pytest.mark.parametrize("size", ["small", "large"])
@pytest.mark.parametrize("ratio", [1e3, 1e4])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_large_offset(rng, layout, dtype, ratio, size):
    """|mean| = ratio * std (std = 0.01 and 100 for different channels' scale)."""
    spatial = (5, 7) if size == "small" else (64, 67)
    for std in (0.01, 100.0):
        shape = make_shape(4, layout, 4, 3, spatial)
        x = _offset_data(rng, shape, layout, dtype, ratio, std)
        mean, var = fastbn.batch_stats(x, layout=layout)
        rmean, rvar = ref.stats(x, layout)
        check_stats(mean, var, rmean, rvar, dtype, data_scale(x),
                    what=f"std={std}")
        # the normalised output: O(1) values
        y, _ = fastbn.batch_norm_forward(x, layout=layout, eps=EPS)
        ry, _, _ = ref.forward_train(x, eps=EPS, layout=layout)
        if dtype == np.float64:
            atol = 1e-8
        else:
            # normalising with a float32-rounded mean: off by ulp(mean)/std
            atol = 1e-5 + float(np.max(np.spacing(np.abs(rmean).astype(np.float32))
                                       / np.sqrt(rvar + EPS)))
        np.testing.assert_allclose(y, ry, rtol=1e-5, atol=atol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_large_offset_running_stats_and_grads(rng, dtype):
    x = _offset_data(rng, (64, 2, 33), "NCHW", dtype, 1e4, 1.0)
    rm = np.zeros(2, dtype)
    rv = np.ones(2, dtype)
    _, cache = fastbn.batch_norm_forward(x, running_mean=rm, running_var=rv,
                                         momentum=1.0)
    rmean, rvar = ref.stats(x)
    m = x.size // 2
    check_stats(rm, rv * (m - 1) / m, rmean, rvar, dtype, data_scale(x))
    dy = rng.standard_normal(x.shape).astype(dtype)
    dx, dw, db = fastbn.batch_norm_backward(dy, cache)
    rdx, rdw, rdb = ref.backward_train(dy, x, eps=EPS)
    t = 1e-9 if dtype == np.float64 else 1e-3
    np.testing.assert_allclose(dx, rdx, rtol=t, atol=t * np.abs(rdx).max())
    np.testing.assert_allclose(db, rdb, rtol=t, atol=t * np.abs(dy).sum() / 2)
    np.testing.assert_allclose(dw, rdw, rtol=t, atol=t * np.abs(dy).sum())


@pytest.mark.parametrize("layout", LAYOUTS)
def test_more_than_2_24_values_per_channel(rng, layout):
    """A float32 running sum stalls at 2**24: one channel of ~17.04M values
    around 3.0 (a sequential float32 sum gives a mean ~11 % off)."""
    n = 2**24 + 2**18
    if layout == "NHWC":
        shape = (n, 1)
    else:
        shape = (1, 1, n)
    x = rng.standard_normal(n, dtype=np.float32)
    x *= np.float32(0.5)
    x += np.float32(3.0)
    x = x.reshape(shape)
    mean, var = fastbn.batch_stats(x, layout=layout)
    rmean, rvar = ref.stats(x, layout)
    check_stats(mean, var, rmean, rvar, np.float32, data_scale(x))
    rm = np.zeros(1, np.float32)
    rv = np.ones(1, np.float32)
    y, _ = fastbn.batch_norm_forward(x, running_mean=rm, running_var=rv,
                                     momentum=1.0, layout=layout)
    np.testing.assert_allclose(rm, rmean, rtol=0, atol=1e-6 * data_scale(x))
    np.testing.assert_allclose(rv, rvar * n / (n - 1), rtol=1e-4)
    # y is normalised: its mean ~0 and variance ~1 (in float64)
    y64 = y.astype(np.float64)
    assert abs(y64.mean()) < 1e-4
    assert abs(y64.var() - rvar[0] / (rvar[0] + EPS)) < 1e-4
    del y, y64


def test_float64_many_values_large_offset(rng):
    """float64, 1e4 offset, ~2M values in one channel: 1e-10 relative."""
    x = 1e4 + rng.standard_normal((1 << 21, 1))
    mean, var = fastbn.batch_stats(x, layout="NHWC")
    rmean, rvar = ref.stats(x, "NHWC")
    np.testing.assert_allclose(mean, rmean, rtol=1e-10)
    np.testing.assert_allclose(var, rvar, rtol=1e-10)


@pytest.mark.parametrize("path", ["two-pass serial", "two-pass parallel", "fused"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(7, 5), (3, 5, 3, 7), (2, 16, 33, 40)],
                         ids=["rank2", "short-runs", "long-runs"])
def test_constant_channels_are_exact(rng, monkeypatch, shape, layout, dtype, path):
    """A channel whose values are all equal: mean exactly that value,
    variance exactly 0, output exactly bias (training and eval), whatever
    the value's magnitude, also with eps = 0, on every kernel path (the
    walk, channels-first and channels-last reductions, fused or not, serial
    or parallel). MyGrad's property tests found an ulp off here."""
    from dataclasses import replace

    from fastbn import _choices, _jit

    fused = path == "fused"
    monkeypatch.setattr(_jit, "PARALLEL_MIN_SIZE", 1 if path != "two-pass serial" else 1 << 40)
    monkeypatch.setattr(_choices, "CHOICES", replace(
        _choices.CHOICES, fused_max_channel_bytes=(1 << 40) * fused))
    if layout == "NHWC" and len(shape) == 4:
        shape = (shape[0], shape[2], shape[3], shape[1])
    ax = ref.channel_axis(len(shape), layout)
    C = shape[ax]
    for trial in range(6):
        value = (rng.standard_normal(C) * 10.0 ** rng.integers(-6, 9, C)).astype(dtype)
        value[0] = dtype(699050.78)
        x = np.broadcast_to(value.reshape(channel_shape(len(shape), layout, C)), shape).copy()
        bias = rng.standard_normal(C).astype(dtype)
        weight = rng.standard_normal(C).astype(dtype)
        for eps in (1e-20, 0.0):
            rm, rv = np.zeros(C), np.ones(C)
            y, cache = fastbn.batch_norm_forward(x, weight, bias, eps=eps, layout=layout,
                                                 running_mean=rm, running_var=rv)
            expected = np.broadcast_to(bias.reshape(channel_shape(len(shape), layout, C)), shape)
            np.testing.assert_array_equal(cache.mean, value.astype(np.float64))
            np.testing.assert_array_equal(cache.var, 0.0)
            np.testing.assert_array_equal(y, expected)
            # eval with those running statistics after a full update
            rm[...], rv[...] = value, 0.0
            y, _ = fastbn.batch_norm_forward(x, weight, bias, training=False, eps=eps,
                                             running_mean=rm, running_var=rv, layout=layout)
            np.testing.assert_array_equal(y, expected)
