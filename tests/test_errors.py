"""SPEC "Errors and state": every bad input raises the documented exception
with a message naming what was expected and what was given, and changes
nothing (running stats, num_batches_tracked, parameters, ``out``, and the
previous forward's cache)."""

from __future__ import annotations

import numpy as np
import pytest

import fastbn
from helpers import assert_message, unchanged

C = 3
SHAPE = (4, C, 5)  # NCHW, float32


class FunctionalState:
    """A valid forward/backward whose state must survive a failing call."""

    def __init__(self, rng):
        self.x = rng.standard_normal(SHAPE).astype(np.float32)
        self.w = rng.uniform(0.5, 2, C).astype(np.float32)
        self.b = rng.uniform(-1, 1, C).astype(np.float32)
        self.rm = rng.uniform(-1, 1, C).astype(np.float32)
        self.rv = rng.uniform(0.5, 2, C).astype(np.float32)
        self.out = np.full(SHAPE, 7.0, np.float32)
        self.dy = rng.standard_normal(SHAPE).astype(np.float32)
        _, self.cache = fastbn.batch_norm_forward(
            self.x, self.w, self.b, running_mean=self.rm, running_var=self.rv)
        self.grads = [g.copy() for g in fastbn.batch_norm_backward(self.dy, self.cache)]
        self.before = self.snapshot()

    def snapshot(self):
        return {k: getattr(self, k).copy() for k in ("x", "w", "b", "rm", "rv", "out", "dy")}

    def check_unchanged(self):
        unchanged(self.before, self.snapshot())
        for g, g0 in zip(fastbn.batch_norm_backward(self.dy, self.cache), self.grads):
            np.testing.assert_array_equal(g, g0)

    def fwd(self, x=None, **kw):
        """batch_norm_forward with this state's arrays, overridden by kw."""
        args = dict(weight=self.w, bias=self.b, running_mean=self.rm,
                    running_var=self.rv, out=self.out)
        args.update(kw)
        weight, bias = args.pop("weight"), args.pop("bias")
        return fastbn.batch_norm_forward(self.x if x is None else x, weight, bias, **args)


def _ro(a):
    a = a.copy()
    a.setflags(write=False)
    return a


# the given rank of a 1-D input: its shape or its rank spelled out
_R1 = ("rank 1", "ndim=1", "ndim 1", "1-d", "1d", "1 dimension", "rank=1")
RANK1 = ("(7,)",) + _R1
RANK1_LAYER = ("(6,)",) + _R1

