"""LayerNorm, GroupNorm and InstanceNorm functional API against PyTorch's
F.layer_norm / F.group_norm / F.instance_norm (CPU): outputs, autograd
gradients and InstanceNorm's running statistics. NHWC inputs are compared
after moving the channel axis to PyTorch's NCHW."""

from __future__ import annotations

import numpy as np
import pytest

from family_helpers import Norm, all_cases, ids, instance_cases

torch = pytest.importorskip("torch")
F = torch.nn.functional

CASES = all_cases() + [Norm("group", (2, 8, 12, 12), 4, "NHWC")]
DT = pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])


def _tol(dtype):
    return 1e-10 if dtype == np.float64 else 1e-5


def _to_nchw(a, norm):
    return np.moveaxis(a, -1, 1) if norm.kind != "layer" and norm.layout == "NHWC" else a


def _torch_call(norm, xt, wt, bt, eps, **kw):
    if norm.kind == "layer":
        return F.layer_norm(xt, norm.param_shape, wt, bt, eps)
    if norm.kind == "group":
        return F.group_norm(xt, norm.arg, wt, bt, eps)
    return F.instance_norm(xt, kw.get("running_mean"), kw.get("running_var"), wt, bt,
                           kw.get("use_input_stats", True), kw.get("momentum", 0.1), eps)


def _compare(norm, dtype, x, dy, w, b, eps, **kw):
    """fastbn's forward/backward and PyTorch's autograd on the same data;
    running statistics in ``kw`` are given to each as its own copy, and the
    updated copies are compared."""
    t = _tol(dtype)
    tensors = {k: torch.from_numpy(np.array(v)) for k, v in kw.items() if isinstance(v, np.ndarray)}
    xt = torch.from_numpy(np.ascontiguousarray(_to_nchw(x, norm))).requires_grad_()
    wt = None if w is None else torch.from_numpy(w.copy()).requires_grad_()
    bt = None if b is None else torch.from_numpy(b.copy()).requires_grad_()
    yt = _torch_call(norm, xt, wt, bt, eps, **{**kw, **tensors})
    yt.backward(torch.from_numpy(np.ascontiguousarray(_to_nchw(dy, norm))))
    y, cache = norm.forward(x, w, b, eps=eps, **kw)
    dx, dw, db = norm.backward(dy, cache)
    scale = max(1.0, float(np.abs(x).max()))
    np.testing.assert_allclose(_to_nchw(y, norm), yt.detach().numpy(), rtol=t, atol=t)
    np.testing.assert_allclose(_to_nchw(dx, norm), xt.grad.numpy(), rtol=10 * t,
                               atol=10 * t * scale)
    for got, want in ((dw, wt), (db, bt)):
        if want is not None:
            np.testing.assert_allclose(got, want.grad.numpy(), rtol=10 * t,
                                       atol=10 * t * np.abs(dy).sum())
    for k, v in tensors.items():
        np.testing.assert_allclose(kw[k], v.numpy(), rtol=t, atol=t, err_msg=k)


@DT
@pytest.mark.parametrize("norm", CASES, ids=ids(CASES))
def test_vs_torch(rng, norm, dtype):
    x = norm.data(rng, dtype)
    dy = rng.standard_normal(norm.shape).astype(dtype)
    w, b = norm.params(rng, dtype)
    _compare(norm, dtype, x, dy, w, b, 1e-5)
    _compare(norm, dtype, x, dy, None, None, 1e-3)


@DT
@pytest.mark.parametrize("use_input_stats", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("norm", instance_cases(), ids=ids(instance_cases()))
def test_instance_running_stats_vs_torch(rng, norm, dtype, use_input_stats):
    """Three steps with running statistics (updated with the unbiased
    per-instance variance in training; used as constants in eval)."""
    C = norm.channels
    rm = rng.uniform(-1, 1, C).astype(dtype)
    rv = rng.uniform(0.5, 2, C).astype(dtype)
    w, b = norm.params(rng, dtype)
    for step in range(3):
        x = norm.data(rng, dtype, loc=step)
        dy = rng.standard_normal(norm.shape).astype(dtype)
        before = rm.copy(), rv.copy()
        _compare(norm, dtype, x, dy, w, b, 1e-5, running_mean=rm, running_var=rv,
                 use_input_stats=use_input_stats, momentum=0.3)
        assert np.array_equal(rm, before[0]) != use_input_stats  # updated in training only
