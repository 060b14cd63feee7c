"""SPEC "Errors and state": every bad input raises the documented exception
with a message naming what was expected and what was given, and changes
nothing (running stats, num_batches_tracked, parameters, ``out``, and the
previous forward's cache)."""

from __future__ import annotations

import re

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
    ("weight_2d", lambda s: s.fwd(weight=np.ones((1, C), np.float32)),  # C on the last axis
     ValueError, [("1, 3",), ("(3,)", "3 channels", "3"), ("broadcasts",), ("(1, 3, 1)",)]),
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
    ("eps_inf", lambda s: s.fwd(eps=float("inf")),
     ValueError, [("eps",), ("inf",)]),
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
    ("x_longdouble", lambda s: s.fwd(s.x.astype(np.longdouble), out=None),
     TypeError, [("float128", "float96", "longdouble"), ("float16",)]),
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
    ("longdouble", lambda s: s.bn(np.ones(SHAPE, np.longdouble)),
     TypeError, [("float128", "float96", "longdouble"), ("float16",)]),
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
    ("eps_inf", dict(eps=float("inf")), ValueError, [("eps",), ("inf",)]),
    ("eps_neg", dict(eps=-1.0), ValueError, [("eps",), ("-1",)]),
    ("momentum_high", dict(momentum=1.01), ValueError, [("momentum",), ("1.01",)]),
    ("momentum_neg", dict(momentum=-0.5), ValueError, [("momentum",), ("-0.5",)]),
    ("layout", dict(layout="NWHC"), ValueError, [("nwhc",), ("nchw", "nhwc")]),
    ("dtype_int", dict(dtype=np.int32), TypeError, [("int32",), ("float",)]),
    ("dtype_longdouble", dict(dtype=np.longdouble), TypeError,
     [("float128", "float96", "longdouble"), ("float16", "float32", "float64")]),
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


# ----------------------------------------------------------------------------
# a layer's channel count, in the layer's terms (num_features, layout, axis)

LAYER_KINDS = {f"affine={a}-track={t}": dict(affine=a, track_running_stats=t)
               for a in (True, False) for t in (True, False)}

# (layout, shape given to BatchNorm(32), the layout the hint suggests or None)
MISMATCHES = [
    ("NCHW", (8, 16, 4, 4), None),
    ("NCHW", (8, 4, 4, 32), "NHWC"),  # an NHWC array given to an NCHW layer
    ("NHWC", (8, 32, 4, 4), "NCHW"),
    ("NHWC", (8, 4, 4, 16), None),
    ("NCHW", (8, 16), None),  # rank 2: both layouts alike, no hint
    ("NHWC", (2, 32, 16), "NCHW"),
    ("NCHW", (2, 3, 5, 6, 32), "NHWC"),
]


def _layer_snapshot(bn):
    snap = {k: np.array(v, copy=True) for k, v in bn.state_dict().items()}
    snap.update(grad_weight=None if bn.grad_weight is None else bn.grad_weight.copy(),
                grad_bias=None if bn.grad_bias is None else bn.grad_bias.copy(),
                training=bn.training, cache=id(bn._cache))
    return snap


@pytest.mark.parametrize("layout,shape,hint", MISMATCHES,
                         ids=[f"{l}-{'x'.join(map(str, s))}" for l, s, _ in MISMATCHES])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kind", list(LAYER_KINDS.values()), ids=list(LAYER_KINDS))
def test_layer_channel_mismatch_names_num_features_and_the_axis(rng, kind, training, layout,
                                                                shape, hint):
    bn = fastbn.BatchNorm(32, layout=layout, **kind)
    good = (4, 32, 3) if layout == "NCHW" else (4, 3, 32)
    bn(rng.standard_normal(good).astype(np.float32))
    bn.backward(np.ones(good, np.float32))
    bn.train(training)
    before = _layer_snapshot(bn)
    axis = 1 if layout == "NCHW" else len(shape) - 1
    expected = (f"BatchNorm(num_features=32, layout='{layout}') expects 32 channels on axis "
                f"{axis} of a rank-{len(shape)} input, got shape {shape}")
    if hint:
        expected += f"; got an {hint}-shaped array? pass layout='{hint}'"
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        bn(np.ones(shape, np.float32))
    unchanged(before, _layer_snapshot(bn))


