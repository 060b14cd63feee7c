"""fold_batch_norm: the folded layer equals the layer followed by bn.eval(),
for every weight layout (float64), against PyTorch's modules where they exist."""

from __future__ import annotations

import numpy as np
import pytest

import fastbn
from helpers import assert_message, unchanged

try:
    import torch
    import torch.nn.functional as F
    from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval
except ImportError:  # pragma: no cover
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="needs torch (the oracle)")


def _bn(rng, C, *, layout="NCHW", dtype=np.float64, affine=True, eps=1e-3):
    """A BatchNorm with random running statistics and parameters, left in
    training mode: folding must use the running statistics whatever the mode."""
    bn = fastbn.BatchNorm(C, layout=layout, dtype=dtype, affine=affine, eps=eps)
    bn.running_mean[...] = rng.normal(0.5, 1.0, C)
    bn.running_var[...] = rng.uniform(0.2, 3.0, C)
    if affine:
        bn.weight[...] = rng.normal(1.0, 0.5, C)
        bn.bias[...] = rng.normal(0.0, 0.5, C)
    return bn


def _snapshot(weight, bias, bn) -> dict:
    snap = {"weight": weight.copy(), "bias": None if bias is None else bias.copy(),
            "training": bn.training, "count": bn.num_batches_tracked}
    snap.update({f"bn.{k}": v for k, v in bn.state_dict().items()})
    return snap


def _fold(weight, bias, bn, **kw):
    """fold_batch_norm, checking that it changes nothing and keeps the dtype."""
    before = _snapshot(weight, bias, bn)
    w2, b2 = fastbn.fold_batch_norm(weight, bias, bn, **kw)
    unchanged(before, _snapshot(weight, bias, bn))
    assert w2.shape == weight.shape and w2.dtype == weight.dtype
    assert b2.shape == (bn.num_features,) and b2.dtype == weight.dtype
    assert not np.shares_memory(w2, weight)
    return w2, b2


def _close(actual, expected):
    scale = max(1.0, float(np.max(np.abs(expected))))
    np.testing.assert_allclose(actual, expected, rtol=1e-11, atol=1e-11 * scale)


def _composed(bn, y):
    bn.eval()
    try:
        return bn(y)
    finally:
        bn.train()


# ---------------------------------------------------------------------------
# PyTorch layouts: Linear (out, in), Conv (O, I/g, k...), ConvTranspose (I, O/g, k...)

def _torch_bn(bn, rank):
    tbn = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d,
           5: torch.nn.BatchNorm3d}[rank](bn.num_features, eps=bn.eps, affine=bn.affine,
                                          dtype=torch.float64)
    state = {k: torch.from_numpy(v.copy()) for k, v in bn.state_dict().items()}
    tbn.load_state_dict(state)
    return tbn.eval()


def _params(module):
    bias = None if module.bias is None else module.bias.detach().numpy().copy()
    return module.weight.detach().numpy().copy(), bias


@needs_torch
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_torch_linear(rng, bias, affine):
    C = 5
    lin = torch.nn.Linear(7, C, bias=bias, dtype=torch.float64)
    w, b = _params(lin)
    bn = _bn(rng, C, affine=affine)
    w2, b2 = _fold(w, b, bn, out_axis=0)
    x = rng.normal(size=(9, 7))
    expected = _composed(bn, F.linear(torch.from_numpy(x), lin.weight, lin.bias).detach().numpy())
    got = F.linear(torch.from_numpy(x), torch.from_numpy(w2), torch.from_numpy(b2)).numpy()
    _close(got, expected)
    if not affine:
        return  # PyTorch's own fold fails without BN weight/bias (pytorch#122183)
    fused = fuse_linear_bn_eval(lin.eval(), _torch_bn(bn, 2))
    _close(w2, fused.weight.detach().numpy())
    _close(b2, fused.bias.detach().numpy())


_CONV = {1: (torch.nn.Conv1d, torch.nn.ConvTranspose1d) if torch else None,
         2: (torch.nn.Conv2d, torch.nn.ConvTranspose2d) if torch else None,
         3: (torch.nn.Conv3d, torch.nn.ConvTranspose3d) if torch else None}


def _conv_input(rng, dims, c_in):
    return torch.from_numpy(rng.normal(size=(2, c_in) + (5,) * dims))


@needs_torch
@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("groups, c_in, bias", [(1, 4, True), (2, 4, False), (3, 6, True),
                                                (6, 6, True)])  # 6: depthwise
