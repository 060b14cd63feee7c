"""Parity with PyTorch's BatchNorm (CPU)."""

from __future__ import annotations

import numpy as np
import pytest

import fastbn

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _torch_bn(rank, C, **kw):
    cls = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d,
           4: torch.nn.BatchNorm2d, 5: torch.nn.BatchNorm3d}[rank]
    return cls(C, dtype=torch.float64, **kw)


def _tol(dtype):
    return (1e-10, 1e-10) if dtype == np.float64 else (1e-5, 1e-5)


SHAPES = {2: (8, 3), 3: (4, 3, 7), 4: (3, 3, 5, 6), 5: (2, 3, 3, 4, 5)}


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("rank", [2, 3, 4, 5])
def test_layer_vs_torch_module(rng, rank, dtype, momentum):
    """Several training steps (y, dx, grads, running stats), then eval."""
    shape = SHAPES[rank]
    C = shape[1]
    tbn = _torch_bn(rank, C, momentum=momentum).to(
        torch.float32 if dtype == np.float32 else torch.float64)
    bn = fastbn.BatchNorm(C, momentum=momentum, dtype=dtype)
    w = rng.uniform(0.5, 2, C).astype(dtype)
    b = rng.uniform(-1, 1, C).astype(dtype)
    with torch.no_grad():
        tbn.weight.copy_(torch.from_numpy(w))
        tbn.bias.copy_(torch.from_numpy(b))
    bn.weight[...] = w
    bn.bias[...] = b
    rtol, atol = _tol(dtype)
    for step in range(5):
        x = (rng.standard_normal(shape) * (1 + step) + step).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        xt = torch.from_numpy(x.copy()).requires_grad_()
        tbn.zero_grad()
        yt = tbn(xt)
        yt.backward(torch.from_numpy(dy))
        y = bn(x)
        dx = bn.backward(dy)
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=rtol, atol=atol)
        np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=rtol * 10, atol=atol * 10)
        np.testing.assert_allclose(bn.grad_weight, tbn.weight.grad.numpy(),
                                   rtol=rtol * 10, atol=atol * 10)
        np.testing.assert_allclose(bn.grad_bias, tbn.bias.grad.numpy(),
                                   rtol=rtol * 10, atol=atol * 10)
        np.testing.assert_allclose(bn.running_mean, tbn.running_mean.numpy(),
                                   rtol=rtol, atol=atol)
        np.testing.assert_allclose(bn.running_var, tbn.running_var.numpy(),
                                   rtol=rtol, atol=atol)
        assert bn.num_batches_tracked == int(tbn.num_batches_tracked)
    bn.eval()
    tbn.eval()
    x = rng.standard_normal(shape).astype(dtype)
    with torch.no_grad():
        yt = tbn(torch.from_numpy(x))
    np.testing.assert_allclose(bn(x), yt.numpy(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("rank", [3, 4, 5])
def test_channels_last_memory_format(rng, rank):
    """A channels_last tensor's .numpy() is physically NHWC: pass it as NCHW
    (strided) or its moveaxis as NHWC (contiguous)."""
    shape = SHAPES[rank]
    xt = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
    if rank == 4:
        xt = xt.contiguous(memory_format=torch.channels_last)
    elif rank == 5:
        xt = xt.contiguous(memory_format=torch.channels_last_3d)
    else:
        xt = xt.transpose(1, 2).contiguous().transpose(1, 2)
    assert not xt.is_contiguous()
    tbn = _torch_bn(rank, 3).float()
    with torch.no_grad():
        tbn.weight.uniform_(0.5, 2.0)
        tbn.bias.uniform_(-1.0, 1.0)
    yt = tbn(xt).detach().numpy()
    xn = xt.numpy()
    for layout, arr in (("NCHW", xn), ("NHWC", np.moveaxis(xn, 1, -1))):
        bn = fastbn.BatchNorm(3, layout=layout)
        bn.load_state_dict({k: v.numpy() for k, v in tbn.state_dict().items()})
        # tbn already ran one step: reset the running stats to the initial ones
        bn.running_mean[...] = 0.0
        bn.running_var[...] = 1.0
        bn.num_batches_tracked = 0
        y = bn(arr)
        if layout == "NHWC":
            y = np.moveaxis(y, -1, 1)
        np.testing.assert_allclose(y, yt, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(bn.running_mean, tbn.running_mean.numpy(),
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(bn.running_var, tbn.running_var.numpy(),
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("rank", [2, 4, 5])
def test_functional_vs_F_batch_norm(rng, rank, training):
    shape = SHAPES[rank]
    C = shape[1]
    x = rng.standard_normal(shape) * 3 + 1
    w = rng.uniform(0.5, 2, C)
    b = rng.uniform(-1, 1, C)
    rm = rng.uniform(-1, 1, C)
    rv = rng.uniform(0.5, 2, C)
    dy = rng.standard_normal(shape)
    trm, trv = torch.from_numpy(rm.copy()), torch.from_numpy(rv.copy())
    xt = torch.from_numpy(x.copy()).requires_grad_()
    wt = torch.from_numpy(w.copy()).requires_grad_()
    bt = torch.from_numpy(b.copy()).requires_grad_()
    yt = F.batch_norm(xt, trm, trv, wt, bt, training=training, momentum=0.2, eps=1e-3)
    yt.backward(torch.from_numpy(dy))
    frm, frv = rm.copy(), rv.copy()
    y, cache = fastbn.batch_norm_forward(x, w, b, training=training, running_mean=frm,
                                         running_var=frv, momentum=0.2, eps=1e-3)
    dx, dw, db = fastbn.batch_norm_backward(dy, cache)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(frm, trm.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(frv, trv.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(dw, wt.grad.numpy(), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(db, bt.grad.numpy(), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("track", [True, False])
def test_state_dict_keys_match_torch(affine, track):
    tbn = torch.nn.BatchNorm2d(4, affine=affine, track_running_stats=track)
    bn = fastbn.BatchNorm(4, affine=affine, track_running_stats=track)
    assert set(bn.state_dict()) == set(tbn.state_dict())


def _same_output(bn, tbn, x, atol):
    """fastbn's and PyTorch's layers give the same output for float32 ``x``."""
    x = x.astype(np.float32)
    with torch.no_grad():
        yt = tbn(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(bn(x), yt, rtol=1e-5, atol=atol)


def test_state_dict_torch_to_fastbn(rng):
    tbn = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        tbn.weight.uniform_(0.5, 2)
        tbn.bias.uniform_(-1, 1)
    for _ in range(3):
        tbn(torch.from_numpy(rng.standard_normal((4, 3, 5, 5)).astype(np.float32) * 2 + 1))
    bn = fastbn.BatchNorm(3)
    bn.load_state_dict({k: v.numpy() for k, v in tbn.state_dict().items()})
    assert bn.num_batches_tracked == 3
    np.testing.assert_array_equal(bn.running_mean, tbn.running_mean.numpy())
    np.testing.assert_array_equal(bn.weight, tbn.weight.detach().numpy())
    _same_output(bn.eval(), tbn.eval(), rng.standard_normal((2, 3, 4, 4)), atol=1e-6)
    # and training continues identically
    _same_output(bn.train(), tbn.train(), rng.standard_normal((4, 3, 3, 3)), atol=1e-5)
    np.testing.assert_allclose(bn.running_var, tbn.running_var.numpy(), rtol=1e-5)
    assert bn.num_batches_tracked == int(tbn.num_batches_tracked) == 4


def test_state_dict_fastbn_to_torch(rng):
    bn = fastbn.BatchNorm(3)
    bn.weight[...] = [0.5, 1.0, 2.0]
    bn.bias[...] = [0.1, -0.2, 0.3]
    for _ in range(2):
        bn(rng.standard_normal((4, 3, 5, 5)).astype(np.float32) * 2 - 1)
    tbn = torch.nn.BatchNorm2d(3)
    result = tbn.load_state_dict({k: torch.from_numpy(v) for k, v in bn.state_dict().items()})
    assert not result.missing_keys and not result.unexpected_keys
    assert int(tbn.num_batches_tracked) == 2
    assert tbn.num_batches_tracked.dtype == torch.int64
    np.testing.assert_array_equal(tbn.running_var.numpy(), bn.running_var)
    _same_output(bn.eval(), tbn.eval(), rng.standard_normal((2, 3, 4, 4)), atol=1e-6)


def test_no_running_stats_eval_matches_torch(rng):
    tbn = torch.nn.BatchNorm1d(3, track_running_stats=False, dtype=torch.float64).eval()
    bn = fastbn.BatchNorm(3, track_running_stats=False, dtype=np.float64).eval()
    x = rng.standard_normal((6, 3, 4))
    with torch.no_grad():
        yt = tbn(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(bn(x), yt, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_embedding_options_vs_torch(rng, layout):
    """(1, C, 1, 1)-shaped parameters, cache.mean/var and input_grad=False
    against PyTorch's functional batch norm and its masked native backward
    (float64). (eps = 0: PyTorch 2.13 refuses it in training; see
    test_eps_zero_vs_reference.)"""
    x = rng.standard_normal((6, 4, 5, 3)) * 2 + 1
    dy = rng.standard_normal(x.shape)
    w, b = rng.standard_normal(4), rng.standard_normal(4)
    xt = torch.tensor(x, requires_grad=True)
    wt, bt = torch.tensor(w, requires_grad=True), torch.tensor(b, requires_grad=True)
    rm_t, rv_t = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    yt = torch.nn.functional.batch_norm(xt, rm_t, rv_t, wt, bt, True, 0.1, 1e-5)
    yt.backward(torch.tensor(dy))
    xf = x if layout == "NCHW" else np.ascontiguousarray(np.moveaxis(x, 1, -1))
    dyf = dy if layout == "NCHW" else np.ascontiguousarray(np.moveaxis(dy, 1, -1))
    pshape = (1, 4, 1, 1) if layout == "NCHW" else (1, 1, 1, 4)
    rm, rv = np.zeros(pshape), np.ones(pshape)
    y, cache = fastbn.batch_norm_forward(xf, w.reshape(pshape), b.reshape(pshape), eps=1e-5,
                                         running_mean=rm, running_var=rv, layout=layout)
    if layout == "NHWC":
        y = np.moveaxis(y, -1, 1)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(rm.reshape(4), rm_t.numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(rv.reshape(4), rv_t.numpy(), rtol=1e-12)
    mean_t = x.mean(axis=(0, 2, 3))
    np.testing.assert_allclose(cache.mean, mean_t, rtol=1e-12, atol=1e-14)
    dx, dw, db = fastbn.batch_norm_backward(dyf, cache, input_grad=False)
    assert dx is None
    np.testing.assert_allclose(dw, wt.grad.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(db, bt.grad.numpy(), rtol=1e-10, atol=1e-10)
    # PyTorch's own backward asked for the same two gradients only
    _, mean, invstd = torch.native_batch_norm(torch.tensor(x), torch.tensor(w), torch.tensor(b),
                                              None, None, True, 0.1, 1e-5)
    gx, gw, gb = torch.ops.aten.native_batch_norm_backward(
        torch.tensor(dy), torch.tensor(x), torch.tensor(w), None, None, mean, invstd, True, 1e-5,
        [False, True, True])
    assert gx is None
    np.testing.assert_allclose(dw, gw.numpy(), rtol=1e-10, atol=1e-10)


def test_eps_zero_vs_reference(rng):
    """eps = 0 (allowed, as MyGrad's docstring example uses it): the float64
    reference's output and gradients."""
    import reference as ref

    x = rng.standard_normal((5, 3, 4)) * 2 + 1
    dy = rng.standard_normal(x.shape)
    w, b = rng.standard_normal(3), rng.standard_normal(3)
    y, cache = fastbn.batch_norm_forward(x, w, b, eps=0.0)
    y_ref, _, _ = ref.forward_train(x, w, b, 0.0)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    dx, dw, db = fastbn.batch_norm_backward(dy, cache)
    for got, want in zip((dx, dw, db), ref.backward_train(dy, x, w, 0.0)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