def test_functional_weight_mismatch_names_x_and_suggests_the_other_layout(rng):
    s = FunctionalState(rng)  # x (4, 3, 5) NCHW: 5 channels if it were NHWC
    with pytest.raises(ValueError, match=re.escape(
            "weight must have shape (3,) to match the 3 channels of x (axis 1 of shape "
            "(4, 3, 5)), got shape (5,); got an NHWC-shaped x? pass layout='NHWC'")):
        s.fwd(weight=np.ones(5, np.float32))
    with pytest.raises(ValueError, match=r"got shape \(7,\)$"):  # no other layout fits: no hint
        s.fwd(bias=np.ones(7, np.float32))
    s.check_unchanged()


# ----------------------------------------------------------------------------
# arrays of other libraries: one TypeError naming the type and the fix, never the data


def _torch_like(torch, a, grad=False):
    return torch.tensor(a, requires_grad=grad)


# (id, call(s, as_tensor), argument name, written in place)
TORCH_CASES = [
    ("x", lambda s, T: s.fwd(T(s.x), out=None), "x", False),
    ("x_requires_grad", lambda s, T: s.fwd(T(s.x, True), out=None), "x", False),
    ("stats_x", lambda s, T: fastbn.batch_stats(T(s.x, True)), "x", False),
    ("weight", lambda s, T: s.fwd(weight=T(s.w)), "weight", False),
    ("weight_requires_grad", lambda s, T: s.fwd(weight=T(s.w, True)), "weight", False),
    ("bias", lambda s, T: s.fwd(bias=T(s.b, True)), "bias", False),
    ("running_mean_train", lambda s, T: s.fwd(running_mean=T(s.rm)), "running_mean", True),
    ("running_var_eval", lambda s, T: s.fwd(training=False, running_var=T(s.rv)),
     "running_var", False),
    ("out", lambda s, T: s.fwd(out=T(s.out)), "out", True),
    ("dy", lambda s, T: fastbn.batch_norm_backward(T(s.dy), s.cache), "dy", False),
    ("dy_requires_grad", lambda s, T: fastbn.batch_norm_backward(T(s.dy, True), s.cache),
     "dy", False),
]


def _assert_clean_type_error(excinfo, name, type_name, advice, data):
    msg = str(excinfo.value)
    assert msg.startswith(f"{name} must be "), msg
    assert f"got {type_name}" in msg and advice in msg, msg
    assert "tensor(" not in msg and f"{float(data.flat[0]):.4f}" not in msg, msg  # no data
    # one exception: no chained traceback hiding the advice
    assert excinfo.value.__cause__ is None
    assert excinfo.value.__context__ is None or excinfo.value.__suppress_context__


@pytest.mark.parametrize("call,name,in_place", [c[1:] for c in TORCH_CASES],
                         ids=[c[0] for c in TORCH_CASES])
def test_torch_tensors_are_refused_with_the_conversion(rng, call, name, in_place):
    torch = pytest.importorskip("torch")
    s = FunctionalState(rng)
    with pytest.raises(TypeError) as excinfo:
        call(s, lambda a, grad=False: _torch_like(torch, a, grad))
    advice = "tensor.detach().numpy()" if in_place else ".detach().cpu().numpy()"
    data = {"x": s.x, "dy": s.dy, "out": s.out, "weight": s.w, "bias": s.b,
            "running_mean": s.rm, "running_var": s.rv}[name]
    _assert_clean_type_error(excinfo, name, "torch.Tensor (shape", advice, data)
    s.check_unchanged()


def test_layer_refuses_torch_tensors_and_changes_nothing(rng):
    torch = pytest.importorskip("torch")
    s = LayerState(rng)
    x = torch.tensor(s.x, requires_grad=True)
    for call, name in ((lambda: s.bn(x), "x"), (lambda: s.bn(x.detach()), "x"),
                       (lambda: s.bn.backward(torch.tensor(s.dy)), "dy")):
        with pytest.raises(TypeError) as excinfo:
            call()
        _assert_clean_type_error(excinfo, name, "torch.Tensor", ".detach().cpu().numpy()", s.x)
    state = {k: torch.from_numpy(np.asarray(v + 1)) for k, v in s.bn.state_dict().items()}
    with pytest.raises(TypeError) as excinfo:
        s.bn.load_state_dict(state)
    _assert_clean_type_error(excinfo, "state['weight']", "torch.Tensor",
                             ".detach().cpu().numpy()", s.bn.weight + 1)
    numpy_state = {k: v.numpy() for k, v in state.items()}
    with pytest.raises(TypeError, match=r"^state\['num_batches_tracked'\] must be a "
                                        r"non-negative integer, got torch\.Tensor"):
        s.bn.load_state_dict({**numpy_state, "num_batches_tracked": torch.tensor(3)})
    s.check_unchanged()
    with pytest.raises(TypeError, match=r"dtype must be float16, float32 or float64 \(a NumPy dtype\), "
                                        r"got torch\.dtype torch\.float32$") as excinfo:
        fastbn.BatchNorm(3, dtype=torch.float32)
    assert excinfo.value.__cause__ is None and excinfo.value.__suppress_context__