# (id, call(s), exception, message groups: each group needs one alternative)
FUNCTIONAL_CASES = [
    ("rank1", lambda s: s.fwd(np.zeros(7, np.float32), out=None),
     ValueError, [RANK1, ("5",)]),
    ("rank6", lambda s: s.fwd(np.zeros((2, C, 1, 1, 1, 1), np.float32), out=None),
     ValueError, [("6", "(2, 3, 1, 1, 1, 1)"), ("5",)]),
    ("stats_rank1", lambda s: fastbn.batch_stats(np.zeros(7, np.float32)),
     ValueError, [RANK1, ("5",)]),
    ("stats_rank6", lambda s: fastbn.batch_stats(np.zeros((2, 3, 1, 1, 1, 1))),
     ValueError, [("6", "(2, 3, 1, 1, 1, 1)"), ("5",)]),
    ("weight_channels", lambda s: s.fwd(weight=np.ones(7, np.float32)),
     ValueError, [("7",), ("3",)]),
    ("bias_channels", lambda s: s.fwd(bias=np.zeros(7, np.float32)),
     ValueError, [("7",), ("3",)]),
    ("weight_2d", lambda s: s.fwd(weight=np.ones((C, 1), np.float32)),
     ValueError, [("3, 1",), ("(3,)", "3 channels", "3")]),
    ("running_mean_channels", lambda s: s.fwd(running_mean=np.zeros(7, np.float32)),
     ValueError, [("7",), ("3",)]),
    ("running_var_channels_eval",
     lambda s: s.fwd(training=False, running_var=np.ones(7, np.float32)),
     ValueError, [("7",), ("3",)]),
    ("nhwc_channel_mismatch", lambda s: s.fwd(layout="NHWC"),  # C would be 5
     ValueError, [("5",), ("3",)]),
    ("layout", lambda s: s.fwd(layout="NCWH"),
     ValueError, [("ncwh",), ("nchw", "nhwc")]),
    ("layout_lower", lambda s: s.fwd(layout="nchw"),
     ValueError, [("nchw",), ("nhwc",)]),
    ("stats_layout", lambda s: fastbn.batch_stats(s.x, layout="CHW"),
     ValueError, [("chw",), ("nchw", "nhwc")]),
    ("eps_zero", lambda s: s.fwd(eps=0.0),
     ValueError, [("eps",), ("0",)]),
    ("eps_negative", lambda s: s.fwd(eps=-1e-5),
     ValueError, [("eps",), ("-1e-05", "-0.00001", "-1e-5")]),
    ("momentum_high", lambda s: s.fwd(momentum=1.5),
     ValueError, [("momentum",), ("1.5",)]),
    ("momentum_negative", lambda s: s.fwd(momentum=-0.1),
     ValueError, [("momentum",), ("-0.1",)]),
    ("one_value_per_channel", lambda s: s.fwd(np.ones((1, C), np.float32), out=None),
     ValueError, [("(1, 3)", "1 value"), ("2", "more than 1", "at least", "> 1")]),
    ("one_value_per_channel_4d",
     lambda s: s.fwd(np.ones((1, C, 1, 1), np.float32), out=None),
     ValueError, [("(1, 3, 1, 1)", "1 value"), ("2", "more than 1", "at least", "> 1")]),
    ("empty_train", lambda s: s.fwd(np.zeros((0, C), np.float32), out=None),
     ValueError, [("0",), ("empty",)]),
    ("empty_eval", lambda s: s.fwd(np.zeros((0, C, 4), np.float32), out=None,
                                   training=False),
     ValueError, [("0",), ("empty",)]),
    ("empty_spatial", lambda s: s.fwd(np.zeros((2, C, 0), np.float32), out=None),
     ValueError, [("0",), ("empty",)]),
    ("stats_empty", lambda s: fastbn.batch_stats(np.zeros((0, C))),
     ValueError, [("0",), ("empty",)]),
    ("out_shape", lambda s: s.fwd(out=np.zeros((4, C, 6), np.float32)),
     ValueError, [("(4, 3, 5)",), ("(4, 3, 6)",)]),
    ("out_dtype", lambda s: s.fwd(out=np.zeros(SHAPE, np.float64)),
     ValueError, [("float32",), ("float64",)]),
    ("out_readonly", lambda s: s.fwd(out=_ro(s.out)),
     ValueError, [("writ", "read-only", "readonly"),]),
    ("out_is_x", lambda s: s.fwd(out=s.x),
     ValueError, [("overlap", "share", "alias", "same memory", "in-place", "in place")]),
    ("out_overlaps_x", lambda s: s.fwd(out=s.x[::-1, :, ::-1]),
     ValueError, [("overlap", "share", "alias", "same memory", "in-place", "in place")]),
    ("dy_shape", lambda s: fastbn.batch_norm_backward(np.ones((4, C, 6), np.float32), s.cache),
     ValueError, [("(4, 3, 5)",), ("(4, 3, 6)",)]),
    ("dy_dtype", lambda s: fastbn.batch_norm_backward(s.dy.astype(np.float64), s.cache),
     ValueError, [("float32",), ("float64",)]),
    ("eval_no_running", lambda s: s.fwd(training=False, running_mean=None, running_var=None),
     ValueError, [("running",), ("none", "missing", "not given", "required", "both")]),
    ("eval_only_mean", lambda s: s.fwd(training=False, running_var=None),
     ValueError, [("running_var", "running",), ("none", "missing", "not given", "required", "both")]),
    ("eval_only_var", lambda s: s.fwd(training=False, running_mean=None),
     ValueError, [("running_mean", "running"), ("none", "missing", "not given", "required", "both")]),
    ("train_only_mean", lambda s: s.fwd(running_var=None),
     ValueError, [("running_var", "running"), ("none", "missing", "not given", "both")]),
    ("running_readonly", lambda s: s.fwd(running_var=_ro(s.rv)),
     ValueError, [("writ", "read-only", "readonly")]),
    # TypeError: non-float inputs
    ("x_int", lambda s: s.fwd(s.x.astype(np.int32), out=None),
     TypeError, [("int32",), ("float",)]),
    ("x_bool", lambda s: s.fwd(s.x > 0, out=None), TypeError, [("bool",), ("float",)]),
    ("x_complex", lambda s: s.fwd(s.x.astype(np.complex64), out=None),
     TypeError, [("complex",), ("float",)]),
    ("x_object", lambda s: s.fwd(s.x.astype(object), out=None),
     TypeError, [("object",), ("float",)]),
    ("x_float16", lambda s: s.fwd(s.x.astype(np.float16), out=None),
     TypeError, [("float16",), ("float32", "float64")]),
    ("x_string", lambda s: s.fwd("abc", out=None), TypeError, [("float",)]),
    ("x_none", lambda s: s.fwd(np.array(None), out=None), TypeError, [("float",)]),
    ("stats_int", lambda s: fastbn.batch_stats(np.ones((4, 3), np.int64)),
     TypeError, [("int64",), ("float",)]),
    ("weight_int", lambda s: s.fwd(weight=np.ones(C, np.int64)),
     TypeError, [("int64",), ("float",)]),
    ("bias_bool", lambda s: s.fwd(bias=np.zeros(C, bool)),
     TypeError, [("bool",), ("float",)]),
    ("running_mean_int_eval", lambda s: s.fwd(training=False, running_mean=np.zeros(C, np.int32)),
     TypeError, [("int32",), ("float",)]),
    ("running_var_int_train", lambda s: s.fwd(running_var=np.ones(C, np.int64)),
     TypeError, [("int64",), ("float",)]),
]


