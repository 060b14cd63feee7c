"""The LayerNorm, GroupNorm and InstanceNorm layers: their calls of the
functional API, modes, parameters, state dicts (against PyTorch's modules
when torch is installed) and errors."""

from __future__ import annotations

import numpy as np
import pytest

from fastbn import family as F
from fastbn import GroupNorm, InstanceNorm, LayerNorm

SHAPE = (4, 6, 3, 5)  # NCHW, C = 6


def _layers():
    """(id, layer factory, input shape); every layer has weight and bias."""
    return [
        ("layer", lambda **kw: LayerNorm((3, 5), **kw), SHAPE),
        ("layer-int", lambda **kw: LayerNorm(5, **kw), (4, 6, 5)),
        ("group", lambda **kw: GroupNorm(3, 6, **kw), SHAPE),
        ("group-nhwc", lambda **kw: GroupNorm(2, 6, layout="NHWC", **kw), (4, 3, 5, 6)),
        ("instance", lambda **kw: InstanceNorm(6, affine=True, track_running_stats=True, **kw),
         SHAPE),
        ("instance-nhwc", lambda **kw: InstanceNorm(6, affine=True, layout="NHWC", **kw),
         (4, 5, 6)),
    ]


LAYERS = [pytest.param(make, shape, id=name) for name, make, shape in _layers()]


def _randomize(layer, rng):
    for arr in layer.state_dict():
        if arr != "num_batches_tracked":
            a = getattr(layer, arr)
            a[...] = rng.uniform(0.5, 1.5, a.shape)


def _functional(layer, x, state):
    """The functional call the layer should make, on copies of ``state``."""
    w, b = state.get("weight"), state.get("bias")
    if isinstance(layer, LayerNorm):
        return F.layer_norm_forward(x, layer.normalized_shape, w, b, eps=layer.eps)
    if isinstance(layer, GroupNorm):
        return F.group_norm_forward(x, layer.num_groups, w, b, eps=layer.eps, layout=layer.layout)
    tracked = layer.running_mean is not None
    return F.instance_norm_forward(
        x, w, b, use_input_stats=layer.training or not tracked,
        running_mean=state.get("running_mean"), running_var=state.get("running_var"),
        momentum=layer.momentum or 0.0, eps=layer.eps, layout=layer.layout)


def _backward(cache, dy):
    return getattr(F, f"{cache.norm}_norm_backward")(dy, cache)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("make,shape", LAYERS)
def test_forward_backward_are_the_functional_calls(rng, make, shape, training):
    layer = make(dtype=np.float64).train(training)
    _randomize(layer, rng)
    x = rng.normal(2.0, 3.0, shape)
    dy = rng.normal(size=shape)
    state = layer.state_dict()
    y_ref, cache = _functional(layer, x, state)
    dx_ref, dw_ref, db_ref = _backward(cache, dy)
    y = layer(x)
    np.testing.assert_array_equal(y, y_ref)
    for k in ("running_mean", "running_var"):  # updated like the functional call's copies
        if k in state:
            np.testing.assert_array_equal(getattr(layer, k), state[k])
    assert layer.num_batches_tracked == 0
    np.testing.assert_array_equal(layer.backward(dy), dx_ref)
    np.testing.assert_array_equal(layer.grad_weight, dw_ref)
    np.testing.assert_array_equal(layer.grad_bias, db_ref)
    assert layer.gradients()["weight"] is layer.grad_weight


@pytest.mark.parametrize("make,shape", [p for p in LAYERS if "instance" not in p.id])
def test_layer_and_group_norm_are_the_same_in_eval(rng, make, shape):
    layer = make()
    x = rng.normal(size=shape).astype(np.float32)
    np.testing.assert_array_equal(layer(x), layer.eval()(x))


