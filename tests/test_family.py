"""LayerNorm, GroupNorm and InstanceNorm functional API against the float64
reference (SPEC "The normalization family"): every rank and layout, float16/
32/64, every memory layout of x and dy, out=, no affine, running statistics,
accuracy at large offsets, constant rows, non-finite input."""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pytest

import fastbn
from fastbn.kernels import BLOCK
import reference_family as ref
from family_helpers import (
    EPS,
    Norm,
    all_cases,
    check_forward,
    check_grads,
    group_cases,
    ids,
    instance_cases,
    layer_cases,
    within_float16_ulp,
)
from helpers import (
    DTYPES,
    VARIANTS,
    as_variant,
    assert_message,
    channel_shape,
    check_stats,
    check_y,
    data_scale,
    tol,
)

CASES = all_cases() + all_cases(medium=True)
#: one small and one medium case of every norm (and layout)
FEW = (layer_cases()[2:4] + layer_cases(True)[:1] + group_cases()[2::4]
       + group_cases(True) + instance_cases()[1::3] + instance_cases(True))
INSTANCE = instance_cases() + instance_cases(True)
DT = pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])


@DT
@pytest.mark.parametrize("norm", CASES, ids=ids(CASES))
def test_forward_backward(rng, norm, dtype):
    """y, cache.mean/var, dx, dweight and dbias match the reference for every
    memory layout of x and of dy (transposed, stepped, negative, read-only,
    broadcast), with and without out=; x and dy are never written."""
    x0 = norm.data(rng, dtype)
    dy0 = rng.standard_normal(norm.shape).astype(dtype)
    w, b = norm.params(rng, dtype)
    for i, kind in enumerate(VARIANTS):
        x = as_variant(x0, kind, norm.layout)
        dy = as_variant(dy0, VARIANTS[(i + 3) % len(VARIANTS)], norm.layout)
        x_before, dy_before = x.copy(), dy.copy()
        out = np.full(norm.shape, 7.0, dtype) if i % 2 else None
        y, cache = norm.forward(x, w, b, out=out)
        assert out is None or y is out, kind
        check_forward(norm, x, y, cache, *norm.reference(x, w, b), dtype)
        grads = norm.backward(dy, cache)
        check_grads(norm, grads, norm.reference_backward(dy, x, w), dy, x, w, EPS, dtype)
        np.testing.assert_array_equal(x, x_before, err_msg=kind)
        np.testing.assert_array_equal(dy, dy_before, err_msg=kind)


@pytest.mark.parametrize("norm", FEW, ids=ids(FEW))
def test_float16(rng, norm):
    """float16 storage: y, dx, dweight and dbias within one float16 ulp of the
    float64 reference; y is the float32 computation rounded once. Medium
    shapes (thousands of values per statistic) get the float32 tolerance on
    top: their float32 statistics are ~1e-6 off, more than a float16 ulp of
    an output near 0 (BatchNorm's kernels alike)."""
    x = norm.data(rng, np.float16)
    dy = rng.standard_normal(norm.shape).astype(np.float16)
    w, b = norm.params(rng, np.float16)
    x64, dy64, w64, b64 = (a.astype(np.float64) for a in (x, dy, w, b))
    y, cache = norm.forward(x, w, b)
    ry, rmean, rvar = norm.reference(x64, w64, b64)
    check_forward(norm, x64, y, cache, ry, rmean, rvar, np.float16)
    got = (y, *norm.backward(dy, cache))
    want = (ry, *norm.reference_backward(dy64, x64, w64))
    for g, r, what in zip(got, want, ("y", "dx", "dweight", "dbias")):
        slack = 0.0 if x.size < 1 << 15 else tol(np.float32) * float(np.abs(r).max())
        within_float16_ulp(g, r, what, slack)
    y32, _ = norm.forward(x.astype(np.float32), w.astype(np.float32), b.astype(np.float32))
    np.testing.assert_array_equal(y, y32.astype(np.float16))
    out = np.empty_like(x)
    assert norm.forward(x, w, b, out=out)[0] is out
    np.testing.assert_array_equal(out, y)