class ArrayLike:
    """An array of another library, as NumPy sees it: ``__array__`` only."""

    def __init__(self, a):
        self.a = a

    def __array__(self, dtype=None, copy=None):
        return self.a


class DLPackOnly:
    def __dlpack__(self, stream=None):
        raise AssertionError("fastbn must not convert it")


def test_other_array_libraries_and_masked_arrays_are_refused(rng):
    s = FunctionalState(rng)
    with pytest.raises(TypeError, match=r"^x must be a NumPy ndarray of float16, float32 or float64, "
                                        r"got test_errors\.ArrayLike; convert it with "
                                        r"numpy\.asarray\(\)$") as excinfo:
        s.fwd(ArrayLike(s.x), out=None)
    assert excinfo.value.__context__ is None
    with pytest.raises(TypeError, match=r"^weight must be .*got test_errors\.DLPackOnly; "):
        s.fwd(weight=DLPackOnly())
    masked = np.ma.masked_array(s.x, mask=s.x > 1)
    with pytest.raises(TypeError, match=r"got numpy\.ma\.MaskedArray \(shape \(4, 3, 5\), "
                                        r"dtype float32\); its masked values would count as "
                                        r"valid: pass x\.filled\(value\)$"):
        s.fwd(masked, out=None)
    with pytest.raises(TypeError, match=r"^bias must be .*MaskedArray"):
        s.fwd(bias=np.ma.masked_array(s.b))
    s.check_unchanged()


def test_python_sequences_are_still_converted(rng):
    """Lists stay accepted where a value is only read (x, weight, bias, dy,
    running statistics in eval mode)."""
    x = rng.standard_normal((6, 3))
    w, b, rm, rv = [1.0, 2.0, 0.5], [0.0, 1.0, -1.0], [0.1, 0.2, 0.3], [1.0, 2.0, 3.0]
    arr = np.asarray
    y, cache = fastbn.batch_norm_forward(x.tolist(), w, b)
    y0, cache0 = fastbn.batch_norm_forward(x, arr(w), arr(b))
    np.testing.assert_array_equal(y, y0)
    for g, g0 in zip(fastbn.batch_norm_backward(x.tolist(), cache),
                     fastbn.batch_norm_backward(x, cache0)):
        np.testing.assert_array_equal(g, g0)
    ye, _ = fastbn.batch_norm_forward(x, training=False, running_mean=rm, running_var=rv)
    ye0, _ = fastbn.batch_norm_forward(x, training=False, running_mean=arr(rm),
                                       running_var=arr(rv))
    np.testing.assert_array_equal(ye, ye0)


# ----------------------------------------------------------------------------
# every other message: what was expected, what was given

