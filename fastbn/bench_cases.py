"""The benchmark cases: shapes, inputs, and the callables of each peer
(fastbn, PyTorch CPU, the obvious NumPy code, and the roof, a parallel copy).
Shared by :mod:`fastbn.benchmark`, the asv suite and the scripts."""

from __future__ import annotations

from typing import Callable, Sequence

import numba
import numpy as np

import fastbn

#: Benchmark shapes, NCHW order (the NHWC case moves C last).
SHAPES = {
    "32x64x56x56": (32, 64, 56, 56),
    "64x256x14x14": (64, 256, 14, 14),
    "8x32x128x128": (8, 32, 128, 128),
    "64x64": (64, 64),
    "256x1024": (256, 1024),
    "1024x256": (1024, 256),
    "4096x128": (4096, 128),
    "8x16x8x8": (8, 16, 8, 8),
}
#: Convolutional activations, and the (batch, features) tensors of MLPs
#: plus a tiny image batch: the two groups the summary reports apart.
LARGE = ("32x64x56x56", "64x256x14x14", "8x32x128x128")
SMALL = ("64x64", "256x1024", "1024x256", "4096x128", "8x16x8x8")
#: backward_no_dx: dweight and dbias only (``input_grad=False``: a first
#: layer, a frozen input).
OPS = ("forward", "eval", "backward", "backward_no_dx")
LAYOUTS = ("NCHW", "NHWC")
DTYPES = ("float32", "float64")
#: Traffic floor of each op, in copies of x.
FLOORS = {"forward": 4 / 3, "eval": 1.0, "backward": 2.0, "backward_no_dx": 1.0}
EPS = 1e-5
MOMENTUM = 0.1


@numba.njit(parallel=True, nogil=True, cache=True)
def parallel_copy(src, dst):
    """``dst[:] = src`` for 1-D arrays, spread over Numba's threads."""
    for i in numba.prange(src.size):
        dst[i] = src[i]