def test_instance_norm_running_stats_only_when_tracked(rng):
    x = rng.normal(3.0, 2.0, SHAPE)
    plain = InstanceNorm(6, dtype=np.float64)
    assert plain.running_mean is None and plain.running_var is None
    assert set(plain.state_dict()) == set() and plain.parameters() == {}
    y = plain(x)
    np.testing.assert_array_equal(plain.eval()(x), y)  # eval without stats: instance stats
    tracked = InstanceNorm(6, track_running_stats=True, momentum=0.5, dtype=np.float64)
    np.testing.assert_array_equal(tracked(x), y)
    inst = x.reshape(4, 6, -1)
    np.testing.assert_allclose(tracked.running_mean, 0.5 * inst.mean(2).mean(0), rtol=1e-12)
    np.testing.assert_allclose(tracked.running_var,
                               0.5 + 0.5 * inst.var(2, ddof=1).mean(0), rtol=1e-12)
    assert tracked.num_batches_tracked == 0  # PyTorch's InstanceNorm does not count
    rm, rv = tracked.running_mean.copy(), tracked.running_var.copy()
    y_eval = tracked.eval()(x)
    np.testing.assert_array_equal(tracked.running_mean, rm)
    np.testing.assert_array_equal(tracked.running_var, rv)
    expected = (x - rm[:, None, None]) / np.sqrt(rv[:, None, None] + 1e-5)
    np.testing.assert_allclose(y_eval, expected, rtol=1e-10, atol=1e-12)
    frozen = InstanceNorm(6, track_running_stats=True, momentum=None)
    frozen(x.astype(np.float32))
    assert (frozen.running_mean == 0).all() and (frozen.running_var == 1).all()


@pytest.mark.parametrize("make,shape", LAYERS)
def test_parameters_are_live_and_gradients_keyed_alike(rng, make, shape):
    layer = make()
    params = layer.parameters()
    assert list(params) == ["weight", "bias"]
    assert params["weight"] is layer.weight and params["bias"] is layer.bias
    assert layer.gradients() == {"weight": None, "bias": None}
    x = rng.normal(size=shape).astype(np.float32)
    y = layer(x)
    params["bias"] += 1.0  # an optimizer's in-place step reaches the next forward
    np.testing.assert_allclose(layer(x), y + 1.0, rtol=1e-6, atol=1e-6)
    layer.backward(np.ones_like(y))
    grads = layer.gradients()
    assert list(grads) == ["weight", "bias"]
    for g, p in zip(grads.values(), params.values()):
        assert g.shape == p.shape and g.dtype == np.float32


def test_layer_norm_without_bias_or_affine():
    ln = LayerNorm([2, 3], bias=False)
    assert ln.normalized_shape == (2, 3) and ln.bias is None
    assert list(ln.parameters()) == ["weight"] and list(ln.state_dict()) == ["weight"]
    x = np.arange(24, dtype=np.float32).reshape(4, 2, 3)
    ln.backward(np.ones_like(ln(x)))
    assert list(ln.gradients()) == ["weight"] and ln.grad_bias is None
    bare = LayerNorm(3, elementwise_affine=False)
    assert bare.weight is None and bare.parameters() == {} and bare.state_dict() == {}
    bare.backward(np.ones_like(bare(x)))
    assert bare.gradients() == {}


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
@pytest.mark.parametrize("make,shape", LAYERS)
def test_dtype(rng, make, shape, dtype):
    layer = make(dtype=dtype)
    for k, v in layer.state_dict().items():
        assert v.dtype == (np.int64 if k == "num_batches_tracked" else dtype), k
    x = rng.normal(size=shape).astype(dtype)
    y = layer(x)
    assert y.dtype == dtype and y.shape == shape
    assert layer.backward(np.ones_like(y)).dtype == dtype
    assert layer.grad_weight.dtype == dtype and layer.grad_bias.dtype == dtype


def test_repr():
    assert repr(LayerNorm(4)) == "LayerNorm((4,), eps=1e-05, elementwise_affine=True, dtype=float32)"
    assert repr(GroupNorm(2, 4, layout="NHWC")) == (
        "GroupNorm(2, 4, eps=1e-05, affine=True, layout='NHWC', dtype=float32)")
    assert repr(InstanceNorm(3, momentum=None, dtype=np.float64)) == (
        "InstanceNorm(3, eps=1e-05, momentum=None, affine=False, track_running_stats=False, "
        "layout='NCHW', dtype=float64)")


# -- state dicts, with PyTorch's modules --------------------------------------------------

