"""Slow, obvious float64 references for LayerNorm, GroupNorm and InstanceNorm.

Pure NumPy, independent of fastbn. Every norm is the same computation on a
``(R, M)`` view: R rows (the statistics groups), M values per row, the
affine parameters given per element of the row. Statistics are two-pass,
the backward is the textbook three-term formula; nothing here is clever.
"""

from __future__ import annotations

import numpy as np

from reference import channel_axis


# --- the common (R, M) core ------------------------------------------------

def _row_stats(xr):
    m = xr.shape[1]
    mean = xr.sum(axis=1) / m
    dev = xr - mean[:, None]
    return mean, (dev * dev).sum(axis=1) / m


def _normalize(xr, mean, var, wr, br, eps):
    xhat = (xr - mean[:, None]) / np.sqrt(var + eps)[:, None]
    return xhat * wr + br


def _backward_rows(gr, xr, wr, mean, var, eps, stats_from_input=True):
    """Row-wise gradients of sum(g * y): (dx, g * xhat, g) as (R, M) arrays."""
    m = xr.shape[1]
    invstd = 1.0 / np.sqrt(var + eps)[:, None]
    xhat = (xr - mean[:, None]) * invstd
    dxhat = gr * wr
    if stats_from_input:
        dx = invstd * (dxhat - dxhat.sum(axis=1, keepdims=True) / m
                       - xhat * (dxhat * xhat).sum(axis=1, keepdims=True) / m)
    else:  # the statistics are constants
        dx = dxhat * invstd
    return dx, gr * xhat, gr


def _f64(a):
    return None if a is None else np.asarray(a, dtype=np.float64)


# --- LayerNorm ---------------------------------------------------------------

def _trailing(normalized_shape):
    return (normalized_shape,) if np.isscalar(normalized_shape) else tuple(normalized_shape)


def _ln_rows(x, normalized_shape):
    x = np.asarray(x, dtype=np.float64)
    ns = _trailing(normalized_shape)
    assert x.shape[x.ndim - len(ns):] == ns and len(ns) < x.ndim, (x.shape, ns)
    return x.reshape(-1, int(np.prod(ns))), ns


