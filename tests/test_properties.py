"""Hypothesis property tests over shapes, layouts, strides and dtypes."""

from __future__ import annotations

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

import fastbn
import reference as ref
from helpers import (
    VARIANTS,
    as_variant,
    check_grads,
    check_stats,
    check_y,
    data_scale,
    make_shape,
)

EPS = 1e-5


@st.composite
def cases(draw, min_values=2):
    rank = draw(st.integers(2, 5))
    layout = draw(st.sampled_from(["NCHW", "NHWC"]))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    C = draw(st.sampled_from([1, 2, 3, 7, 16]))
    N = draw(st.integers(1, 5))
    spatial = tuple(draw(st.lists(st.integers(1, 6), min_size=rank - 2,
                                  max_size=rank - 2)))
    shape = make_shape(rank, layout, N, C, spatial)
    if np.prod(shape) // C < min_values:
        shape = make_shape(rank, layout, N + 1, C, spatial)  # N=2 at least
    kind = draw(st.sampled_from(VARIANTS))
    seed = draw(st.integers(0, 2**32 - 1))
    loc = draw(st.sampled_from([0.0, 5.0, -300.0]))
    constant_channel = draw(st.booleans())
    return rank, layout, dtype, shape, kind, seed, loc, constant_channel


def _data(shape, layout, dtype, seed, loc, constant_channel):
    rng = np.random.default_rng(seed)
    x = loc + rng.standard_normal(shape) * rng.uniform(0.1, 3.0)
    if constant_channel:
        idx = [slice(None)] * len(shape)
        idx[ref.channel_axis(len(shape), layout)] = 0
        x[tuple(idx)] = loc + 0.5
    return x.astype(dtype), rng


# the smallest cases named in the issue: C=1, H=W=1, N=2 (m = 2)
EXAMPLES = [
    (4, "NCHW", np.float32, (2, 1, 1, 1), "contiguous", 0, 0.0, False),
    (4, "NHWC", np.float64, (2, 1, 1, 3), "stepped", 1, 5.0, False),
    (2, "NCHW", np.float32, (2, 1), "negative", 2, -300.0, True),
    (5, "NHWC", np.float32, (2, 1, 1, 1, 16), "other_physical", 3, 0.0, True),
    (3, "NCHW", np.float64, (2, 7, 1), "broadcast", 4, 5.0, False),
]


def with_examples(test):
    for case in EXAMPLES:
        test = example(case)(test)
    return test


@settings(max_examples=60)
@with_examples
@given(cases())
def test_training_forward_backward_property(case):
    rank, layout, dtype, shape, kind, seed, loc, constant = case
    x0, rng = _data(shape, layout, dtype, seed, loc, constant)
    x = as_variant(x0, kind, layout)
    C = ref.num_channels(shape, layout)
    w = rng.uniform(0.5, 2.0, C).astype(dtype)
    b = rng.uniform(-1.0, 1.0, C).astype(dtype)
    rm, rv = np.zeros(C, dtype), np.ones(C, dtype)

    mean, var = fastbn.batch_stats(x, layout=layout)
    rmean, rvar = ref.stats(x, layout)
    check_stats(mean, var, rmean, rvar, dtype, data_scale(x))

    y, cache = fastbn.batch_norm_forward(x, w, b, running_mean=rm, running_var=rv,
                                         layout=layout)
    ry = ref.forward_train(x, w, b, EPS, layout)[0]
    check_y(y, ry, dtype)
    m = x.size // C
    erm, erv = ref.update_running(np.zeros(C), np.ones(C), rmean, rvar, m, 0.1)
    np.testing.assert_allclose(rm, erm, rtol=1e-6, atol=1e-6 * data_scale(x))
    np.testing.assert_allclose(rv, erv, rtol=1e-4, atol=1e-7 * data_scale(x) ** 2)

    dy = as_variant(rng.standard_normal(shape).astype(dtype),
                    VARIANTS[(VARIANTS.index(kind) + 1) % len(VARIANTS)], layout)
    grads = fastbn.batch_norm_backward(dy, cache)
    check_grads(grads, ref.backward_train(dy, x, w, EPS, layout), dy, x, w,
                rmean, rvar, EPS, dtype, layout)


@settings(max_examples=40)
@with_examples
@given(cases(min_values=1))
def test_eval_forward_backward_property(case):
    rank, layout, dtype, shape, kind, seed, loc, constant = case
    x0, rng = _data(shape, layout, dtype, seed, loc, constant)
    x = as_variant(x0, kind, layout)
    C = ref.num_channels(shape, layout)
    w = rng.uniform(-2.0, 2.0, C).astype(dtype)
    b = rng.uniform(-1.0, 1.0, C).astype(dtype)
    rm = (loc + rng.uniform(-1.0, 1.0, C)).astype(dtype)
    rv = rng.uniform(0.1, 4.0, C).astype(dtype)
    y, cache = fastbn.batch_norm_forward(x, w, b, training=False, running_mean=rm,
                                         running_var=rv, layout=layout)
    ry = ref.forward_eval(x, w, b, rm, rv, EPS, layout)
    # the fused map x * scale + shift loses up to ulp(|x| * scale) to
    # cancellation when |x| >> |x - mean|
    t = 1e-10 if dtype == np.float64 else 1e-5
    scale = float(np.max(np.abs(w) / np.sqrt(rv.astype(np.float64) + EPS)))
    np.testing.assert_allclose(y, ry, rtol=t, atol=t * max(1.0, data_scale(x) * scale))
    dy = rng.standard_normal(shape).astype(dtype)
    grads = fastbn.batch_norm_backward(dy, cache)
    check_grads(grads, ref.backward_eval(dy, x, w, rm, rv, EPS, layout), dy, x, w,
                rm, rv, EPS, dtype, layout)


@settings(max_examples=15)
@given(cases())
def test_layout_and_strides_do_not_change_results(case):
    """The same logical data in two memory layouts gives the same values, and
    NCHW data moved to NHWC gives the same statistics."""
    rank, layout, dtype, shape, kind, seed, loc, constant = case
    x0, _ = _data(shape, layout, dtype, seed, loc, constant)
    x = as_variant(x0, kind if kind != "broadcast" else "negative", layout)
    y1, _ = fastbn.batch_norm_forward(x0, layout=layout)
    y2, _ = fastbn.batch_norm_forward(x, layout=layout)
    check_y(y2, y1.astype(np.float64), dtype)
    ax = ref.channel_axis(len(shape), layout)
    other = "NHWC" if layout == "NCHW" else "NCHW"
    moved = np.moveaxis(x0, ax, ref.channel_axis(len(shape), other))
    m1, v1 = fastbn.batch_stats(x0, layout=layout)
    m2, v2 = fastbn.batch_stats(moved, layout=other)
    check_stats(m2, v2, m1.astype(np.float64), v1.astype(np.float64), dtype,
                data_scale(x0))