TORCH_PAIRS = [  # (fastbn layer, torch module factory, input shape)
    pytest.param(lambda: LayerNorm((3, 5)), lambda nn: nn.LayerNorm((3, 5)), SHAPE, id="layer"),
    pytest.param(lambda: LayerNorm(5, bias=False), lambda nn: nn.LayerNorm(5, bias=False),
                 SHAPE, id="layer-nobias"),
    pytest.param(lambda: GroupNorm(3, 6), lambda nn: nn.GroupNorm(3, 6), SHAPE, id="group"),
    pytest.param(lambda: InstanceNorm(6), lambda nn: nn.InstanceNorm2d(6), SHAPE, id="instance"),
    pytest.param(lambda: InstanceNorm(6, affine=True, track_running_stats=True),
                 lambda nn: nn.InstanceNorm2d(6, affine=True, track_running_stats=True),
                 SHAPE, id="instance-tracked"),
    pytest.param(lambda: InstanceNorm(6, track_running_stats=True),
                 lambda nn: nn.InstanceNorm1d(6, track_running_stats=True), (4, 6, 7),
                 id="instance1d"),
]


@pytest.mark.parametrize("make,make_torch,shape", TORCH_PAIRS)
def test_state_dict_round_trips_with_torch(rng, make, make_torch, shape):
    torch = pytest.importorskip("torch")
    module, layer = make_torch(torch.nn).double(), make()
    assert set(layer.state_dict()) == set(module.state_dict())
    with torch.no_grad():
        for v in module.state_dict().values():
            if v.is_floating_point():
                v.uniform_(0.5, 1.5)
            else:
                v.fill_(7)
    layer.load_state_dict({k: v.numpy() for k, v in module.state_dict().items()})
    x = rng.normal(1.0, 2.0, shape)
    for training in (True, False):  # the running statistics too
        module.train(training)
        layer.train(training)
        expected = module(torch.from_numpy(x)).detach().numpy()
        np.testing.assert_allclose(layer(x.astype(np.float32)), expected, rtol=1e-4, atol=1e-4)
    module.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
    for k, v in module.state_dict().items():
        np.testing.assert_allclose(v.numpy(), layer.state_dict()[k], rtol=1e-6)


def test_state_dict_returns_copies():
    inorm = InstanceNorm(2, affine=True, track_running_stats=True)
    state = inorm.state_dict()
    for k in ("weight", "running_var"):
        state[k] += 5.0
    assert (inorm.weight == 1).all() and (inorm.running_var == 1).all()


@pytest.mark.parametrize("layer,key,given,exc,pattern", [
    (LayerNorm((3, 5)), "weight", np.ones(5), ValueError,
     r"^state\['weight'\] must have shape \(3, 5\) \(normalized_shape=\(3, 5\)\), got shape \(5,\)$"),
    (GroupNorm(2, 6), "bias", np.zeros((1, 6)), ValueError,
     r"^state\['bias'\] must have shape \(6,\) \(num_channels=6\), got shape \(1, 6\)$"),
    (InstanceNorm(3, track_running_stats=True), "running_var", np.ones(4), ValueError,
     r"^state\['running_var'\] must have shape \(3,\) \(num_features=3\), got shape \(4,\)$"),
    (InstanceNorm(3, track_running_stats=True), "running_mean", np.zeros(3, np.int32), TypeError,
     r"^state\['running_mean'\] must have a float dtype, got dtype int32$"),
    (InstanceNorm(3, track_running_stats=True), "num_batches_tracked", -1, ValueError,
     r"^state\['num_batches_tracked'\] must be one non-negative integer"),
], ids=["layer-shape", "group-shape", "instance-shape", "instance-int", "instance-count"])
def test_load_state_dict_errors_change_nothing(layer, key, given, exc, pattern):
    before = layer.state_dict()
    good = {k: v + 1 for k, v in before.items()}  # would change every array
    with pytest.raises(exc, match=pattern):
        layer.load_state_dict({**good, key: given})
    with pytest.raises(ValueError, match=r"^state dict keys: expected .*missing \['" + key):
        layer.load_state_dict({k: v for k, v in good.items() if k != key})
    with pytest.raises(ValueError, match=r"unexpected \['extra'\]\)$"):
        layer.load_state_dict({**good, "extra": np.ones(1)})
    with pytest.raises(TypeError, match=r"^state must be a dict"):
        layer.load_state_dict(list(good.items()))
    for k, v in layer.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


# -- errors --------------------------------------------------------------------------------

