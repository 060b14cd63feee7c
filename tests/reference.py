"""Slow, obvious float64 reference for Batch Normalization.

Pure NumPy, independent of fastbn. Every function converts its inputs to
float64 and uses the textbook two-pass formulas; nothing here is clever.
Arrays are handled through a ``(C, m)`` view: channel first, then the ``m``
values of that channel, whatever the layout.
"""

from __future__ import annotations

import numpy as np

LAYOUTS = ("NCHW", "NHWC")


def channel_axis(ndim: int, layout: str) -> int:
    """The channel axis of an array of rank ``ndim`` in ``layout``."""
    if layout == "NCHW":
        return 1
    if layout == "NHWC":
        return ndim - 1
    raise ValueError(layout)


def num_channels(shape, layout: str) -> int:
    return shape[channel_axis(len(shape), layout)]


def to_cm(a, layout: str) -> np.ndarray:
    """float64 copy of ``a`` reshaped to (C, m)."""
    a = np.asarray(a, dtype=np.float64)
    ax = channel_axis(a.ndim, layout)
    return np.moveaxis(a, ax, 0).reshape(a.shape[ax], -1).copy()


def from_cm(a_cm: np.ndarray, shape, layout: str) -> np.ndarray:
    """Inverse of :func:`to_cm` for an array of the given logical shape."""
    ax = channel_axis(len(shape), layout)
    moved = (shape[ax],) + tuple(s for i, s in enumerate(shape) if i != ax)
    return np.moveaxis(a_cm.reshape(moved), 0, ax)


def _per_channel(v, C: int, default: float) -> np.ndarray:
    if v is None:
        return np.full(C, default, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    assert v.shape == (C,), (v.shape, C)
    return v.copy()


def stats(x, layout: str = "NCHW"):
    """Per-channel mean and biased variance (two passes, float64)."""
    xc = to_cm(x, layout)
    m = xc.shape[1]
    mean = xc.sum(axis=1) / m
    dev = xc - mean[:, None]
    var = (dev * dev).sum(axis=1) / m
    return mean, var


def forward_train(x, weight=None, bias=None, eps=1e-5, layout="NCHW"):
    """Training forward: returns (y, mean, var), all float64."""
    x = np.asarray(x)
    xc = to_cm(x, layout)
    C = xc.shape[0]
    w = _per_channel(weight, C, 1.0)
    b = _per_channel(bias, C, 0.0)
    mean, var = stats(x, layout)
    xhat = (xc - mean[:, None]) / np.sqrt(var + eps)[:, None]
    y = xhat * w[:, None] + b[:, None]
    return from_cm(y, x.shape, layout), mean, var


def forward_eval(x, weight, bias, running_mean, running_var, eps=1e-5,
                 layout="NCHW"):
    """Eval forward with given statistics: returns y (float64)."""
    x = np.asarray(x)
    xc = to_cm(x, layout)
    C = xc.shape[0]
    w = _per_channel(weight, C, 1.0)
    b = _per_channel(bias, C, 0.0)
    rm = _per_channel(running_mean, C, 0.0)
    rv = _per_channel(running_var, C, 1.0)
    xhat = (xc - rm[:, None]) / np.sqrt(rv + eps)[:, None]
    y = xhat * w[:, None] + b[:, None]
    return from_cm(y, x.shape, layout)


def backward_train(dy, x, weight=None, eps=1e-5, layout="NCHW"):
    """Gradients of sum(dy * y) for the training forward (statistics depend
    on x). Returns (dx, dweight, dbias), float64."""
    x = np.asarray(x)
    xc = to_cm(x, layout)
    gc = to_cm(dy, layout)
    C, m = xc.shape
    w = _per_channel(weight, C, 1.0)
    mean, var = stats(x, layout)
    invstd = 1.0 / np.sqrt(var + eps)
    xhat = (xc - mean[:, None]) * invstd[:, None]
    dbias = gc.sum(axis=1)
    dweight = (gc * xhat).sum(axis=1)
    # d/dx of w * (x - mean) / sqrt(var + eps): the textbook three terms.
    dxhat = gc * w[:, None]
    dx = invstd[:, None] * (
        dxhat
        - dxhat.sum(axis=1, keepdims=True) / m
        - xhat * (dxhat * xhat).sum(axis=1, keepdims=True) / m
    )
    return from_cm(dx, x.shape, layout), dweight, dbias


def backward_eval(dy, x, weight, running_mean, running_var, eps=1e-5,
                  layout="NCHW"):
    """Gradients of sum(dy * y) for the eval forward (statistics constant)."""
    x = np.asarray(x)
    xc = to_cm(x, layout)
    gc = to_cm(dy, layout)
    C = xc.shape[0]
    w = _per_channel(weight, C, 1.0)
    rm = _per_channel(running_mean, C, 0.0)
    rv = _per_channel(running_var, C, 1.0)
    invstd = 1.0 / np.sqrt(rv + eps)
    xhat = (xc - rm[:, None]) * invstd[:, None]
    dx = gc * (w * invstd)[:, None]
    return from_cm(dx, x.shape, layout), (gc * xhat).sum(axis=1), gc.sum(axis=1)


def update_running(running_mean, running_var, mean, var, m, momentum):
    """PyTorch's running-statistics update (unbiased variance); new arrays."""
    rm = np.asarray(running_mean, dtype=np.float64)
    rv = np.asarray(running_var, dtype=np.float64)
    new_mean = (1.0 - momentum) * rm + momentum * np.asarray(mean, np.float64)
    new_var = (1.0 - momentum) * rv + momentum * np.asarray(var, np.float64) * m / (m - 1)
    return new_mean, new_var


class RefBatchNorm:
    """Reference layer with PyTorch's BatchNorm state semantics (float64)."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, layout="NCHW"):
        C = num_features
        self.eps, self.momentum, self.layout = eps, momentum, layout
        self.weight = np.ones(C) if affine else None
        self.bias = np.zeros(C) if affine else None
        self.track = track_running_stats
        self.running_mean = np.zeros(C) if track_running_stats else None
        self.running_var = np.ones(C) if track_running_stats else None
        self.num_batches_tracked = 0
        self.training = True

    def forward(self, x):
        x = np.asarray(x)
        if self.training or not self.track:
            y, mean, var = forward_train(x, self.weight, self.bias, self.eps,
                                         self.layout)
            if self.training and self.track:
                self.num_batches_tracked += 1
                f = (1.0 / self.num_batches_tracked if self.momentum is None
                     else self.momentum)
                m = x.size // num_channels(x.shape, self.layout)
                self.running_mean, self.running_var = update_running(
                    self.running_mean, self.running_var, mean, var, m, f)
            return y
        return forward_eval(x, self.weight, self.bias, self.running_mean,
                            self.running_var, self.eps, self.layout)