# (id, call, exception, regular expression the message must match)
MESSAGE_CASES = [
    ("x_ragged_list", lambda s: s.fwd([[1.0, 2.0], [3.0]], out=None), TypeError,
     r"^x must be a NumPy ndarray of float16, float32 or float64, got list of length 2, which NumPy "
     r"cannot convert to an array$"),
    ("x_int_list", lambda s: s.fwd([[1, 2], [3, 4]], out=None), TypeError,
     r"got list of length 2 \(dtype int64 once converted\)$"),
    ("x_int_array", lambda s: s.fwd(s.x.astype(np.int16), out=None), TypeError,
     r"^x must be a NumPy ndarray of float16, float32 or float64, got dtype int16$"),
    ("x_rank1", lambda s: s.fwd(np.zeros(7, np.float32), out=None), ValueError,
     r"^x: expected an input of rank 2 to 5, got rank 1 \(shape \(7,\)\)$"),
    ("x_empty", lambda s: s.fwd(np.zeros((0, C), np.float32), out=None), ValueError,
     r"^x: expected a non-empty batch, got shape \(0, 3\)$"),
    ("x_one_value", lambda s: s.fwd(np.ones((1, C), np.float32), out=None), ValueError,
     r"^x: expected more than 1 value per channel when training, got input of shape "
     r"\(1, 3\) \(1 value per channel\)$"),
    ("layout", lambda s: s.fwd(layout="nhwc"), ValueError,
     r"^layout must be one of \('NCHW', 'NHWC'\), got 'nhwc'$"),
    ("eps_type", lambda s: s.fwd(eps="1e-5"), TypeError,
     r"^eps must be a real number >= 0, got str '1e-5'$"),
    ("eps_value", lambda s: s.fwd(eps=-1.0), ValueError, r"^eps must be a finite number >= 0, got -1\.0$"),
    ("momentum_none", lambda s: s.fwd(momentum=None), TypeError,
     r"^momentum must be a real number in \[0, 1\], got None$"),
    ("momentum_value", lambda s: s.fwd(momentum=2), ValueError,
     r"^momentum must be in \[0, 1\], got 2$"),
    ("weight_ragged", lambda s: s.fwd(weight=[[1.0], [2.0, 3.0]]), TypeError,
     r"^weight must be a NumPy array or a sequence of floats, got list of length 2, which "
     r"NumPy cannot convert to an array$"),
    ("weight_int_list", lambda s: s.fwd(weight=[1, 2, 3]), TypeError,
     r"^weight must have a float dtype, got list of length 3 \(dtype int64 once converted\)$"),
    ("bias_int", lambda s: s.fwd(bias=np.zeros(C, np.int8)), TypeError,
     r"^bias must have a float dtype, got dtype int8$"),
    ("running_mean_list_train", lambda s: s.fwd(running_mean=[0.0] * C), TypeError,
     r"^running_mean must be a NumPy array \(it is updated in place\), got list of length 3$"),
    ("running_var_readonly", lambda s: s.fwd(running_var=_ro(s.rv)), ValueError,
     r"^running_var must be writable \(it is updated in place\), got a read-only array$"),
    ("running_missing", lambda s: s.fwd(running_var=None), ValueError,
     r"^running_mean and running_var: expected both or neither, got running_mean=an array, "
     r"running_var=None$"),
    ("running_eval", lambda s: s.fwd(training=False, running_mean=None, running_var=None),
     ValueError, r"^running_mean and running_var: expected both \(eval mode normalizes with "
                 r"them\), got running_mean=None, running_var=None$"),
    ("out_list", lambda s: s.fwd(out=[0.0] * 3), TypeError,
     r"^out must be a NumPy array, got list of length 3$"),
    ("out_shape", lambda s: s.fwd(out=np.zeros((4, C), np.float32)), ValueError,
     r"^out must have shape \(4, 3, 5\) and dtype float32 like x, got shape \(4, 3\) and "
     r"dtype float32$"),
    ("out_readonly", lambda s: s.fwd(out=_ro(s.out)), ValueError,
     r"^out must be writable, got a read-only array$"),
    ("out_overlap", lambda s: s.fwd(out=s.x), ValueError,
     r"^out must not overlap x \(x is kept for the backward pass\), got an array that shares "
     r"memory with x$"),
    ("dy_ragged", lambda s: fastbn.batch_norm_backward([[1.0], [1.0, 2.0]], s.cache), TypeError,
     r"^dy must be a NumPy array of shape \(4, 3, 5\) and dtype float32 like the forward "
     r"input, got list of length 2, which NumPy cannot convert to an array$"),
    ("dy_shape", lambda s: fastbn.batch_norm_backward(s.dy[:2], s.cache), ValueError,
     r"^dy must have shape \(4, 3, 5\) and dtype float32 like the forward input, got shape "
     r"\(2, 3, 5\) and dtype float32$"),
    ("foreign_cache", lambda s: fastbn.batch_norm_backward(s.dy, {"x": s.x}), TypeError,
     r"^cache must be the BatchNormCache returned by batch_norm_forward, got dict$"),
]