def _ln_param(p, ns, default):
    if p is None:
        return np.full(int(np.prod(ns)), default)
    p = _f64(p)
    assert p.shape == ns, (p.shape, ns)
    return p.reshape(-1)


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Returns (y, mean, var); mean/var of shape x.shape[:-len(normalized_shape)]."""
    xr, ns = _ln_rows(x, normalized_shape)
    mean, var = _row_stats(xr)
    y = _normalize(xr, mean, var, _ln_param(weight, ns, 1.0), _ln_param(bias, ns, 0.0), eps)
    lead = np.shape(x)[:np.ndim(x) - len(ns)]
    return y.reshape(np.shape(x)), mean.reshape(lead), var.reshape(lead)


def layer_norm_backward(dy, x, normalized_shape, weight=None, eps=1e-5):
    """Gradients of sum(dy * y): (dx, dweight, dbias), dweight/dbias shaped
    normalized_shape."""
    xr, ns = _ln_rows(x, normalized_shape)
    gr = np.asarray(dy, dtype=np.float64).reshape(xr.shape)
    mean, var = _row_stats(xr)
    dx, gxhat, g = _backward_rows(gr, xr, _ln_param(weight, ns, 1.0), mean, var, eps)
    return dx.reshape(np.shape(x)), gxhat.sum(axis=0).reshape(ns), g.sum(axis=0).reshape(ns)


# --- GroupNorm and InstanceNorm: (N, C, S) views ----------------------------

def to_ncs(a, layout):
    """float64 copy of ``a`` as (N, C, S): channel second, spatial flattened."""
    a = np.asarray(a, dtype=np.float64)
    moved = np.moveaxis(a, channel_axis(a.ndim, layout), 1)
    return moved.reshape(a.shape[0], moved.shape[1], -1).copy()


def from_ncs(a, shape, layout):
    ax = channel_axis(len(shape), layout)
    moved = (shape[0], shape[ax]) + tuple(s for i, s in enumerate(shape) if i not in (0, ax))
    return np.moveaxis(a.reshape(moved), 1, ax)


def _channel_param(p, C, default):
    """A per-channel vector (any shape with C elements) as (C,) float64."""
    if p is None:
        return np.full(C, default)
    p = _f64(p)
    assert p.size == C and max(p.shape) == C, (p.shape, C)
    return p.reshape(C)


def _group_rows(x, G, weight, bias, layout):
    """(N*G, C/G*S) rows of x, the per-element weight and bias rows, (N, C, S)."""
    xs = to_ncs(x, layout)
    N, C, S = xs.shape
    assert C % G == 0, (C, G)

    def rows(a):
        return np.broadcast_to(a, (N, C, S)).reshape(N * G, -1)

    return (rows(xs), rows(_channel_param(weight, C, 1.0)[:, None]),
            rows(_channel_param(bias, C, 0.0)[:, None]), (N, C, S))


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5, layout="NCHW"):
    """Returns (y, mean, var); mean/var of shape (N, num_groups)."""
    xr, wr, br, (N, C, S) = _group_rows(x, num_groups, weight, bias, layout)
    mean, var = _row_stats(xr)
    y = _normalize(xr, mean, var, wr, br, eps)
    return (from_ncs(y.reshape(N, C, S), np.shape(x), layout),
            mean.reshape(N, num_groups), var.reshape(N, num_groups))


def _reduce_channels(a, N, C, S):
    return a.reshape(N, C, S).sum(axis=(0, 2))


def group_norm_backward(dy, x, num_groups, weight=None, eps=1e-5, layout="NCHW"):
    """Gradients of sum(dy * y): (dx, dweight, dbias), dweight/dbias (C,)."""
    xr, wr, _, (N, C, S) = _group_rows(x, num_groups, weight, None, layout)
    gr = to_ncs(dy, layout).reshape(xr.shape)
    mean, var = _row_stats(xr)
    dx, gxhat, g = _backward_rows(gr, xr, wr, mean, var, eps)
    return (from_ncs(dx.reshape(N, C, S), np.shape(x), layout),
            _reduce_channels(gxhat, N, C, S), _reduce_channels(g, N, C, S))


def _instance_stats(xr, N, C, running_mean, running_var, use_input_stats):
    if use_input_stats:
        return _row_stats(xr)
    rm = _channel_param(running_mean, C, np.nan)
    rv = _channel_param(running_var, C, np.nan)
    return np.tile(rm, N), np.tile(rv, N)


def instance_norm(x, weight=None, bias=None, eps=1e-5, layout="NCHW", *,
                  use_input_stats=True, running_mean=None, running_var=None):
    """Returns (y, mean, var), mean/var (N, C): the statistics normalized with
    (the running ones broadcast to (N, C) when not use_input_stats)."""
    C = np.shape(x)[channel_axis(np.ndim(x), layout)]
    xr, wr, br, (N, C, S) = _group_rows(x, C, weight, bias, layout)
    mean, var = _instance_stats(xr, N, C, running_mean, running_var, use_input_stats)
    y = _normalize(xr, mean, var, wr, br, eps)
    return from_ncs(y.reshape(N, C, S), np.shape(x), layout), mean.reshape(N, C), var.reshape(N, C)


def instance_norm_backward(dy, x, weight=None, eps=1e-5, layout="NCHW", *,
                           use_input_stats=True, running_mean=None, running_var=None):
    """Gradients of sum(dy * y); with use_input_stats=False the running
    statistics are constants."""
    C = np.shape(x)[channel_axis(np.ndim(x), layout)]
    xr, wr, _, (N, C, S) = _group_rows(x, C, weight, None, layout)
    gr = to_ncs(dy, layout).reshape(xr.shape)
    mean, var = _instance_stats(xr, N, C, running_mean, running_var, use_input_stats)
    dx, gxhat, g = _backward_rows(gr, xr, wr, mean, var, eps, use_input_stats)
    return (from_ncs(dx.reshape(N, C, S), np.shape(x), layout),
            _reduce_channels(gxhat, N, C, S), _reduce_channels(g, N, C, S))


def instance_norm_running(running_mean, running_var, x, momentum, layout="NCHW"):
    """PyTorch's InstanceNorm running-statistics update, as new (C,) arrays:
    the mean over samples of the per-instance mean and UNBIASED variance."""
    xs = to_ncs(x, layout)
    S = xs.shape[2]
    mean = xs.mean(axis=2)
    var = ((xs - mean[:, :, None]) ** 2).sum(axis=2) / (S - 1)
    C = xs.shape[1]
    rm = _channel_param(running_mean, C, 0.0)
    rv = _channel_param(running_var, C, 1.0)
    return ((1.0 - momentum) * rm + momentum * mean.mean(axis=0),
            (1.0 - momentum) * rv + momentum * var.mean(axis=0))
