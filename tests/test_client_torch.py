"""examples/torch_batchnorm.py against nn.BatchNorm2d (CPU)."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest

torch = pytest.importorskip(
    "torch", reason="PyTorch is not installed (CI installs torch==2.13.0, CPU): "
    "the PyTorch adapter example, examples/torch_batchnorm.py, is not tested")
nn = torch.nn

_PATH = Path(__file__).resolve().parents[1] / "examples" / "torch_batchnorm.py"
_spec = importlib.util.spec_from_file_location("torch_batchnorm", _PATH)
adapter = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(adapter)


def _apply(x, w, b, rm=None, rv=None, training=True, momentum=0.1, eps=1e-5):
    return adapter.BatchNormFunction.apply(x, w, b, rm, rv, training, momentum, eps)


def _f64(*shape, seed=0, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) + 0.5).requires_grad_(
        requires_grad)


@pytest.mark.parametrize("shape", [(2, 3, 2, 3), (5, 2, 1, 1), (3, 4)])
def test_gradcheck_training(shape):
    c = shape[1]
    x, w, b = _f64(*shape), _f64(c, seed=1), _f64(c, seed=2)
    assert torch.autograd.gradcheck(_apply, (x, w, b))
    assert torch.autograd.gradcheck(lambda x: _apply(x, None, None), (x,))


def test_gradcheck_running_stats_and_eval():
    x, w, b = _f64(3, 2, 2, 2), _f64(2, seed=1), _f64(2, seed=2)
    rm, rv = torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x, w, b: _apply(x, w, b, rm, rv), (x, w, b))
    assert rm.abs().sum() > 0  # updated in place (zero-copy) by every forward
    assert torch.autograd.gradcheck(lambda x, w, b: _apply(x, w, b, rm, rv, False), (x, w, b))


def test_gradcheck_without_input_grad(monkeypatch):
    """x needs no gradient (a first layer): backward asks fastbn for none."""
    asked = []
    backward = adapter.fastbn.batch_norm_backward

    def spy(dy, cache, **kw):
        asked.append(kw["input_grad"])
        return backward(dy, cache, **kw)

    monkeypatch.setattr(adapter.fastbn, "batch_norm_backward", spy)
    x, w, b = _f64(3, 2, 2, 2, requires_grad=False), _f64(2, seed=1), _f64(2, seed=2)
    assert torch.autograd.gradcheck(lambda w, b: _apply(x, w, b), (w, b))
    y = _apply(x, w, b)
    (y * y).sum().backward()
    assert x.grad is None and w.grad is not None
    assert asked and not any(asked)
    _apply(x.clone().requires_grad_(), w, b).sum().backward()
    assert asked[-1] is True


def _pair(c, dtype, **kw):
    stock = nn.BatchNorm2d(c, dtype=dtype, **kw)
    if stock.affine:
        with torch.no_grad():
            stock.weight.uniform_(0.5, 2.0)
            if stock.bias is not None:
                stock.bias.uniform_(-1.0, 1.0)
    fast = adapter.FastBatchNorm2d(c, dtype=dtype, **kw)
    fast.load_state_dict(stock.state_dict())
    return stock, fast


def _step(bn, x, dy):
    x = x.clone().requires_grad_(True)
    y = bn(x)
    y.backward(dy)
    grads = [p.grad.clone() for p in bn.parameters()]
    bn.zero_grad()
    return y.detach(), x.grad, grads


TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-10)}


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_matches_batchnorm2d(dtype, momentum, channels_last):
    """A few training steps (y, dx, dweight, dbias, running statistics,
    num_batches_tracked), then eval."""
    torch.manual_seed(0)
    stock, fast = _pair(5, dtype, momentum=momentum)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for step in range(4):
        x = (torch.randn(4, 5, 6, 7, dtype=dtype) * 2 + step).to(memory_format=fmt)
        dy = torch.randn_like(x)
        for a, b in zip(_step(stock, x, dy), _step(fast, x, dy)):
            torch.testing.assert_close(a, b, **TOL[dtype])
    for name in ("running_mean", "running_var"):
        torch.testing.assert_close(getattr(fast, name), getattr(stock, name), **TOL[dtype])
    assert fast.num_batches_tracked.item() == stock.num_batches_tracked.item() == 4
    stock.eval(), fast.eval()
    for a, b in zip(_step(stock, x, dy), _step(fast, x, dy)):
        torch.testing.assert_close(a, b, **TOL[dtype])


@pytest.mark.parametrize("kw", [dict(affine=False), dict(track_running_stats=False),
                                dict(bias=False)], ids=str)
def test_options_match(kw):
    stock, fast = _pair(3, torch.float64, **kw)
    x, dy = torch.randn(4, 3, 5, 5, dtype=torch.float64), torch.randn(4, 3, 5, 5,
                                                                       dtype=torch.float64)
    for mode in (True, False):
        stock.train(mode), fast.train(mode)
        for a, b in zip(_step(stock, x, dy), _step(fast, x, dy)):
            torch.testing.assert_close(a, b, **TOL[torch.float64])


def test_state_dict_round_trip():
    """Stock -> fastbn-backed and back: same keys, same eval results."""
    torch.manual_seed(1)
    stock = nn.BatchNorm2d(4)
    for _ in range(3):
        stock(torch.randn(8, 4, 3, 3) * 3 + 1)
    fast = adapter.FastBatchNorm2d(4)
    fast.load_state_dict(stock.state_dict())
    assert fast.state_dict().keys() == stock.state_dict().keys()
    for _ in range(2):
        fast(torch.randn(8, 4, 3, 3) * 2 - 1)
    back = nn.BatchNorm2d(4)
    back.load_state_dict(fast.state_dict())
    x = torch.randn(2, 4, 3, 3)
    for k, v in fast.state_dict().items():
        torch.testing.assert_close(back.state_dict()[k], v, rtol=0, atol=0)
    torch.testing.assert_close(back.eval()(x), fast.eval()(x), rtol=1e-6, atol=1e-6)
    assert back.num_batches_tracked.item() == 5


def test_convert_cnn_with_inplace_relu():
    """convert() keeps the parameter objects; a ReLU(inplace=True) after BN
    (which overwrites y) leaves the gradients right."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                          nn.Conv2d(8, 4, 3), nn.BatchNorm2d(4), nn.ReLU(inplace=True))
    stock = copy.deepcopy(model)
    params = list(model.parameters())
    assert adapter.convert(model) is model
    assert [type(m) for m in model if isinstance(m, nn.BatchNorm2d)] == [
        adapter.FastBatchNorm2d] * 2
    assert list(model.parameters()) == params
    x = torch.randn(4, 3, 9, 9)
    model(x).square().sum().backward()
    stock(x).square().sum().backward()
    for p, q in zip(model.parameters(), stock.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(model[1].running_var, stock[1].running_var)


def test_zero_copy_and_fallback():
    fast = adapter.FastBatchNorm2d(3)
    x = torch.randn(2, 3, 4, 4)
    mean = fast.running_mean
    fast(x)
    assert fast.running_mean is mean  # updated in place through a NumPy view
    torch.testing.assert_close(mean, 0.1 * x.mean(dim=(0, 2, 3)))
    y = fast(x.to(torch.bfloat16).requires_grad_())  # the stock path
    assert y.dtype == torch.bfloat16