@pytest.mark.parametrize("call,exc_type,groups",
                         [c[1:] for c in FUNCTIONAL_CASES],
                         ids=[c[0] for c in FUNCTIONAL_CASES])
def test_functional_errors(rng, call, exc_type, groups):
    s = FunctionalState(rng)
    with pytest.raises(exc_type) as excinfo:
        call(s)
    assert_message(excinfo, *groups)
    s.check_unchanged()


def test_running_stats_not_arrays(rng):
    """In training, running stats are updated in place, so a list is refused
    (as TypeError or ValueError) and nothing changes."""
    s = FunctionalState(rng)
    with pytest.raises((TypeError, ValueError)) as excinfo:
        s.fwd(running_mean=[0.0] * C)
    assert_message(excinfo, ("running_mean",), ("list", "array", "ndarray"))
    s.check_unchanged()


def test_backward_rejects_foreign_cache():
    with pytest.raises((TypeError, ValueError)):
        fastbn.batch_norm_backward(np.ones((2, 2)), object())


# ----------------------------------------------------------------------------
# layer


class LayerState:
    def __init__(self, rng, training=True):
        self.bn = fastbn.BatchNorm(C)
        self.bn.weight[...] = rng.uniform(0.5, 2, C)
        self.bn.bias[...] = rng.uniform(-1, 1, C)
        self.x = rng.standard_normal(SHAPE).astype(np.float32)
        self.dy = rng.standard_normal(SHAPE).astype(np.float32)
        self.bn(self.x)
        self.bn(self.x * 2)
        self.bn.train(training)
        self.bn(self.x)
        self.dx = self.bn.backward(self.dy).copy()
        self.before = self.snapshot()

    def snapshot(self):
        bn = self.bn
        snap = {k: (None if getattr(bn, k) is None else np.array(getattr(bn, k), copy=True))
                for k in ("weight", "bias", "running_mean", "running_var",
                          "grad_weight", "grad_bias")}
        snap["num_batches_tracked"] = int(bn.num_batches_tracked)
        snap["training"] = bn.training
        snap["ids"] = tuple(id(getattr(bn, k)) for k in ("weight", "bias",
                                                         "running_mean", "running_var"))
        return snap

    def check_unchanged(self):
        unchanged(self.before, self.snapshot())
        np.testing.assert_array_equal(self.bn.backward(self.dy), self.dx)


LAYER_CASES = [
    ("channels", lambda s: s.bn(np.ones((4, 5, 2), np.float32)),
     ValueError, [("5",), ("3",)]),
    ("rank1", lambda s: s.bn(np.ones(6, np.float32)), ValueError, [RANK1_LAYER, ("5",)]),
    ("rank6", lambda s: s.bn(np.ones((2, C, 1, 1, 1, 1), np.float32)),
     ValueError, [("6", "(2, 3, 1, 1, 1, 1)"), ("5",)]),
    ("one_value_per_channel", lambda s: s.bn(np.ones((1, C), np.float32)),
     ValueError, [("(1, 3)", "1 value"), ("2", "more than 1", "at least", "> 1")]),
    ("empty", lambda s: s.bn(np.ones((0, C), np.float32)), ValueError, [("0",), ("empty",)]),
    ("int", lambda s: s.bn(np.ones(SHAPE, np.int64)), TypeError, [("int64",), ("float",)]),
    ("float16", lambda s: s.bn(np.ones(SHAPE, np.float16)),
     TypeError, [("float16",), ("float32", "float64")]),
    ("dy_shape", lambda s: s.bn.backward(np.ones((4, C, 6), np.float32)),
     ValueError, [("(4, 3, 5)",), ("(4, 3, 6)",)]),
    ("dy_dtype", lambda s: s.bn.backward(np.ones(SHAPE, np.float64)),
     ValueError, [("float32",), ("float64",)]),
    ("state_missing", lambda s: s.bn.load_state_dict(
        {k: v for k, v in s.bn.state_dict().items() if k != "running_var"}),
     ValueError, [("running_var",)]),
    ("state_extra", lambda s: s.bn.load_state_dict(
        {**s.bn.state_dict(), "momentum_buffer": np.zeros(C)}),
     ValueError, [("momentum_buffer",)]),
    ("state_shape", lambda s: s.bn.load_state_dict(
        {**s.bn.state_dict(), "weight": np.full(C, 5.0), "running_var": np.ones(C + 1)}),
     ValueError, [("running_var",), ("(4,)", "4")]),
    ("state_shape_2d", lambda s: s.bn.load_state_dict(
        {**s.bn.state_dict(), "bias": np.zeros((1, C))}),
     ValueError, [("bias",), ("(1, 3)", "1, 3")]),
]


