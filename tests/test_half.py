"""float16 as a storage format (SPEC "Dtypes"): computed in float32, results
within one float16 ulp of the float64 reference's rounding, for the
functional API, the layer, out=, eval and batch_stats; the cache keeps the
float16 input."""

from __future__ import annotations

import numpy as np
import pytest

import fastbn
import reference as ref
from helpers import LAYOUTS, make_shape


def _within_one_ulp(got, want, what):
    assert got.dtype == np.float16, what
    ulp = np.spacing(np.abs(want).astype(np.float16)).astype(np.float64)
    worst = np.max(np.abs(got.astype(np.float64) - want) / ulp)
    assert worst <= 1.0, f"{what}: {worst:.2f} float16 ulps from the float64 reference"


@pytest.mark.parametrize("rank", [2, 4])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_float16_forward_backward(rng, layout, rank):
    shape = make_shape(rank, layout, 8, 5)
    x = (rng.standard_normal(shape) * 3 + 2).astype(np.float16)
    dy = rng.standard_normal(shape).astype(np.float16)
    C = shape[ref.channel_axis(rank, layout)]
    w, b = rng.standard_normal(C).astype(np.float16), rng.standard_normal(C).astype(np.float16)
    x64, dy64, w64, b64 = (a.astype(np.float64) for a in (x, dy, w, b))
    rm, rv = np.zeros(C, np.float16), np.ones(C, np.float16)
    y, cache = fastbn.batch_norm_forward(x, w, b, running_mean=rm, running_var=rv, layout=layout)
    assert cache.x is x
    y_ref, _, _ = ref.forward_train(x64, w64, b64, 1e-5, layout)
    _within_one_ulp(y, y_ref, "y")
    dx, dw, db = fastbn.batch_norm_backward(dy, cache)
    dx_ref, dw_ref, db_ref = ref.backward_train(dy64, x64, w64, 1e-5, layout)
    _within_one_ulp(dx, dx_ref, "dx")
    _within_one_ulp(dw, dw_ref, "dweight")
    _within_one_ulp(db, db_ref, "dbias")
    out = np.empty_like(x)
    assert fastbn.batch_norm_backward(dy, cache, out=out)[0] is out
    np.testing.assert_array_equal(out, dx)
    mean, var = ref.stats(x64, layout)
    m = x.size // C
    rm_ref, rv_ref = ref.update_running(np.zeros(C), np.ones(C), mean, var, m, 0.1)
    _within_one_ulp(rm, rm_ref, "running_mean")
    _within_one_ulp(rv, rv_ref, "running_var")
    ye, ce = fastbn.batch_norm_forward(x, w, b, training=False, running_mean=rm,
                                       running_var=rv, layout=layout)
    _within_one_ulp(ye, ref.forward_eval(x64, w64, b64, rm.astype(np.float64),
                                         rv.astype(np.float64), 1e-5, layout), "eval y")
    m16, v16 = fastbn.batch_stats(x, layout=layout)
    _within_one_ulp(m16, mean, "batch mean")
    _within_one_ulp(v16, var, "batch var")


def test_float16_layer_and_errors(rng):
    x = rng.standard_normal((6, 3, 4)).astype(np.float16)
    bn = fastbn.BatchNorm(3, dtype=np.float16)
    assert bn.weight.dtype == bn.running_var.dtype == np.float16
    y = bn.forward(x)
    dx = bn.backward(np.ones_like(y))
    assert y.dtype == dx.dtype == bn.grad_weight.dtype == np.float16
    assert bn.num_batches_tracked == 1
    with pytest.raises(ValueError, match="dy"):
        bn.backward(np.ones(x.shape, np.float32))  # dy must have x's dtype
    y32, _ = fastbn.batch_norm_forward(x.astype(np.float32))
    np.testing.assert_array_equal(y, y32.astype(np.float16))