@pytest.mark.parametrize("norm", FEW, ids=ids(FEW))
def test_no_affine(rng, norm):
    """weight=None means ones and bias=None zeros; dweight and dbias are still
    returned (shaped like the parameters)."""
    x = norm.data(rng, np.float64)
    dy = rng.standard_normal(norm.shape)
    w, b = norm.params(rng, np.float64)
    for ww, bb in ((None, None), (w, None), (None, b)):
        y, cache = norm.forward(x, ww, bb)
        check_y(y, norm.reference(x, ww, bb)[0], np.float64, what=f"{ww is None}, {bb is None}")
        check_grads(norm, norm.backward(dy, cache), norm.reference_backward(dy, x, ww),
                    dy, x, ww, EPS, np.float64)


@pytest.mark.parametrize("norm", FEW[3:6] + FEW[-4:], ids=ids(FEW[3:6] + FEW[-4:]))
def test_channel_broadcastable_parameters(rng, norm):
    """GroupNorm/InstanceNorm parameters of any shape that broadcasts along
    the channel axis give the results of (C,) vectors."""
    x = norm.data(rng, np.float64)
    dy = rng.standard_normal(norm.shape)
    w, b = norm.params(rng, np.float64)
    y0, c0 = norm.forward(x, w, b)
    g0 = norm.backward(dy, c0)
    full = channel_shape(len(norm.shape), norm.layout, norm.channels)
    for s in {full, full[1:] if norm.layout == "NCHW" else (1, norm.channels)}:
        y, c = norm.forward(x, w.reshape(s), b.reshape(s))
        np.testing.assert_array_equal(y, y0, err_msg=str(s))
        for got, want in zip(norm.backward(dy, c), g0):
            np.testing.assert_allclose(np.reshape(got, np.shape(want)), want, rtol=1e-14,
                                       atol=1e-14, err_msg=str(s))


@pytest.mark.parametrize("xdtype,pdtype", [(np.float32, np.float64), (np.float64, np.float32),
                                           (np.float32, np.float16)], ids=["x32p64", "x64p32",
                                                                           "x32p16"])
@pytest.mark.parametrize("norm", FEW, ids=ids(FEW))
def test_parameters_of_another_dtype(rng, norm, xdtype, pdtype):
    """Parameters of another float dtype act as cast to x's dtype; y, dx and
    the parameter gradients have x's dtype."""
    x = norm.data(rng, xdtype)
    w, b = norm.params(rng, pdtype)
    y, cache = norm.forward(x, w, b)
    y_cast, _ = norm.forward(x, w.astype(xdtype), b.astype(xdtype))
    assert y.dtype == xdtype
    check_y(y, y_cast.astype(np.float64), xdtype)
    dx, dw, db = norm.backward(np.ones_like(x), cache)
    assert dx.dtype == dw.dtype == db.dtype == xdtype


@pytest.mark.parametrize("norm", FEW, ids=ids(FEW))
def test_cache_is_small(rng, norm):
    """The cache refers to x and holds nothing of x's size besides (nor y)."""
    from test_functional import _arrays_reachable

    x = norm.data(rng, np.float32)
    y, cache = norm.forward(x)
    arrays = _arrays_reachable(cache)
    assert any(np.shares_memory(a, x) for a in arrays)
    for a in arrays:
        if not np.shares_memory(a, x):
            assert not np.shares_memory(a, y), "cache keeps y alive"
            assert a.size < x.size // 4, f"cache holds an array of shape {a.shape}"


def test_integer_arguments_of_any_integral_type(rng):
    """normalized_shape as int, tuple, list or NumPy integers; num_groups as a
    NumPy integer: the same results."""
    x = rng.standard_normal((3, 4, 5))
    y, _ = fastbn.layer_norm_forward(x, (5,))
    for ns in (5, [5], np.int64(5), (np.int32(5),)):
        np.testing.assert_array_equal(fastbn.layer_norm_forward(x, ns)[0], y, err_msg=repr(ns))
    np.testing.assert_array_equal(fastbn.group_norm_forward(x, np.int64(2))[0],
                                  fastbn.group_norm_forward(x, 2)[0])


