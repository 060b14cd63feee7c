"""Hypothesis properties of LayerNorm, GroupNorm and InstanceNorm over shapes,
ranks, layouts, strides and dtypes; relations between the three; gradients
against central finite differences (float64)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from family_helpers import EPS, Norm, check_forward, check_grads
from helpers import VARIANTS, as_variant, check_y
from test_gradients import _numeric_grad  # central differences, h = 1e-6


@st.composite
def norms(draw, kinds=("layer", "group", "instance")):
    kind = draw(st.sampled_from(kinds))
    rank = draw(st.integers(3 if kind == "instance" else 2, 5))
    layout = "NCHW" if kind == "layer" else draw(st.sampled_from(["NCHW", "NHWC"]))
    N = draw(st.integers(1, 4))
    per, groups = draw(st.sampled_from([1, 2, 3])), draw(st.sampled_from([1, 2, 4]))
    spatial = draw(st.lists(st.integers(1, 6), min_size=rank - 2, max_size=rank - 2))
    if kind == "instance" and np.prod(spatial) < 2:
        spatial[-1] = 2
    C = per * groups
    shape = (N, C, *spatial) if layout == "NCHW" else (N, *spatial, C)
    if kind == "layer":
        k = draw(st.integers(1, rank - 1))
        ns = shape[rank - k:]
        arg = ns[0] if k == 1 and draw(st.booleans()) else ns
        return Norm(kind, shape, arg)
    return Norm(kind, shape, groups if kind == "group" else None, layout)


@settings(max_examples=40)
@given(norms(), st.sampled_from(VARIANTS), st.sampled_from([np.float32, np.float64]),
       st.sampled_from([0.0, 5.0, -300.0]), st.integers(0, 2**32 - 1))
def test_forward_backward_property(norm, kind, dtype, loc, seed):
    rng = np.random.default_rng(seed)
    x = as_variant(norm.data(rng, dtype, loc=loc), kind, norm.layout)
    dy = as_variant(rng.standard_normal(norm.shape).astype(dtype),
                    VARIANTS[(VARIANTS.index(kind) + 1) % len(VARIANTS)], norm.layout)
    w, b = norm.params(rng, dtype)
    y, cache = norm.forward(x, w, b)
    check_forward(norm, x, y, cache, *norm.reference(x, w, b), dtype)
    check_grads(norm, norm.backward(dy, cache), norm.reference_backward(dy, x, w),
                dy, x, w, EPS, dtype)


@settings(max_examples=15)
@given(norms(kinds=("group", "instance")), st.integers(0, 2**32 - 1))
def test_layout_does_not_change_results(norm, seed):
    """The same data with the channel axis moved to the other layout gives
    the same output, moved likewise."""
    rng = np.random.default_rng(seed)
    x = norm.data(rng, np.float64)
    w, b = norm.params(rng, np.float64)
    src, dst = (1, -1) if norm.layout == "NCHW" else (-1, 1)
    x2 = np.moveaxis(x, src, dst)
    other = replace(norm, layout="NHWC" if norm.layout == "NCHW" else "NCHW", shape=x2.shape)
    y, _ = norm.forward(x, w, b)
    y2, _ = other.forward(x2, w, b)
    check_y(np.moveaxis(y2, dst, src), y.astype(np.float64), np.float64)


@settings(max_examples=15)
@given(norms(kinds=("instance",)), st.sampled_from([np.float32, np.float64]),
       st.integers(0, 2**32 - 1))
def test_relations_between_the_norms(norm, dtype, seed):
    """Without affine parameters, LayerNorm over all but N is GroupNorm with
    one group, and InstanceNorm is GroupNorm with C groups."""
    x = norm.data(np.random.default_rng(seed), dtype)
    layer = Norm("layer", norm.shape, norm.shape[1:])
    for n, groups in ((layer, 1), (norm, norm.channels)):
        g = replace(norm, kind="group", arg=groups)
        check_y(n.forward(x)[0], g.forward(x)[0].astype(np.float64), dtype, what=str(n))


# --- finite differences --------------------------------------------------------------

FD_CASES = [Norm("layer", (3, 4), 4), Norm("layer", (2, 2, 3), (2, 3)),
            Norm("group", (2, 4, 3), 2), Norm("group", (2, 2, 2, 4), 2, "NHWC"),
            Norm("group", (3, 4), 2), Norm("instance", (2, 3, 4)),
            Norm("instance", (2, 2, 1, 3), None, "NHWC"),
            Norm("instance", (2, 1, 2, 2, 2))]


FD_PARAMS = [pytest.param(n, True, id=str(n)) for n in FD_CASES] + [
    pytest.param(n, False, id=f"{n}-running") for n in FD_CASES if n.kind == "instance"]


@pytest.mark.parametrize("norm,use_input_stats", FD_PARAMS)
def test_finite_differences(rng, norm, use_input_stats):
    """fastbn's gradients, and the reference's, against central differences
    of sum(dy * y) computed with fastbn's forward and the reference's."""
    x = norm.data(rng, np.float64)
    w, b = norm.params(rng, np.float64)
    dy = rng.standard_normal(norm.shape)
    kw = {}
    if not use_input_stats:
        kw = dict(use_input_stats=False, running_mean=rng.uniform(-1, 1, norm.channels),
                  running_var=rng.uniform(0.5, 2, norm.channels))
    _, cache = norm.forward(x, w, b, **kw)
    for forward, grads in ((norm.forward, norm.backward(dy, cache)),
                           (norm.reference, norm.reference_backward(dy, x, w, **kw))):
        def loss(forward=forward):
            return float(np.sum(dy * forward(x, w, b, **kw)[0]))

        for got, a, what in zip(grads, (x, w, b), ("dx", "dweight", "dbias")):
            np.testing.assert_allclose(got, _numeric_grad(loss, a), rtol=1e-6, atol=1e-7,
                                       err_msg=f"{forward.__name__} {what}")