def test_torch_conv(rng, dims, groups, c_in, bias):
    C = 6
    conv = _CONV[dims][0](c_in, C, 3, groups=groups, bias=bias, dtype=torch.float64)
    w, b = _params(conv)
    assert w.shape == (C, c_in // groups) + (3,) * dims
    bn = _bn(rng, C)
    w2, b2 = _fold(w, b, bn, out_axis=0)
    x = _conv_input(rng, dims, c_in)
    expected = _composed(bn, conv(x).detach().numpy())
    conv2 = getattr(F, f"conv{dims}d")
    got = conv2(x, torch.from_numpy(w2), torch.from_numpy(b2), groups=groups).numpy()
    _close(got, expected)
    fused = fuse_conv_bn_eval(conv.eval(), _torch_bn(bn, dims + 2))
    _close(w2, fused.weight.detach().numpy())
    _close(b2, fused.bias.detach().numpy())


@needs_torch
@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("groups, c_in, bias, affine", [
    (1, 4, True, True), (1, 4, False, False), (2, 4, True, True), (3, 6, False, True),
    (2, 4, True, False), (6, 6, True, True)])
def test_torch_conv_transpose(rng, dims, groups, c_in, bias, affine):
    """(I, O/g, k...): out_axis=1, and groups > 1 splits axis 0. PyTorch's own
    fold is only right for groups=1 (pytorch#180995): compare with the
    composition, and with torch's fold where it holds."""
    C = 6
    conv = _CONV[dims][1](c_in, C, 3, groups=groups, bias=bias, dtype=torch.float64)
    w, b = _params(conv)
    assert w.shape == (c_in, C // groups) + (3,) * dims
    bn = _bn(rng, C, affine=affine)
    w2, b2 = _fold(w, b, bn, out_axis=1, groups=groups)
    x = _conv_input(rng, dims, c_in)
    expected = _composed(bn, conv(x).detach().numpy())
    conv2 = getattr(F, f"conv_transpose{dims}d")
    got = conv2(x, torch.from_numpy(w2), torch.from_numpy(b2), groups=groups).numpy()
    _close(got, expected)
    if groups == 1:
        fused = fuse_conv_bn_eval(conv.eval(), _torch_bn(bn, dims + 2), transpose=True)
        _close(w2, fused.weight.detach().numpy())
        _close(b2, fused.bias.detach().numpy())


# ---------------------------------------------------------------------------
# NumPy layouts: (in, out) matrices, HWIO kernels (Keras, Flax, TensorFlow)

@pytest.mark.parametrize("out_axis", [-1, 1])
@pytest.mark.parametrize("bias", [True, False])
def test_in_out_matrix(rng, out_axis, bias):
    C = 5
    w = rng.normal(size=(7, C))
    b = rng.normal(size=C) if bias else None
    bn = _bn(rng, C)
    w2, b2 = _fold(w, b, bn, out_axis=out_axis)
    x = rng.normal(size=(9, 7))
    expected = _composed(bn, x @ w + (0.0 if b is None else b))
    _close(x @ w2 + b2, expected)


def _conv_hwio(x, k, groups=1):
    """Valid NHWC convolution, kernel (kH, kW, I/groups, O) (Keras, Flax, TF)."""
    kh, kw, cig, O = k.shape
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))
    # win: (N, H', W', I, kH, kW) -> split I and O into groups
    n, h, w_ = win.shape[:3]
    win = win.reshape(n, h, w_, groups, cig, kh, kw)
    kg = k.reshape(kh, kw, cig, groups, O // groups)
    y = np.einsum("nhwgcij,ijcgo->nhwgo", win, kg)
    return y.reshape(n, h, w_, O)


@pytest.mark.parametrize("groups, c_in", [(1, 4), (2, 4), (3, 3)])
@pytest.mark.parametrize("affine", [True, False])
def test_hwio_kernel(rng, groups, c_in, affine):
    C = 6
    k = rng.normal(size=(3, 2, c_in // groups, C))
    b = rng.normal(size=C)
    bn = _bn(rng, C, layout="NHWC", affine=affine)
    w2, b2 = _fold(k, b, bn, out_axis=-1)
    x = rng.normal(size=(2, 6, 5, c_in))
    expected = _composed(bn, _conv_hwio(x, k, groups) + b)
    _close(_conv_hwio(x, w2, groups) + b2, expected)


def test_hwio_kernel_matches_torch_conv(rng):
    """The NumPy HWIO convolution above is PyTorch's Conv2d on the permuted kernel."""
    if torch is None:
        pytest.skip("needs torch")
    k = rng.normal(size=(3, 2, 2, 6))
    x = rng.normal(size=(2, 6, 5, 4))
    ref = F.conv2d(torch.from_numpy(x).permute(0, 3, 1, 2),
                   torch.from_numpy(k).permute(3, 2, 0, 1), groups=2)
    _close(_conv_hwio(x, k, 2), ref.permute(0, 2, 3, 1).numpy())


@needs_torch
def test_keras_conv_transpose_kernel(rng):
    """Keras/TF Conv2DTranspose kernels are (kH, kW, O, I): out_axis=-2."""
    C, c_in = 6, 4
    k = rng.normal(size=(3, 3, C, c_in))
    b = rng.normal(size=C)
    bn = _bn(rng, C)
    w2, b2 = _fold(k, b, bn, out_axis=-2)
    x = _conv_input(rng, 2, c_in)

    def layer(kernel, bias):
        t = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
        return F.conv_transpose2d(x, t, torch.from_numpy(bias)).numpy()

    _close(layer(w2, b2), _composed(bn, layer(k, b)))


def test_formula_and_mode(rng):
    """W' = W·γ/√(var+ε) along out_axis, b' = (b − μ)·γ/√(var+ε) + β, from the
    running statistics in training and in eval mode alike."""
    C = 4
    bn = _bn(rng, C, eps=0.25)
    w = rng.normal(size=(C, 3))
    b = rng.normal(size=C)
    s = bn.weight / np.sqrt(bn.running_var + 0.25)
    expected = (w * s[:, None], (b - bn.running_mean) * s + bn.bias)
    for mode in (True, False):
        bn.train(mode)
        w2, b2 = _fold(w, b, bn)
        _close(w2, expected[0])
        _close(b2, expected[1])


def test_grouped_block_order(rng):
    """groups=g: block g of axis 0, entry j of out_axis, is channel g*(C//g)+j."""
    bn = _bn(rng, 6)
    w = np.ones((4, 3, 2))  # 2 blocks of 2 rows, 3 channels each
    w2, _ = _fold(w, None, bn, out_axis=1, groups=2)
    s = bn.weight / np.sqrt(bn.running_var + bn.eps)
    for g in range(2):
        for j in range(3):
            np.testing.assert_allclose(w2[2 * g:2 * g + 2, j], s[3 * g + j], rtol=1e-15)


# ---------------------------------------------------------------------------
# dtypes, read-only inputs, SyncBatchNorm

@pytest.mark.parametrize("wdtype", [np.float32, np.float16])
@pytest.mark.parametrize("bndtype", [np.float32, np.float64])
def test_low_precision_keeps_dtype(rng, wdtype, bndtype):
    C = 6
    bn = _bn(rng, C, dtype=bndtype)
    w = rng.normal(size=(4, C // 2, 3, 3)).astype(wdtype)
    b = rng.normal(size=C).astype(wdtype)
    w2, b2 = _fold(w, b, bn, out_axis=1, groups=2)
    r64 = fastbn.fold_batch_norm(w.astype(np.float64), b.astype(np.float64), bn,
                                 out_axis=1, groups=2)
    rtol = np.finfo(wdtype).eps
    np.testing.assert_allclose(w2, r64[0], rtol=rtol, atol=rtol * np.abs(r64[0]).max())
    np.testing.assert_allclose(b2, r64[1], rtol=rtol, atol=rtol * np.abs(r64[1]).max())
    # float64 arithmetic then one rounding: exactly the rounded float64 result
    np.testing.assert_array_equal(w2, r64[0].astype(wdtype))
    np.testing.assert_array_equal(b2, r64[1].astype(wdtype))


def test_read_only_and_strided_inputs(rng):
    C = 5
    bn = _bn(rng, C)
    w = rng.normal(size=(C, 14))[:, ::2]
    b = rng.normal(size=2 * C)[::2]
    w.flags.writeable = b.flags.writeable = False
    w2, b2 = _fold(w, b, bn)
    ref = _fold(w.copy(), b.copy(), bn)
    np.testing.assert_array_equal(w2, ref[0])
    np.testing.assert_array_equal(b2, ref[1])
    assert w2.flags.writeable and b2.flags.writeable


def test_sync_batch_norm(rng):
    pytest.importorskip("mpi4py")
    C = 4
    sbn = fastbn.SyncBatchNorm(C, dtype=np.float64, eps=1e-3)
    bn = _bn(rng, C)
    sbn.load_state_dict(bn.state_dict())
    w = rng.normal(size=(C, 3))
    ref = _fold(w, None, bn)
    got = _fold(w, None, sbn)
    np.testing.assert_array_equal(got[0], ref[0])
    np.testing.assert_array_equal(got[1], ref[1])


# ---------------------------------------------------------------------------
# errors: the right exception, a message naming expected and given, nothing changed

def _raises(exc, weight, bias, bn, groups_, **kw):
    before = _snapshot(weight, bias, bn) if isinstance(bn, fastbn.BatchNorm) else None
    with pytest.raises(exc) as excinfo:
        fastbn.fold_batch_norm(weight, bias, bn, **kw)
    if before is not None:
        unchanged(before, _snapshot(weight, bias, bn))
    assert_message(excinfo, *groups_)


def test_error_not_a_batch_norm(rng):
    w = np.ones((3, 2))
    for bn in (fastbn.LayerNorm(3), None, {"running_mean": np.zeros(3)}):
        _raises(TypeError, w, None, bn, ["fastbn.BatchNorm", type(bn).__name__])
    if torch is not None:
        _raises(TypeError, w, None, torch.nn.BatchNorm1d(3), ["fastbn.BatchNorm", "BatchNorm1d"])


def test_error_no_running_stats(rng):
    bn = fastbn.BatchNorm(3, track_running_stats=False, dtype=np.float64).eval()
    _raises(ValueError, np.ones((3, 2)), None, bn, ["running statistics",
                                                       "track_running_stats=False"])


@pytest.mark.parametrize("shape, kw, groups_", [
    ((4, 2), {}, ["(4, 2)", "C=3"]),
    ((3, 2), {"out_axis": 1}, ["(3, 2)", "C=3", "out_axis=1"]),
    ((2, 4, 3), {"out_axis": 1, "groups": 3}, ["(2, 4, 3)", "C // groups", "= 1"]),
    ((3,) * 2, {"out_axis": 2}, ["out_axis", "[-2, 1]", "got 2"]),
    ((3,) * 2, {"out_axis": -3}, ["out_axis", "[-2, 1]", "got -3"]),
    ((3, 1, 2), {"out_axis": 1, "groups": 2}, ["groups", "dividing C=3", "got 2"]),
    ((3, 1, 2), {"out_axis": 1, "groups": 0}, ["groups", ">= 1", "got 0"]),
    ((3, 1, 2), {"out_axis": 1, "groups": -3}, ["groups", ">= 1", "got -3"]),
    ((4, 1, 2), {"out_axis": 1, "groups": 3}, ["groups=3", "axis 0", "(4, 1, 2)"]),
    ((3, 1, 2), {"out_axis": 0, "groups": 3}, ["out_axis", "axis 0", "groups=3"]),
    ((), {}, ["at least 1 dimension", "()"]),
])
def test_error_shapes_and_axes(rng, shape, kw, groups_):
    bn = _bn(rng, 3)
    _raises(ValueError, np.ones(shape), np.zeros(3), bn, groups_, **kw)


@pytest.mark.parametrize("bias_shape", [(4,), (1, 3), (3, 1), ()])
def test_error_bias_shape(rng, bias_shape):
    bn = _bn(rng, 3)
    _raises(ValueError, np.ones((3, 2)), np.zeros(bias_shape), bn,
            ["bias", "(3,)", str(bias_shape)])


@pytest.mark.parametrize("kw, groups_", [
    ({"out_axis": 0.0}, ["out_axis", "int", "0.0"]),
    ({"out_axis": True}, ["out_axis", "int", "True"]),
    ({"groups": 1.0}, ["groups", "int", "1.0"]),
    ({"groups": None}, ["groups", "int", "None"]),
])
def test_error_axis_types(rng, kw, groups_):
    _raises(TypeError, np.ones((3, 2)), None, _bn(rng, 3), groups_, **kw)


@pytest.mark.parametrize("dtype", [np.int64, np.bool_, np.complex128, object])
def test_error_weight_dtype(rng, dtype):
    w = np.ones((3, 2), dtype=dtype)
    _raises(TypeError, w, None, _bn(rng, 3), ["weight", "floating", np.dtype(dtype).name])


def test_error_bias_dtype(rng):
    _raises(TypeError, np.ones((3, 2)), np.array(["a", "b", "c"]), _bn(rng, 3),
            ["bias", "numeric", "<U1"])


def test_integer_bias_is_fine(rng):
    bn = _bn(rng, 3)
    w2, b2 = _fold(np.ones((3, 2), np.float32), np.arange(3), bn)
    ref = _fold(np.ones((3, 2), np.float32), np.arange(3.0), bn)
    np.testing.assert_array_equal(b2, ref[1])
