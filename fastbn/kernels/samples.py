"""Sample-per-task kernels over ``(P, R, C)`` views of channels-last data
normalized per sample (GroupNorm, InstanceNorm): a sample's column
statistics, merged per group of ``parts`` consecutive columns, then its
normalization while the sample is still in cache (x read from memory once
instead of twice).

The column statistics are those of :func:`.stats_cl` (the same tasks, the
same sums), and :func:`merge_groups` is the per-group merge the two-pass
path applies to them; the gradient sums are those of :func:`.grad_sums_cl`:
both paths give the same bits.

Each element-wise pass also reads the task's next sample (see
:mod:`.fused`).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .._jit import helper, kernel, serial_kernel
from ._moments import _cl_moments, _merge_chunks
from ._tasks import COLUMNS, _cl_row_chunks
from .grad_sums import _cl_grad_sums, _column_totals
from .maps import _affine_coeffs, _grad_coeffs, _group_sums

#: Values per span of whole rows the element-wise pass runs as one flat
#: loop, its coefficients tiled over the span: a loop per row of C values
#: pays LLVM's alias checks and vector set-up per row (one run on a loaded
#: 2-vCPU Xeon: 0.86-0.92 of the per-row loop's time at C = 64 and 256,
#: even at C = 32).
SPAN = 2048


@helper(strict=True)
def _merge_groups(cm, cv, parts, gm, gv):
    """(mean, biased variance) of each group of ``parts`` consecutive
    columns of equal counts into ``gm``, ``gv``: the mean of the variances
    plus the variance of the means, the means taken about the group's first
    (a constant group's mean stays exact)."""
    for g in range(gm.size):
        base = cm[g * parts]
        d = 0.0
        v = 0.0
        for j in range(g * parts, g * parts + parts):
            d += cm[j] - base
            v += cv[j]
        d /= parts
        s = 0.0
        for j in range(g * parts, g * parts + parts):
            e = cm[j] - base - d
            s += e * e
        gm[g] = base + d
        gv[g] = v / parts + s / parts


@serial_kernel
def merge_groups(cm, cv, parts, gm, gv, tasks):
    """:func:`_merge_groups` of flat per-column statistics (O(C) work)."""
    _merge_groups(cm, cv, parts, gm, gv)


@helper
def _sample_moments(xs, cm, cv, pm, pm2):
    """Per-column (mean, biased variance) of a sample's ``(R, C)`` rows into
    ``cm``, ``cv``, in the tasks of :func:`.stats_cl`; ``pm``, ``pm2``:
    scratch of shape ``(C, row chunks)``."""
    nr, nc = xs.shape
    nrc, rsize = _cl_row_chunks(nr, nc)
    for i in range(nrc):
        for k0 in range(0, nc, COLUMNS):
            kw = min(nc, k0 + COLUMNS) - k0
            mu = np.empty(kw)
            m2 = np.empty(kw)
            _cl_moments(xs, i * rsize, min(nr, i * rsize + rsize), k0, mu, m2)
            for j in range(kw):
                pm[k0 + j, i] = mu[j]
                pm2[k0 + j, i] = m2[j]
    for k in range(nc):
        cm[k], cv[k] = _merge_chunks(pm[k], pm2[k], nr, rsize)


@helper(inline=True)
def _repeat_rows(v, nc):
    """``v[:nc]`` repeated over the rest of ``v`` (a span of whole rows)."""
    for j in range(nc, v.size):
        v[j] = v[j - nc]


@kernel
def forward_cl(x, parts, weight, bias, eps, mean, var, y, tasks):
    """Training forward over a C-contiguous ``(P, R, C)`` view, a sample
    per task: its column statistics merged per group of ``parts`` columns
    into float64 ``mean`` and ``var`` (length P * C / parts), then
    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` with ``weight``
    and ``bias`` of length C (empty: ones, zeros) while the sample is still
    in cache. For samples that fit in cache."""
    ns, nr, nc = x.shape
    ngr = nc // parts
    nrc = _cl_row_chunks(nr, nc)[0]
    rows = max(1, SPAN // nc)
    ng = min(ns, tasks)
    sink = np.zeros(ng, x.dtype)
    for grp in prange(ng):
        p1 = (grp + 1) * ns // ng
        touched = x.dtype.type(0)
        pm = np.empty((nc, nrc))
        pm2 = np.empty((nc, nrc))
        cm = np.empty(nc)
        cv = np.empty(nc)
        cen = np.empty(rows * nc, x.dtype)
        sc = np.empty(rows * nc, x.dtype)
        sh = np.empty(rows * nc, x.dtype)
        for p in range(grp * ns // ng, p1):
            _sample_moments(x[p], cm, cv, pm, pm2)
            _merge_groups(cm, cv, parts, mean[p * ngr:p * ngr + ngr], var[p * ngr:p * ngr + ngr])
            for k in range(nc):
                cen[k], sc[k], sh[k] = _affine_coeffs(x, p * ngr + k // parts, k, mean, var,
                                                      weight, bias, eps)
            _repeat_rows(cen, nc)
            _repeat_rows(sc, nc)
            _repeat_rows(sh, nc)
            xf = x[p].reshape(nr * nc)
            yf = y[p].reshape(nr * nc)
            xnf = x[min(p + 1, p1 - 1)].reshape(nr * nc)
            for j0 in range(0, nr * nc, rows * nc):
                xr = xf[j0:j0 + rows * nc]
                yr = yf[j0:j0 + rows * nc]
                xn = xnf[j0:j0 + rows * nc]
                for j in range(xr.size):
                    yr[j] = (xr[j] - cen[j]) * sc[j] + sh[j]
                    touched += xn[j]
        sink[grp] = touched


@kernel
def backward_cl(dy, x, parts, mean, invstd, weight, count, sum_dy, sum_dy_xc, dx, tasks):
    """Training backward over C-contiguous ``(P, R, C)`` views, a sample per
    task: the per-column sums of ``dy`` and ``dy * (x - mean)`` into
    float64 ``sum_dy``, ``sum_dy_xc`` (length P * C, as
    :func:`.grad_sums_cl`), then ``dx`` with the coefficients of each group
    of ``parts`` columns (:func:`._grad_coeffs`; ``mean``, ``invstd`` per
    group, ``weight`` per sample and column, of length P * C) while the
    sample is still in cache."""
    ns, nr, nc = x.shape
    ngr = nc // parts
    nrc, rsize = _cl_row_chunks(nr, nc)
    rows = max(1, SPAN // nc)
    no_gate = np.empty(0, x.dtype)
    lo = x.dtype.type(-np.inf)
    ng = min(ns, tasks)
    sink = np.zeros(ng, x.dtype)
    for grp in prange(ng):
        p1 = (grp + 1) * ns // ng
        touched = x.dtype.type(0)
        cmean = np.empty(nc)
        ps = np.empty((nrc, nc))
        psx = np.empty((nrc, nc))
        cen = np.empty(rows * nc, x.dtype)
        k_dy = np.empty(rows * nc, x.dtype)
        k_x = np.empty(rows * nc, x.dtype)
        k_0 = np.empty(rows * nc, x.dtype)
        for p in range(grp * ns // ng, p1):
            for k in range(nc):
                cmean[k] = mean[p * ngr + k // parts]
            for i in range(nrc):
                for k0 in range(0, nc, COLUMNS):
                    kw = min(nc, k0 + COLUMNS) - k0
                    s = np.zeros(kw)
                    sx = np.zeros(kw)
                    _cl_grad_sums(dy[p], x[p], i * rsize, min(nr, i * rsize + rsize), k0, 0,
                                  cmean, no_gate, lo, s, sx)
                    for j in range(kw):
                        ps[i, k0 + j] = s[j]
                        psx[i, k0 + j] = sx[j]
            for k in range(nc):
                sum_dy[p * nc + k], sum_dy_xc[p * nc + k] = _column_totals(ps, psx, k, cmean[k], x)
            w1 = w2 = 0.0
            for k in range(nc):
                if k % parts == 0:
                    w1, w2 = _group_sums(p * nc + k, parts, weight, sum_dy, sum_dy_xc)
                cen[k], k_dy[k], k_x[k], k_0[k] = _grad_coeffs(
                    x, p * ngr + k // parts, p * nc + k, w1, w2, mean, invstd, weight, count)
            _repeat_rows(cen, nc)
            _repeat_rows(k_dy, nc)
            _repeat_rows(k_x, nc)
            _repeat_rows(k_0, nc)
            pn = min(p + 1, p1 - 1)
            gf = dy[p].reshape(nr * nc)
            xf = x[p].reshape(nr * nc)
            df = dx[p].reshape(nr * nc)
            gnf = dy[pn].reshape(nr * nc)
            xnf = x[pn].reshape(nr * nc)
            for j0 in range(0, nr * nc, rows * nc):
                gr = gf[j0:j0 + rows * nc]
                xr = xf[j0:j0 + rows * nc]
                dr = df[j0:j0 + rows * nc]
                gn = gnf[j0:j0 + rows * nc]
                xn = xnf[j0:j0 + rows * nc]
                for j in range(xr.size):
                    dr[j] = k_dy[j] * gr[j] + k_x[j] * (xr[j] - cen[j]) + k_0[j]
                    touched += gn[j] + xn[j]
        sink[grp] = touched
