"""Element-wise kernels: the affine normalization ``y`` and the training
gradient ``dx`` over ``_cf`` and ``_cl`` views, and the per-channel
coefficients they apply. The coefficients are computed without fast-math
flags (O(C) work): every kernel that computes them, element-wise, fused or
sample per task, gets the same bits, also in float64 where no rounding to
x's dtype hides a reassociated product."""

from __future__ import annotations

import numpy as np
from numba import prange

from .._jit import helper, kernel
from ._tasks import CHUNK, _cf_piece, _gate_of


@helper(strict=True)
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


@helper(strict=True)
def _group_sums(p0, parts, weight, sum_dy, sum_dy_xc):
    """The sums of the ``parts`` consecutive channels from ``p0`` (a group:
    BatchNorm 1, GroupNorm C/G), weighted by their weights (empty: ones)."""
    w1 = 0.0
    w2 = 0.0
    for q in range(p0, p0 + parts):
        wq = weight[q] if weight.size else 1.0
        w1 += wq * sum_dy[q]
        w2 += wq * sum_dy_xc[q]
    return w1, w2


@helper(strict=True)
def _grad_coeffs(x, c, p, w1, w2, mean, invstd, weight, m):
    """``(center, k_dy, k_x, k_0)`` in x's dtype of parameter channel ``p``
    normalized with statistics ``c`` (``m`` values), for the training
    gradient ``dx = k_dy * dy + k_x * (x - center) + k_0``; ``w1``, ``w2``:
    its group's :func:`_group_sums`."""
    r = invstd[c]
    k_dy = r * (weight[p] if weight.size else 1.0)
    k_x = -r * r * r * w2 / m
    center = x.dtype.type(mean[c])
    k_0 = -r * w1 / m - (mean[c] - np.float64(center)) * k_x
    t = x.dtype.type
    return center, t(k_dy), t(k_x), t(k_0)


@helper(inline=True)
def _row_affine(mu, c, v, eps):
    """float64 ``(scale, shift)`` of a LayerNorm row of mean ``mu`` (``c``:
    it rounded to x's dtype, the center) and variance ``v``, for
    ``(x - c) * scale + shift`` before weight and bias."""
    rs = 1.0 / np.sqrt(v + eps) if v + eps > 0.0 else 0.0  # eps = 0, constant
    return rs, -(mu - np.float64(c)) * rs


@helper(inline=True)
def _row_grad_coeffs(off, v, eps, a1, a2, n):
    """float64 ``(k_dy, k_x, k_0, k_sh)`` of a LayerNorm row of variance
    ``v`` whose mean is ``off`` above its center c, from the row's sums
    ``a1`` of ``g = dy * weight`` and ``a2`` of ``g * (x - c)``:
    ``dx = k_dy * g + k_x * (x - c) + k_0`` and
    ``xhat = (x - c) * k_dy + k_sh``."""
    rs = 1.0 / np.sqrt(v + eps)
    kx = -rs * rs * rs * (a2 - off * a1) / n
    return rs, kx, -rs * a1 / n - off * kx, -off * rs


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
    w1 = w2 = 0.0
    for c in range(nc):
        if c % parts == 0:
            w1, w2 = _group_sums(c, parts, weight, sum_dy, sum_dy_xc)
        center[c], k_dy[c], k_x[c], k_0[c] = _grad_coeffs(x, c, c, w1, w2, mean, invstd, weight,
                                                          m)
    return center, k_dy, k_x, k_0


@helper(inline=True)
def _save_gate(scale, shift, gate):
    """The forward's coefficients into ``gate`` for the backward's test of
    the activation (nothing when ``gate`` is empty)."""
    if gate.size:
        n = scale.size
        for c in range(n):
            gate[c] = scale[c]
            gate[n + c] = shift[c]