# --- InstanceNorm running statistics --------------------------------------------

@DT
@pytest.mark.parametrize("norm", INSTANCE, ids=ids(INSTANCE))
def test_instance_running_stats(rng, norm, dtype):
    """Training with running statistics: normalized with the input statistics,
    running stats updated in place with the mean over samples of the
    per-instance mean and unbiased variance; momentum 0 keeps them."""
    x = norm.data(rng, dtype)
    w, b = norm.params(rng, dtype)
    C = norm.channels
    rm0, rv0 = rng.uniform(-1, 1, C).astype(dtype), rng.uniform(0.5, 2, C).astype(dtype)
    for momentum in (0.1, 0.0, 1.0):
        rm, rv = rm0.copy(), rv0.copy()
        y, cache = norm.forward(x, w, b, running_mean=rm, running_var=rv, momentum=momentum)
        assert rm.dtype == rv.dtype == dtype
        check_forward(norm, x, y, cache, *norm.reference(x, w, b), dtype)
        erm, erv = ref.instance_norm_running(rm0, rv0, x, momentum, norm.layout)
        t = 1e-12 if dtype == np.float64 else 1e-6
        np.testing.assert_allclose(rm, erm, rtol=t, atol=t * data_scale(x))
        np.testing.assert_allclose(rv, erv, rtol=100 * t, atol=t * data_scale(x) ** 2)
        if momentum == 0.0:
            np.testing.assert_array_equal(rm, rm0)
            np.testing.assert_array_equal(rv, rv0)