def make_input(shape: Sequence[int], layout: str, dtype, seed: int = 0) -> np.ndarray:
    """A C-contiguous batch; ``shape`` is in NCHW order, moved for NHWC."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(tuple(shape)).astype(dtype) * 2 + 3
    if layout == "NHWC" and x.ndim > 2:
        x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    return x


def _axes(ndim: int, layout: str) -> tuple[int, tuple[int, ...]]:
    axis = 1 if layout == "NCHW" else ndim - 1
    return axis, tuple(i for i in range(ndim) if i != axis)


class Case:
    """Inputs and warmed callables of one shape × layout × dtype."""

    def __init__(self, shape: Sequence[int], layout: str, dtype, seed: int = 0):
        self.shape, self.layout, self.dtype = tuple(shape), layout, np.dtype(dtype)
        self.x = make_input(shape, layout, dtype, seed)
        self.axis, self.reduce = _axes(self.x.ndim, layout)
        c = self.x.shape[self.axis]
        rng = np.random.default_rng(seed + 1)
        self.weight = (1 + 0.1 * rng.standard_normal(c)).astype(dtype)
        self.bias = (0.1 * rng.standard_normal(c)).astype(dtype)
        self.running_mean = np.zeros(c, dtype)
        self.running_var = np.ones(c, dtype)
        self.dy = rng.standard_normal(self.x.shape).astype(dtype)
        self._flat_out = np.empty(self.x.size, dtype)

    # -- the roof ---------------------------------------------------------
    def copy(self) -> None:
        parallel_copy(self.x.reshape(-1), self._flat_out)

    # -- fastbn -----------------------------------------------------------
    def fastbn(self, op: str) -> Callable[[], object]:
        x, w, b, layout = self.x, self.weight, self.bias, self.layout
        rm, rv = self.running_mean, self.running_var
        if op == "forward":
            return lambda: fastbn.batch_norm_forward(
                x, w, b, running_mean=rm, running_var=rv, momentum=MOMENTUM,
                eps=EPS, layout=layout)
        if op == "eval":
            return lambda: fastbn.batch_norm_forward(
                x, w, b, training=False, running_mean=rm, running_var=rv,
                eps=EPS, layout=layout)
        if op in ("backward", "backward_no_dx"):
            _, cache = fastbn.batch_norm_forward(x, w, b, eps=EPS, layout=layout)
            dy, dx = self.dy, op == "backward"
            return lambda: fastbn.batch_norm_backward(dy, cache, input_grad=dx)
        raise ValueError(f"op must be one of {OPS}, got {op!r}")

    # -- the obvious NumPy implementation ----------------------------------
    def numpy(self, op: str) -> Callable[[], object]:
        x, ax, dy = self.x, self.reduce, self.dy
        bshape = [1] * x.ndim
        bshape[self.axis] = -1
        w, b = self.weight.reshape(bshape), self.bias.reshape(bshape)
        m = x.size // x.shape[self.axis]

        def forward():
            mean = x.mean(axis=ax, keepdims=True)
            var = x.var(axis=ax, keepdims=True)
            return (x - mean) / np.sqrt(var + EPS) * w + b

        def evaluate():
            scale = w / np.sqrt(self.running_var.reshape(bshape) + EPS)
            return x * scale + (b - self.running_mean.reshape(bshape) * scale)

        def backward():
            mean = x.mean(axis=ax, keepdims=True)
            invstd = 1 / np.sqrt(x.var(axis=ax, keepdims=True) + EPS)
            xhat = (x - mean) * invstd
            dbias = dy.sum(axis=ax, keepdims=True)
            dweight = (dy * xhat).sum(axis=ax, keepdims=True)
            return w * invstd / m * (m * dy - dbias - xhat * dweight)

        def backward_no_dx():
            mean = x.mean(axis=ax, keepdims=True)
            invstd = 1 / np.sqrt(x.var(axis=ax, keepdims=True) + EPS)
            return (dy * (x - mean)).sum(axis=ax) * invstd.reshape(-1), dy.sum(axis=ax)

        return {"forward": forward, "eval": evaluate, "backward": backward,
                "backward_no_dx": backward_no_dx}[op]

    # -- PyTorch CPU --------------------------------------------------------
    def torch(self, op: str) -> Callable[[], object] | None:
        try:
            import torch
        except ImportError:
            return None
        x = self._torch_tensor(torch, self.x)
        w, b = torch.from_numpy(self.weight), torch.from_numpy(self.bias)
        rm, rv = torch.from_numpy(self.running_mean.copy()), torch.from_numpy(self.running_var.copy())
        fbn = torch.nn.functional.batch_norm
        if op == "forward":
            return lambda: fbn(x, rm, rv, w, b, True, MOMENTUM, EPS)
        if op == "eval":
            return lambda: fbn(x, rm, rv, w, b, False, MOMENTUM, EPS)
        if op in ("backward", "backward_no_dx"):
            dy = self._torch_tensor(torch, self.dy)
            _, mean, invstd = torch.native_batch_norm(x, w, b, rm, rv, True, MOMENTUM, EPS)
            backward = torch.ops.aten.native_batch_norm_backward
            mask = [op == "backward", True, True]
            return lambda: backward(dy, x, w, rm, rv, mean, invstd, True, EPS, mask)
        raise ValueError(f"op must be one of {OPS}, got {op!r}")

    def _torch_tensor(self, torch, a: np.ndarray):
        return torch_tensor(torch, a, self.layout)


def torch_tensor(torch, a: np.ndarray, layout: str):
    """``a`` as a tensor in PyTorch's logical (N, C, ...) order with ``a``'s
    memory order: channels_last for NHWC (any other layout: ``a`` itself)."""
    if layout != "NHWC" or a.ndim == 2:
        return torch.from_numpy(a)
    t = torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, -1, 1)))
    fmt = {4: torch.channels_last, 5: torch.channels_last_3d}.get(a.ndim)
    if fmt is None:  # rank 3: no channels-last format; keep (N, L, C) memory
        return torch.from_numpy(a).permute(0, 2, 1)
    return t.contiguous(memory_format=fmt)