LAYER_MESSAGE_CASES = [
    ("load_not_a_dict", lambda s: s.bn.load_state_dict([("weight", np.ones(C))]), TypeError,
     r"^state must be a dict of arrays like state_dict\(\) returns, got list$"),
    ("load_keys", lambda s: s.bn.load_state_dict({"weight": np.ones(C)}), ValueError,
     r"^state dict keys: expected \['bias', 'num_batches_tracked', 'running_mean', "
     r"'running_var', 'weight'\], got \['weight'\] \(missing \['bias', 'num_batches_tracked', "
     r"'running_mean', 'running_var'\], unexpected \[\]\)$"),
    ("load_shape", lambda s: s.bn.load_state_dict({**s.bn.state_dict(), "running_var": np.ones(4)}),
     ValueError, r"^state\['running_var'\] must have shape \(3,\) \(num_features=3\), got shape "
                 r"\(4,\)$"),
    ("load_count_negative", lambda s: s.bn.load_state_dict(
        {**s.bn.state_dict(), "num_batches_tracked": -1}), ValueError,
     r"^state\['num_batches_tracked'\] must be one non-negative integer, got -1 \(dtype int64\)$"),
    ("load_count_float", lambda s: s.bn.load_state_dict(
        {**s.bn.state_dict(), "num_batches_tracked": 2.5}), ValueError,
     r"got 2\.5 \(dtype float64\)$"),
    ("load_count_many", lambda s: s.bn.load_state_dict(
        {**s.bn.state_dict(), "num_batches_tracked": np.array([1, 2])}), ValueError,
     r"got 2 values \(shape \(2,\)\)$"),
    ("train_mode", lambda s: s.bn.train("eval"), TypeError,
     r"^mode must be a bool, got str 'eval'$"),
    ("x_int", lambda s: s.bn(np.ones(SHAPE, np.int32)), TypeError,
     r"^x must be a NumPy ndarray of float16, float32 or float64, got dtype int32$"),
    ("x_rank6", lambda s: s.bn(np.ones((1, C, 1, 1, 1, 2), np.float32)), ValueError,
     r"^x: expected an input of rank 2 to 5, got rank 6 \(shape \(1, 3, 1, 1, 1, 2\)\)$"),
]


MESSAGE_PARAMS = ([pytest.param(FunctionalState, *c[1:], id=c[0]) for c in MESSAGE_CASES]
                  + [pytest.param(LayerState, *c[1:], id=f"layer-{c[0]}")
                     for c in LAYER_MESSAGE_CASES])


@pytest.mark.parametrize("state,call,exc_type,pattern", MESSAGE_PARAMS)
def test_message_says_what_was_expected_and_what_was_given(rng, state, call, exc_type, pattern):
    s = state(rng)
    with pytest.raises(exc_type, match=pattern):
        call(s)
    s.check_unchanged()


@pytest.mark.parametrize("args,kwargs,exc_type,pattern", [
    ((3.0,), {}, TypeError, r"^num_features must be an int, got float 3\.0$"),
    ((True,), {}, TypeError, r"^num_features must be an int, got bool True$"),
    ((0,), {}, ValueError, r"^num_features must be >= 1, got 0$"),
    ((3,), dict(dtype="float33"), TypeError,
     r"^dtype must be float16, float32 or float64 \(a NumPy dtype\), got str 'float33'$"),
    ((3,), dict(dtype=np.int32), TypeError, r"^dtype must be float16, float32 or float64, got int32$"),
    ((3,), dict(eps=None), TypeError, r"^eps must be a real number >= 0, got None$"),
    ((3,), dict(momentum="0.1"), TypeError,
     r"^momentum must be a real number in \[0, 1\] or None, got str '0\.1'$"),
    ((3,), dict(layout="NWHC"), ValueError,
     r"^layout must be one of \('NCHW', 'NHWC'\), got 'NWHC'$"),
], ids=["num_features_float", "num_features_bool", "num_features_0", "dtype_name", "dtype_int",
        "eps_none", "momentum_str", "layout"])
def test_constructor_message(args, kwargs, exc_type, pattern):
    with pytest.raises(exc_type, match=pattern):
        fastbn.BatchNorm(*args, **kwargs)


def test_backward_before_forward_says_what_is_missing():
    with pytest.raises(RuntimeError, match=r"^backward needs the input of a forward call, got "
                                           r"none: call the layer on a batch first$"):
        fastbn.BatchNorm(2).backward(np.ones((3, 2), np.float32))