@pytest.mark.parametrize("rdtype", [np.float16, np.float64], ids=["r16", "r64"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_instance_running_stats_shape_and_dtype(rng, layout, rdtype):
    """Running statistics of a channel-broadcastable shape and another float
    dtype are updated in place, in their own shape and dtype."""
    norm = instance_cases(layouts=(layout,))[1]
    C = norm.channels
    x = norm.data(rng, np.float32)
    s = channel_shape(len(norm.shape), layout, C)
    rm, rv = np.zeros(s, rdtype), np.ones(s, rdtype)
    norm.forward(x, running_mean=rm, running_var=rv, momentum=0.5)
    assert rm.shape == rv.shape == s and rm.dtype == rv.dtype == rdtype
    erm, erv = ref.instance_norm_running(np.zeros(C), np.ones(C), x, 0.5, layout)
    t = 1e-3 if rdtype == np.float16 else 1e-6
    np.testing.assert_allclose(rm.reshape(C), erm, rtol=t, atol=t)
    np.testing.assert_allclose(rv.reshape(C), erv, rtol=t, atol=t)


@DT
@pytest.mark.parametrize("norm", INSTANCE, ids=ids(INSTANCE))
def test_instance_eval_with_running_stats(rng, norm, dtype):
    """use_input_stats=False: normalized with the running statistics (cache.mean/
    var are them broadcast to (N, C)), which stay as they were; the backward
    treats them as constants."""
    x = norm.data(rng, dtype)
    dy = rng.standard_normal(norm.shape).astype(dtype)
    w, b = norm.params(rng, dtype)
    C = norm.channels
    rm, rv = rng.uniform(-1, 1, C).astype(dtype), rng.uniform(0.5, 2, C).astype(dtype)
    rm0, rv0 = rm.copy(), rv.copy()
    stats = dict(use_input_stats=False, running_mean=rm0, running_var=rv0)
    y, cache = norm.forward(x, w, b, use_input_stats=False, running_mean=rm, running_var=rv)
    np.testing.assert_array_equal(rm, rm0)
    np.testing.assert_array_equal(rv, rv0)
    ry, rmean, rvar = norm.reference(x, w, b, **stats)
    check_forward(norm, x, y, cache, ry, rmean, rvar, dtype)
    np.testing.assert_array_equal(cache.mean, np.broadcast_to(rm0.astype(np.float64), (len(x), C)))
    check_grads(norm, norm.backward(dy, cache), norm.reference_backward(dy, x, w, **stats),
                dy, x, w, EPS, dtype, **stats)


def test_instance_eval_one_spatial_value(rng):
    """With the running statistics, one spatial value per instance is fine."""
    norm = Norm("instance", (3, 4, 1))
    x = norm.data(rng, np.float64)
    rm, rv = rng.uniform(-1, 1, 4), rng.uniform(0.5, 2, 4)
    stats = dict(use_input_stats=False, running_mean=rm, running_var=rv)
    y, _ = norm.forward(x, **stats)
    check_y(y, norm.reference(x, **stats)[0], np.float64)


# --- accuracy, constant rows, non-finite input -------------------------------------

OFFSET_CASES = FEW + [Norm("layer", (3, 700), 700)]


@DT
@pytest.mark.parametrize("norm", OFFSET_CASES, ids=ids(OFFSET_CASES))
def test_large_offset(rng, norm, dtype):
    """|mean| = 1e4 * std: statistics within SPEC's bounds (float32: mean
    within 1e-6 of the data's scale, variance 1e-4 relative), y close."""
    signs = np.where(np.arange(norm.shape[0]) % 2 == 0, 1.0, -1.0)
    signs = signs.reshape((-1,) + (1,) * (len(norm.shape) - 1))
    for std in (0.01, 100.0):
        x = (1e4 * std * signs + std * rng.standard_normal(norm.shape)).astype(dtype)
        y, cache = norm.forward(x)
        ry, rmean, rvar = norm.reference(x)
        check_stats(cache.mean, cache.var, rmean, rvar, dtype, data_scale(x), what=f"std={std}")
        # normalizing with a mean rounded to x's dtype: off by ulp(mean) / std
        ulp = np.spacing(np.abs(rmean).astype(dtype)).astype(np.float64)
        atol = 1e-8 if dtype == np.float64 else 1e-5 + float(np.max(ulp / np.sqrt(rvar + EPS)))
        np.testing.assert_allclose(y, ry, rtol=1e-5, atol=atol)


CONSTANT_CASES = FEW + [Norm("group", (3, 6), 3)]


@pytest.mark.parametrize("eps", [EPS, 0.0], ids=["eps", "eps0"])
@pytest.mark.parametrize("dtype", [np.float16, *DTYPES], ids=["f16", "f32", "f64"])
@pytest.mark.parametrize("norm", CONSTANT_CASES, ids=ids(CONSTANT_CASES))
def test_constant_row_is_bias(rng, norm, dtype, eps):
    """A row (LayerNorm) or group whose values are all equal has an exact
    mean, variance exactly 0, and normalizes to exactly bias."""
    x = norm.data(rng, dtype)
    w, b = norm.params(rng, dtype)
    idx, stat = norm.row(sample=len(x) - 1, row=0)
    x[idx] = 12.375
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no 0/0 warning either
        y, cache = norm.forward(x, w, b, eps=eps)
    np.testing.assert_array_equal(y[idx], norm.expand(b)[idx])
    assert cache.mean[stat] == 12.375 and cache.var[stat] == 0.0
    assert np.isfinite(y).all()
    if eps:
        dx, _, _ = norm.backward(np.ones_like(x), cache)
        assert np.isfinite(dx).all()


@pytest.mark.parametrize("value", [np.nan, np.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("norm", FEW, ids=ids(FEW))
def test_non_finite_row(rng, norm, value):
    """A non-finite value makes its own row NaN and leaves the others as the
    reference says; InstanceNorm's running statistics are not updated and a
    RuntimeWarning says so."""
    x = norm.data(rng, np.float32)
    idx, _ = norm.row(sample=len(x) - 1, row=0)
    x[idx].flat[0] = value
    kw = {}
    if norm.kind == "instance":
        rm, rv = np.zeros(norm.channels, np.float32), np.ones(norm.channels, np.float32)
        kw = dict(running_mean=rm, running_var=rv)
        with pytest.warns(RuntimeWarning):
            y, _ = norm.forward(x, **kw)
        np.testing.assert_array_equal(rm, 0.0)
        np.testing.assert_array_equal(rv, 1.0)
    else:
        y, _ = norm.forward(x)
    assert np.isnan(y[idx]).all()
    others = np.ones(norm.shape, bool)
    others[idx] = False
    with np.errstate(all="ignore"):
        ry = norm.reference(x)[0]
    check_y(y[others], ry[others], np.float32)


# --- errors ------------------------------------------------------------------------

ERROR_NORMS = {"layer": Norm("layer", (4, 3, 5), (3, 5)), "group": Norm("group", (4, 6, 5), 3),
               "instance": Norm("instance", (4, 3, 5))}


class State:
    """A valid forward/backward whose state must survive a failing call."""

    def __init__(self, rng, norm):
        self.norm = norm
        self.x = norm.data(rng, np.float32)
        self.w, self.b = norm.params(rng, np.float32)
        self.out = np.full(norm.shape, 7.0, np.float32)
        self.dy = rng.standard_normal(norm.shape).astype(np.float32)
        self.rm = rng.uniform(-1, 1, norm.channels).astype(np.float32)
        self.rv = rng.uniform(0.5, 2, norm.channels).astype(np.float32)
        _, self.cache = self.fwd(out=None)
        self.grads = [g.copy() for g in norm.backward(self.dy, self.cache)]
        self.before = self.snapshot()

    def snapshot(self):
        return {k: getattr(self, k).copy() for k in ("x", "w", "b", "out", "dy", "rm", "rv")}

    def check_unchanged(self):
        after = self.snapshot()
        for k, v in self.before.items():
            np.testing.assert_array_equal(after[k], v, err_msg=k)
        for g, g0 in zip(self.norm.backward(self.dy, self.cache), self.grads):
            np.testing.assert_array_equal(g, g0)

    def fwd(self, x=None, norm=None, **kw):
        """The forward with this state's arrays, overridden by kw."""
        args = dict(weight=self.w, bias=self.b, out=self.out)
        if self.norm.kind == "instance":
            args.update(running_mean=self.rm, running_var=self.rv)
        args.update(kw)
        weight, bias = args.pop("weight"), args.pop("bias")
        return (norm or self.norm).forward(self.x if x is None else x, weight, bias, **args)

    def arg(self, value, **kw):
        """The forward with another normalized_shape / num_groups."""
        return self.fwd(norm=replace(self.norm, arg=value), **kw)

    def bwd(self, dy):
        return self.norm.backward(dy, self.cache)


def _ro(a):
    a = a.copy()
    a.setflags(write=False)
    return a


def _rank6(s):
    """x's first two samples with three unit axes inserted (rank 6), the
    normalized or channel axes kept."""
    return s.x[:2, None, None, None] if s.norm.kind == "layer" else s.x[:2, :, None, None, None]


OVERLAP = ("overlap", "share", "alias", "same memory", "in-place", "in place")
READ_ONLY = ("writ", "read-only", "readonly")
MISSING = ("none", "missing", "not given", "required", "both", "need")

COMMON = [
    ("rank6", lambda s: s.fwd(_rank6(s), out=None), ValueError, [("6", "rank", "ndim")]),
    ("x_int", lambda s: s.fwd(s.x.astype(np.int32), out=None), TypeError, [("int32",), ("float",)]),
    ("x_complex", lambda s: s.fwd(s.x.astype(np.complex64), out=None),
     TypeError, [("complex",), ("float",)]),
    ("x_bool", lambda s: s.fwd(s.x > 0, out=None), TypeError, [("bool",), ("float",)]),
    ("weight_int", lambda s: s.fwd(weight=s.w.astype(np.int64)), TypeError, [("int64",)]),
    ("empty_batch", lambda s: s.fwd(s.x[:0], out=None), ValueError, [("0", "empty")]),
    ("eps_negative", lambda s: s.fwd(eps=-1e-5), ValueError, [("eps",)]),
    ("eps_inf", lambda s: s.fwd(eps=float("inf")), ValueError, [("eps",), ("inf",)]),
    ("eps_nan", lambda s: s.fwd(eps=float("nan")), ValueError, [("eps",), ("nan",)]),
    ("weight_shape", lambda s: s.fwd(weight=np.ones(7, np.float32)), ValueError,
     [("weight",), ("7",)]),
    ("bias_shape", lambda s: s.fwd(bias=np.ones((2, 7), np.float32)), ValueError,
     [("bias",), ("(2, 7)",)]),
    ("out_shape", lambda s: s.fwd(out=np.zeros(s.x.shape[:-1] + (6,), np.float32)),
     ValueError, [("out",), ("6",)]),
    ("out_dtype", lambda s: s.fwd(out=s.out.astype(np.float64)), ValueError,
     [("float32",), ("float64",)]),
    ("out_readonly", lambda s: s.fwd(out=_ro(s.out)), ValueError, [READ_ONLY]),
    ("out_is_x", lambda s: s.fwd(out=s.x), ValueError, [OVERLAP]),
    ("out_overlaps_x", lambda s: s.fwd(out=s.x[::-1]), ValueError, [OVERLAP]),
    ("dy_shape", lambda s: s.bwd(s.dy[:-1]), ValueError, [("dy",), ("(3,", "3,")]),
    ("dy_dtype", lambda s: s.bwd(s.dy.astype(np.float64)), ValueError,
     [("float32",), ("float64",)]),
]
LAYER = [
    ("rank1", lambda s: s.arg((5,), x=np.zeros(5, np.float32), weight=None, bias=None, out=None),
     ValueError, [("1", "(5,)")]),
    ("no_leading_axis", lambda s: s.arg((4, 3, 5), weight=None, bias=None, out=None),
     ValueError, [("normalized_shape",), ("(4, 3, 5)",)]),
    ("shape_not_trailing", lambda s: s.arg((4, 3), weight=None, bias=None),
     ValueError, [("normalized_shape",), ("(4, 3)",)]),
    ("int_not_trailing", lambda s: s.arg(3, weight=None, bias=None),
     ValueError, [("normalized_shape",), ("3",)]),
    ("weight_flat", lambda s: s.fwd(weight=s.w.reshape(-1)), ValueError, [("weight",), ("(15,)",)]),
    ("weight_broadcastable", lambda s: s.fwd(weight=s.w[:1]), ValueError,
     [("weight",), ("(1, 5)",)]),
]
GROUP = [
    ("rank1", lambda s: s.fwd(np.zeros(6, np.float32), out=None), ValueError, [("1", "(6,)")]),
    ("groups_not_dividing", lambda s: s.arg(4), ValueError, [("num_groups",), ("4",), ("6",)]),
    ("groups_zero", lambda s: s.arg(0), ValueError, [("num_groups",), ("0",)]),
    ("groups_negative", lambda s: s.arg(-3), ValueError, [("num_groups",), ("-3",)]),
    ("groups_float", lambda s: s.arg(3.0), (TypeError, ValueError), [("num_groups",)]),
    ("layout", lambda s: s.fwd(norm=replace(s.norm, layout="NCWH")), ValueError, [("ncwh",)]),
    ("nhwc_channels", lambda s: s.fwd(norm=replace(s.norm, layout="NHWC")),  # C would be 5
     ValueError, [("5",)]),
]
INSTANCE_ERRORS = [
    ("rank2", lambda s: s.fwd(np.zeros((4, 3), np.float32), out=None), ValueError,
     [("2", "(4, 3)")]),
    ("one_spatial_value", lambda s: s.fwd(s.x[..., :1], out=None), ValueError,
     [("1", "spatial"), ("2", "more than 1")]),
    ("momentum_high", lambda s: s.fwd(momentum=1.5), ValueError, [("momentum",), ("1.5",)]),
    ("momentum_negative", lambda s: s.fwd(momentum=-0.1), ValueError, [("momentum",), ("-0.1",)]),
    ("eval_no_running", lambda s: s.fwd(use_input_stats=False, running_mean=None,
                                        running_var=None), ValueError, [("running",), MISSING]),
    ("eval_only_mean", lambda s: s.fwd(use_input_stats=False, running_var=None), ValueError,
     [("running",), MISSING]),
    ("running_mean_shape", lambda s: s.fwd(running_mean=np.zeros(4, np.float32)), ValueError,
     [("running_mean",), ("4",)]),
    ("running_var_readonly", lambda s: s.fwd(running_var=_ro(s.rv)), ValueError, [READ_ONLY]),
    ("running_int", lambda s: s.fwd(running_mean=np.zeros(3, np.int64)), TypeError, [("int64",)]),
    ("layout", lambda s: s.fwd(norm=replace(s.norm, layout="nchw")), ValueError, [("nchw",)]),
]
ERRORS = ([pytest.param("layer", *c[1:], id=f"layer-{c[0]}") for c in COMMON + LAYER]
          + [pytest.param("group", *c[1:], id=f"group-{c[0]}") for c in COMMON + GROUP]
          + [pytest.param("instance", *c[1:], id=f"instance-{c[0]}")
             for c in COMMON + INSTANCE_ERRORS])


@pytest.mark.parametrize("kind,call,exc_type,groups", ERRORS)
def test_errors(rng, kind, call, exc_type, groups):
    """Every bad input raises the documented exception, its message names
    what was given, and nothing changes (x, parameters, out, running stats,
    the previous forward's cache)."""
    s = State(rng, ERROR_NORMS[kind])
    with pytest.raises(exc_type) as excinfo:
        call(s)
    assert_message(excinfo, *groups)
    s.check_unchanged()


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_layer_norm_rows_longer_than_a_block(rng, dtype):
    """Rows of more than BLOCK values take the blocked statistics and sums;
    constant rows stay exact there too."""
    d = BLOCK + 904
    x = (1e3 + rng.standard_normal((3, d))).astype(dtype)
    x[1] = 7.25
    w, b = rng.standard_normal(d).astype(dtype), rng.standard_normal(d).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    y, cache = fastbn.layer_norm_forward(x, d, w, b)
    dx, dw, db = fastbn.layer_norm_backward(dy, cache)
    ry, rmean, rvar = ref.layer_norm(x, d, w, b)
    rdx, rdw, rdb = ref.layer_norm_backward(dy, x, d, w)
    check_stats(cache.mean, cache.var, rmean, rvar, dtype, data_scale(x))
    np.testing.assert_array_equal(y[1], b)
    rtol = 1e-10 if dtype == np.float64 else 2e-4
    for got, want in ((y, ry), (dx, rdx), (dw, rdw), (db, rdb)):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.abs(want).max())


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("kind, shape, groups", [
    ("group", (3, 48, 48, 64), 8),    # two row chunks per sample
    ("group", (2, 3, 5, 1040), 260),  # three column chunks of COLUMNS
    ("group", (4, 7, 5, 12), 3),
    ("instance", (2, 9, 11, 20), None),
])
def test_channels_last_paths_agree(rng, monkeypatch, kind, shape, groups, dtype):
    """Channels-last GroupNorm/InstanceNorm: the sample-per-task forward and
    backward and the two-pass ones (column statistics, per-group merge,
    map; column sums, map) give the same bits, which match the reference at
    a large offset; a constant group's output is exactly its bias."""
    from fastbn import _choices

    c = shape[-1]
    size = c // (groups or c)  # channels per group
    norm = Norm(kind, shape, groups, "NHWC")
    x = norm.data(rng, dtype, loc=1e3)
    x[1, ..., :size] = 3.5  # sample 1's first group: constant
    w, b = norm.params(rng, dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    results = []
    for limit in (0, 1 << 40):
        monkeypatch.setattr(_choices, "CHOICES", replace(
            _choices.CHOICES, fused_max_channel_bytes=limit))
        y, cache = norm.forward(x, w, b)
        results.append((y, cache.mean, cache.var, *norm.backward(dy, cache)))
    for name, a, b_ in zip(("y", "mean", "var", "dx", "dweight", "dbias"), *results):
        np.testing.assert_array_equal(a, b_, err_msg=name)
    check_forward(norm, x, y, cache, *norm.reference(x, w, b), dtype)
    check_grads(norm, results[1][3:], norm.reference_backward(dy, x, w), dy, x, w, EPS, dtype)
    np.testing.assert_array_equal(y[1, ..., :size], np.broadcast_to(b[:size], y[1, ..., :size].shape))