# eval with one value per channel is valid (running statistics): not an error
LAYER_PARAMS = [pytest.param(*case[1:], training, id=f"{case[0]}-{mode}")
                for case in LAYER_CASES for training, mode in ((True, "train"), (False, "eval"))
                if not (case[0] == "one_value_per_channel" and not training)]


@pytest.mark.parametrize("call,exc_type,groups,training", LAYER_PARAMS)
def test_layer_errors(rng, call, exc_type, groups, training):
    s = LayerState(rng, training)
    with pytest.raises(exc_type) as excinfo:
        call(s)
    assert_message(excinfo, *groups)
    # state, parameters and the last forward's cache are as they were
    s.check_unchanged()


def test_layer_eval_one_value_per_channel_ok(rng):
    s = LayerState(rng, training=False)
    x = np.array([[1.0, 2.0, 3.0]], np.float32)
    y = s.bn(x)
    bn = s.bn
    expected = (x - bn.running_mean) / np.sqrt(bn.running_var + 1e-5) * bn.weight + bn.bias
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


CONSTRUCTOR_CASES = [
    ("num_features_0", dict(num_features=0), ValueError, [("num_features",), ("0",)]),
    ("num_features_neg", dict(num_features=-2), ValueError, [("num_features",), ("-2",)]),
    ("eps_0", dict(eps=0.0), ValueError, [("eps",), ("0",)]),
    ("eps_neg", dict(eps=-1.0), ValueError, [("eps",), ("-1",)]),
    ("momentum_high", dict(momentum=1.01), ValueError, [("momentum",), ("1.01",)]),
    ("momentum_neg", dict(momentum=-0.5), ValueError, [("momentum",), ("-0.5",)]),
    ("layout", dict(layout="NWHC"), ValueError, [("nwhc",), ("nchw", "nhwc")]),
    ("dtype_int", dict(dtype=np.int32), TypeError, [("int32",), ("float",)]),
    ("dtype_float16", dict(dtype=np.float16), TypeError, [("float16",), ("float32", "float64")]),
]


@pytest.mark.parametrize("kwargs,exc_type,groups", [c[1:] for c in CONSTRUCTOR_CASES],
                         ids=[c[0] for c in CONSTRUCTOR_CASES])
def test_constructor_errors(kwargs, exc_type, groups):
    kwargs = {"num_features": 3, **kwargs}
    n = kwargs.pop("num_features")
    with pytest.raises(exc_type) as excinfo:
        fastbn.BatchNorm(n, **kwargs)
    assert_message(excinfo, *groups)


def test_backward_before_forward_message():
    with pytest.raises(RuntimeError) as excinfo:
        fastbn.BatchNorm(2).backward(np.ones((3, 2), np.float32))
    assert_message(excinfo, ("forward",))


def test_failed_load_is_atomic(rng):
    """A state dict with one bad entry loads nothing."""
    s = LayerState(rng)
    good = {k: v + 1 for k, v in s.bn.state_dict().items()}
    bad = dict(good, running_mean=np.zeros(C + 2))
    with pytest.raises(ValueError):
        s.bn.load_state_dict(bad)
    s.check_unchanged()


def test_layer_without_vectors_checks_the_channel_count():
    """With neither weight nor running statistics, the layer itself checks C."""
    bn = fastbn.BatchNorm(7, affine=False, track_running_stats=False)
    for mode in (True, False):
        bn.train(mode)
        with pytest.raises(ValueError) as excinfo:
            bn(np.ones((4, 3, 2), np.float32))
        assert_message(excinfo, ("7",), ("3",), ("channels",))
        assert bn.num_batches_tracked == 0