@kernel
def affine_cf(x, mean, var, weight, bias, eps, lo, gate, y, tasks):
    """``y = max((x - mean) / sqrt(var + eps) * weight + bias, lo)`` per
    channel of ``(P, A, C, B)`` views, the statistics and parameters of
    part ``p``'s channel ``c`` at ``p * C + c``; float64 ``mean``, ``var``,
    ``weight``, ``bias`` (empty: ones, zeros); ``lo`` in x's dtype: -inf, or 0 for a
    fused ReLU (NaN stays NaN); ``gate`` receives the coefficients (see
    :mod:`.grad_sums`)."""
    ns, na, nc, nb = x.shape
    center, scale, shift = _affine_table(x, mean, var, weight, bias, eps)
    _save_gate(scale, shift, gate)
    nq = (nb + CHUNK - 1) // CHUNK
    per = na * nc * nq
    n_t = ns * per
    ng = min(n_t, tasks)
    for grp in prange(ng):
        for t in range(grp * n_t // ng, (grp + 1) * n_t // ng):
            p = t // per
            a, c, b0 = _cf_piece(t - p * per, nc, nq)
            mc = center[p * nc + c]
            sc = scale[p * nc + c]
            sh = shift[p * nc + c]
            xr = x[p, a, c, b0:b0 + CHUNK]
            yr = y[p, a, c, b0:b0 + CHUNK]
            if lo == -np.inf:  # no activation: a loop without the test
                for b in range(xr.size):
                    yr[b] = (xr[b] - mc) * sc + sh
            else:
                for b in range(xr.size):
                    v = (xr[b] - mc) * sc + sh
                    yr[b] = lo if v < lo else v


@kernel
def affine_cl(x, mean, var, weight, bias, eps, lo, gate, y, tasks):
    """As :func:`affine_cf`, over ``(P, R, C)`` views: the statistics and
    parameters of sample ``p``'s column ``k`` at ``p * C + k``."""
    ns, nr, nc = x.shape
    center, scale, shift = _affine_table(x, mean, var, weight, bias, eps)
    _save_gate(scale, shift, gate)
    rows = max(1, CHUNK // nc)
    n_rt = (nr + rows - 1) // rows
    n_t = ns * n_rt
    ng = min(n_t, tasks)
    for grp in prange(ng):
        for t in range(grp * n_t // ng, (grp + 1) * n_t // ng):
            p = t // n_rt
            r0 = (t - p * n_rt) * rows
            cen = center[p * nc:p * nc + nc]
            sc = scale[p * nc:p * nc + nc]
            sh = shift[p * nc:p * nc + nc]
            for r in range(r0, min(nr, r0 + rows)):
                xr = x[p, r]
                yr = y[p, r]
                if lo == -np.inf:
                    for k in range(nc):
                        yr[k] = (xr[k] - cen[k]) * sc[k] + sh[k]
                else:
                    for k in range(nc):
                        v = (xr[k] - cen[k]) * sc[k] + sh[k]
                        yr[k] = lo if v < lo else v


@kernel
def grad_input_cf(dy, x, parts, mean, invstd, weight, sum_dy, sum_dy_xc, count, gate, lo, dx,
                  tasks):
    """Training-mode ``dx`` per channel of ``(P, A, C, B)`` views, from the
    float64 statistics and the sums of :func:`grad_sums_cf`; the statistics
    are per group of ``parts`` channels (see :func:`_grad_coeffs`)."""
    ns, na, nc, nb = x.shape
    center, k_dy, k_x, k_0 = _grad_table(x, parts, mean, invstd, weight, sum_dy, sum_dy_xc, count)
    nq = (nb + CHUNK - 1) // CHUNK
    per = na * nc * nq
    n_t = ns * per
    ng = min(n_t, tasks)
    for grp in prange(ng):
        for t in range(grp * n_t // ng, (grp + 1) * n_t // ng):
            p = t // per
            a, c, b0 = _cf_piece(t - p * per, nc, nq)
            u = p * nc + c
            mc = center[u]
            g = k_dy[u]
            h = k_x[u]
            e = k_0[u]
            gs, gh = _gate_of(gate, u)
            gr = dy[p, a, c, b0:b0 + CHUNK]
            xr = x[p, a, c, b0:b0 + CHUNK]
            dr = dx[p, a, c, b0:b0 + CHUNK]
            for b in range(xr.size):
                xc = xr[b] - mc
                gb = dy.dtype.type(0) if xc * gs + gh <= lo else gr[b]
                dr[b] = g * gb + h * xc + e


@kernel
def grad_input_cl(dy, x, parts, mean, invstd, weight, sum_dy, sum_dy_xc, count, gate, lo, dx,
                  tasks):
    """As :func:`grad_input_cf`, over ``(P, R, C)`` views (see
    :func:`affine_cl`)."""
    ns, nr, nc = x.shape
    center, k_dy, k_x, k_0 = _grad_table(x, parts, mean, invstd, weight, sum_dy, sum_dy_xc, count)
    rows = max(1, CHUNK // nc)
    n_rt = (nr + rows - 1) // rows
    n_t = ns * n_rt
    ng = min(n_t, tasks)
    for grp in prange(ng):
        for t in range(grp * n_t // ng, (grp + 1) * n_t // ng):
            p = t // n_rt
            r0 = (t - p * n_rt) * rows
            cen = center[p * nc:p * nc + nc]
            g = k_dy[p * nc:p * nc + nc]
            h = k_x[p * nc:p * nc + nc]
            e = k_0[p * nc:p * nc + nc]
            gs = np.zeros(nc, x.dtype)
            gh = np.zeros(nc, x.dtype)
            for k in range(nc):
                gs[k], gh[k] = _gate_of(gate, p * nc + k)
            for r in range(r0, min(nr, r0 + rows)):
                gr = dy[p, r]
                xr = x[p, r]
                dr = dx[p, r]
                if gate.size:
                    for k in range(nc):
                        xc = xr[k] - cen[k]
                        gk = dy.dtype.type(0) if xc * gs[k] + gh[k] <= lo else gr[k]
                        dr[k] = g[k] * gk + h[k] * xc + e[k]
                else:  # as :func:`.backward_cl` (the same bits)
                    for k in range(nc):
                        dr[k] = g[k] * gr[k] + h[k] * (xr[k] - cen[k]) + e[k]