@pytest.mark.parametrize("make,exc,pattern", [
    (lambda: GroupNorm(4, 6), ValueError,
     r"^num_channels must be divisible by num_groups, got num_channels=6 and num_groups=4$"),
    (lambda: GroupNorm(0, 6), ValueError, r"^num_groups must be >= 1, got 0$"),
    (lambda: GroupNorm(2, 6.0), TypeError, r"^num_channels must be an int, got float 6\.0$"),
    (lambda: LayerNorm(()), ValueError, r"^normalized_shape must have 1 to 4 axes"),
    (lambda: LayerNorm((2, 0)), ValueError, r"of length >= 1 .*got \(2, 0\)$"),
    (lambda: LayerNorm((1, 2, 3, 4, 5)), ValueError, r"^normalized_shape must have 1 to 4 axes"),
    (lambda: LayerNorm(2.0), TypeError,
     r"^normalized_shape must be an int or a tuple of ints, got float 2\.0$"),
    (lambda: LayerNorm(True), TypeError, r"^normalized_shape must be an int or a tuple"),
    (lambda: InstanceNorm(0), ValueError, r"^num_features must be >= 1, got 0$"),
    (lambda: InstanceNorm(3, eps=-1e-5), ValueError, r"^eps must be a finite number >= 0"),
    (lambda: LayerNorm(3, eps=float("nan")), ValueError, r"^eps must be a finite number >= 0"),
    (lambda: InstanceNorm(3, momentum=1.5), ValueError, r"^momentum must be in \[0, 1\], got 1\.5$"),
    (lambda: InstanceNorm(3, momentum=-0.1), ValueError, r"^momentum must be in \[0, 1\]"),
    (lambda: GroupNorm(1, 3, layout="NWHC"), ValueError, r"^layout must be one of"),
    (lambda: InstanceNorm(3, dtype=np.int32), TypeError,
     r"^dtype must be float16, float32 or float64, got int32$"),
    (lambda: LayerNorm(3, bias="no"), TypeError, r"^bias must be True or False, got str 'no'$"),
])
def test_constructor_errors(make, exc, pattern):
    with pytest.raises(exc, match=pattern):
        make()


@pytest.mark.parametrize("make,shape", LAYERS)
def test_backward_before_forward(make, shape):
    with pytest.raises(RuntimeError, match=r"^backward needs the input of a forward call, got "
                                           r"none: call the layer on a batch first$"):
        make().backward(np.ones(shape, np.float32))


@pytest.mark.parametrize("layer,good,shape,pattern", [
    (LayerNorm((3, 5)), (2, 3, 5), (4, 5, 3),
     r"^LayerNorm\(normalized_shape=\(3, 5\)\) expects an input whose last 2 axes have shape "
     r"\(3, 5\), with at least one axis before, got shape \(4, 5, 3\)$"),
    (LayerNorm((3, 5)), (2, 3, 5), (3, 5), r"got shape \(3, 5\)$"),
    (GroupNorm(2, 4), (2, 4), (2, 6, 3),
     r"^GroupNorm\(num_channels=4, layout='NCHW'\) expects 4 channels on axis 1 of a rank-3 "
     r"input, got shape \(2, 6, 3\)$"),
    (InstanceNorm(3, layout="NHWC"), (2, 4, 3), (2, 3, 5, 4),
     r"^InstanceNorm\(num_features=3, layout='NHWC'\) expects 3 channels on axis 3 .*"
     r"pass layout='NCHW'$"),
    (InstanceNorm(3), (2, 3, 4), (2, 3),
     r"^x: expected an input of rank 3 to 5, got rank 2 \(shape \(2, 3\)\)$"),
])
def test_input_errors_name_the_layer_and_change_nothing(rng, layer, good, shape, pattern):
    x = rng.normal(size=good).astype(np.float32)
    y = layer(x)
    with pytest.raises(ValueError, match=pattern):
        layer(np.ones(shape, np.float32))
    assert layer.backward(np.ones_like(y)).shape == good  # the cache of the last forward


def test_instance_norm_one_spatial_value_names_the_layer():
    """Training needs more than one spatial value; the message names the
    layer; eval with running statistics accepts one."""
    layer = InstanceNorm(3, track_running_stats=True)
    x = np.ones((4, 3, 1, 1), np.float32)
    with pytest.raises(ValueError, match=r"InstanceNorm\(num_features=3\).*more than 1 spatial"):
        layer(x)
    assert layer.running_mean.tolist() == [0, 0, 0]
    assert layer.eval()(x).shape == x.shape
