"""Element-wise kernels: the affine normalization ``y`` and the training
gradient ``dx`` over ``_cf`` and ``_cl`` views, and the per-channel
coefficients they apply."""

from __future__ import annotations

import numpy as np
from numba import prange

from .._jit import helper, kernel
from ._tasks import CHUNK, _cf_piece


@helper(inline=True)
def _affine_coeffs(x, c, p, mean, var, weight, bias, eps):
    """``(center, scale, shift)`` in x's dtype of statistics ``c`` and
    parameters ``p``, for ``y = (x - center) * scale + shift``: the float64
    mean's rounding to the center is moved into the shift. Empty
    ``weight``/``bias`` mean ones and zeros."""
    scale = 1.0 / np.sqrt(var[c] + eps) if var[c] + eps > 0.0 else 0.0  # eps = 0, constant
    if weight.size:
        scale *= weight[p]
    shift = bias[p] if bias.size else 0.0
    center = x.dtype.type(mean[c])
    shift -= (mean[c] - np.float64(center)) * scale
    return center, x.dtype.type(scale), x.dtype.type(shift)


@helper(inline=True)
def _grad_coeffs(x, c, parts, mean, invstd, weight, sum_dy, sum_dy_xc, m):
    """Channel ``c``'s ``(center, k_dy, k_x, k_0)`` in x's dtype, for the
    training gradient ``dx = k_dy * dy + k_x * (x - center) + k_0``. Its
    statistics (``m`` values) are those of its group, the ``parts``
    consecutive channels from ``c - c % parts`` (BatchNorm: 1, GroupNorm:
    C/G), whose sums, weighted by their weights, make ``k_x`` and ``k_0``."""
    w1 = 0.0
    w2 = 0.0
    for q in range(c - c % parts, c - c % parts + parts):
        wq = weight[q] if weight.size else 1.0
        w1 += wq * sum_dy[q]
        w2 += wq * sum_dy_xc[q]
    r = invstd[c]
    k_dy = r * (weight[c] if weight.size else 1.0)
    k_x = -r * r * r * w2 / m
    center = x.dtype.type(mean[c])
    k_0 = -r * w1 / m - (mean[c] - np.float64(center)) * k_x
    t = x.dtype.type
    return center, t(k_dy), t(k_x), t(k_0)


@helper(inline=True)
def _affine_table(x, mean, var, weight, bias, eps):
    """:func:`_affine_coeffs` of every channel, as three arrays of x's dtype."""
    nc = mean.size
    center = np.empty(nc, x.dtype)
    scale = np.empty(nc, x.dtype)
    shift = np.empty(nc, x.dtype)
    for c in range(nc):
        center[c], scale[c], shift[c] = _affine_coeffs(x, c, c, mean, var, weight, bias, eps)
    return center, scale, shift


@helper(inline=True)
def _grad_table(x, parts, mean, invstd, weight, sum_dy, sum_dy_xc, m):
    """:func:`_grad_coeffs` of every channel, as four arrays of x's dtype."""
    nc = mean.size
    center = np.empty(nc, x.dtype)
    k_dy = np.empty(nc, x.dtype)
    k_x = np.empty(nc, x.dtype)
    k_0 = np.empty(nc, x.dtype)
    for c in range(nc):
        center[c], k_dy[c], k_x[c], k_0[c] = _grad_coeffs(
            x, c, parts, mean, invstd, weight, sum_dy, sum_dy_xc, m)
    return center, k_dy, k_x, k_0


@kernel
def affine_cf(x, mean, var, weight, bias, eps, y, tasks):
    """``y = (x - mean) / sqrt(var + eps) * weight + bias`` per channel of
    ``(A, C, B)`` views; float64 ``mean``, ``var``, ``weight``, ``bias``
    (empty: ones, zeros)."""
    na, nc, nb = x.shape
    center, scale, shift = _affine_table(x, mean, var, weight, bias, eps)
    nq = (nb + CHUNK - 1) // CHUNK
    n_t = na * nc * nq
    ng = min(n_t, tasks)
    for grp in prange(ng):
        for t in range(grp * n_t // ng, (grp + 1) * n_t // ng):
            a, c, b0 = _cf_piece(t, nc, nq)
            mc = center[c]
            sc = scale[c]
            sh = shift[c]
            xr = x[a, c, b0:b0 + CHUNK]
            yr = y[a, c, b0:b0 + CHUNK]
            for b in range(xr.size):
                yr[b] = (xr[b] - mc) * sc + sh


@kernel
def affine_cl(x, mean, var, weight, bias, eps, y, tasks):
    """As :func:`affine_cf`, over ``(R, C)`` views."""
    nr, nc = x.shape
    center, scale, shift = _affine_table(x, mean, var, weight, bias, eps)
    rows = max(1, CHUNK // nc)
    n_t = (nr + rows - 1) // rows
    ng = min(n_t, tasks)
    for grp in prange(ng):
        for t in range(grp * n_t // ng, (grp + 1) * n_t // ng):
            for r in range(t * rows, min(nr, t * rows + rows)):
                xr = x[r]
                yr = y[r]
                for k in range(nc):
                    yr[k] = (xr[k] - center[k]) * scale[k] + shift[k]


@kernel
def grad_input_cf(dy, x, parts, mean, invstd, weight, sum_dy, sum_dy_xc, count, dx, tasks):
    """Training-mode ``dx`` per channel of ``(A, C, B)`` views, from the
    float64 statistics and the sums of :func:`grad_sums_cf`; the statistics
    are per group of ``parts`` channels (see :func:`_grad_coeffs`)."""
    na, nc, nb = x.shape
    center, k_dy, k_x, k_0 = _grad_table(x, parts, mean, invstd, weight, sum_dy, sum_dy_xc, count)
    nq = (nb + CHUNK - 1) // CHUNK
    n_t = na * nc * nq
    ng = min(n_t, tasks)
    for grp in prange(ng):
        for t in range(grp * n_t // ng, (grp + 1) * n_t // ng):
            a, c, b0 = _cf_piece(t, nc, nq)
            mc = center[c]
            g = k_dy[c]
            h = k_x[c]
            e = k_0[c]
            gr = dy[a, c, b0:b0 + CHUNK]
            xr = x[a, c, b0:b0 + CHUNK]
            dr = dx[a, c, b0:b0 + CHUNK]
            for b in range(xr.size):
                dr[b] = g * gr[b] + h * (xr[b] - mc) + e


@kernel
def grad_input_cl(dy, x, parts, mean, invstd, weight, sum_dy, sum_dy_xc, count, dx, tasks):
    """As :func:`grad_input_cf`, over ``(R, C)`` views."""
    nr, nc = x.shape
    center, k_dy, k_x, k_0 = _grad_table(x, parts, mean, invstd, weight, sum_dy, sum_dy_xc, count)
    rows = max(1, CHUNK // nc)
    n_t = (nr + rows - 1) // rows
    ng = min(n_t, tasks)
    for grp in prange(ng):
        for t in range(grp * n_t // ng, (grp + 1) * n_t // ng):
            for r in range(t * rows, min(nr, t * rows + rows)):
                gr = dy[r]
                xr = x[r]
                dr = dx[r]
                for k in range(nc):
                    dr[k] = k_dy[k] * gr[k] + k_x[k] * (xr[k] - center[k]) + k_0[k]

