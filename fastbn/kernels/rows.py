"""LayerNorm's kernels over ``(1, R, D)`` views: statistics per row, weight
and bias along the row. A task holds whole rows and finishes each while it
is in cache, so x (and dy) are read from memory once.

The passes are pipelined by row: the loop that writes row r's output also
takes the first sums of row r + 1, so reading the next row from memory
overlaps writing this one (a pass that only reads, then one that only
writes, left the memory system idle half the time: 4096x768 float32, one
thread, 1.38 ms against 0.93 ms, a copy taking 0.86 ms, Xeon).

A row of at most :data:`BLOCK` values is summed like a block of the
BatchNorm kernels: its mean in x's dtype is the shift of a second pass over
the row (in cache), whose sums correct it (exact when the mean dwarfs the
spread). Longer rows go through :func:`._cf_moments` and the blocked sums
of :func:`_row_grad_sums`.

Rows of at most :data:`SHORT_BYTES` go a block of rows at a time
(:mod:`.short_rows`).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .._jit import helper, kernel
from ._moments import _cf_moments, _row_stats
from ._tasks import BLOCK, CHUNK, MAX_CHUNKS, _n_chunks
from .maps import _row_affine, _row_grad_coeffs
from .short_rows import (FLUSH_ROWS, SHORT_BYTES, TILE, _short_backward,
                         _short_forward)


@helper(inline=True)
def _row_tasks(nr, nd):
    """Tasks of whole rows, about CHUNK values each."""
    return _n_chunks(nr, max(1, CHUNK // nd), MAX_CHUNKS)


@helper(inline=True)
def _row_moments(xr, s):
    """float64 (mean, biased variance) of a row of at most :data:`BLOCK`
    values whose sum in x's dtype is ``s``."""
    nd = xr.size
    c = xr.dtype.type(s / nd)
    s1 = xr.dtype.type(0)
    s2 = s1
    for d in range(nd):
        e = xr[d] - c
        s1 += e
        s2 += e * e
    return _row_stats(c, s1, s2, nd)


@helper(inline=True)
def _write_row(xr, xn, yr, weight, bias, mu, v, eps):
    """``yr`` from row ``xr`` of mean ``mu`` and variance ``v``; returns
    the sum of row ``xn`` in x's dtype, taken in the same loop."""
    c = xr.dtype.type(mu)
    rs, shift = _row_affine(mu, c, v, eps)
    sc = xr.dtype.type(rs)
    sh = xr.dtype.type(shift)
    s = xr.dtype.type(0)
    for d in range(xr.size):
        yr[d] = ((xr[d] - c) * sc + sh) * weight[d] + bias[d]
        s += xn[d]
    return s


@helper
def _long_grad_sums(gr, xr, weight, c):
    """:func:`_row_grad_sums` of a row longer than :data:`BLOCK` (a call:
    inlined, its blocked loop slowed the short rows' pipelined loop)."""
    return _row_grad_sums(gr, xr, weight, c)


@helper(inline=True)
def _row_grad_sums(gr, xr, weight, c):
    """float64 sums of ``g = gr * weight`` and ``g * (xr - c)`` over a row,
    in blocks of :data:`BLOCK` summed in x's dtype."""
    nd = xr.size
    s = 0.0
    sx = 0.0
    for j in range(0, nd, BLOCK):
        bs = xr.dtype.type(0)
        bsx = bs
        for d in range(j, min(nd, j + BLOCK)):
            g = gr[d] * weight[d]
            bs += g
            bsx += g * (xr[d] - c)
        s += bs
        sx += bsx
    return s, sx


@kernel
def rows_forward(x, weight, bias, eps, mean, var, y, tasks):
    """Per row: float64 ``mean`` and biased ``var``, then
    ``y = (x - mean) / sqrt(var + eps) * weight + bias``, ``weight`` and
    ``bias`` of length D in x's dtype."""
    _, nr, nd = x.shape
    n_t = _row_tasks(nr, nd)
    ng = min(n_t, tasks)
    if nd * x.itemsize <= SHORT_BYTES:
        for grp in prange(ng):
            k = np.empty((3, FLUSH_ROWS + 1), x.dtype)
            co = np.empty((3, FLUSH_ROWS), x.dtype)
            for t in range(grp * n_t // ng, (grp + 1) * n_t // ng):
                r1 = (t + 1) * nr // n_t
                for b0 in range(t * nr // n_t, r1, FLUSH_ROWS):
                    _short_forward(x, weight, bias, eps, mean, var, y, b0,
                                   min(FLUSH_ROWS, r1 - b0), k, co)
    else:
        for grp in prange(ng):
            for t in range(grp * n_t // ng, (grp + 1) * n_t // ng):
                r0 = t * nr // n_t
                r1 = (t + 1) * nr // n_t
                if nd > BLOCK:
                    for r in range(r0, r1):
                        mu, m2 = _cf_moments(x, r, 0, nd)
                        mean[r] = mu
                        var[r] = m2 / nd
                        _write_row(x[0, r], x[0, r], y[0, r], weight, bias, mu, m2 / nd, eps)
                    continue
                xr = x[0, r0]
                s = x.dtype.type(0)
                for d in range(nd):
                    s += xr[d]
                for r in range(r0, r1):
                    mu, v = _row_moments(x[0, r], s)
                    mean[r] = mu
                    var[r] = v
                    s = _write_row(x[0, r], x[0, min(r + 1, r1 - 1)], y[0, r], weight, bias, mu, v,
                                   eps)


@kernel
def rows_backward(dy, x, mean, var, eps, weight, dx, dweight, dbias, tasks):
    """Per row: the sums of ``g = dy * weight`` and ``g * (x - mean)``, then
    ``dx`` (``1 / sqrt(var + eps)`` taken here: a NumPy pass over the
    rows' variances cost a fifth of a short-row backward); ``dweight`` and
    ``dbias`` (float64, length D) are the column sums of ``dy * xhat`` and
    ``dy``, over :data:`FLUSH_ROWS` rows in x's dtype, per task in float64,
    merged in task order."""
    _, nr, nd = x.shape
    n_t = _row_tasks(nr, nd)
    part_w = np.empty((n_t, nd))
    part_b = np.empty((n_t, nd))
    ng = min(n_t, tasks)
    if nd * x.itemsize <= SHORT_BYTES:
        nq = 1
        while 2 * nq * nd <= TILE:
            nq *= 2
        for grp in prange(ng):
            aw = np.zeros((nq, nd), x.dtype)
            ab = np.zeros((nq, nd), x.dtype)
            k = np.empty((4, FLUSH_ROWS + 1))
            co = np.empty((4, FLUSH_ROWS), x.dtype)
            tw = np.empty(nd)
            tb = np.empty(nd)
            for t in range(grp * n_t // ng, (grp + 1) * n_t // ng):
                r1 = (t + 1) * nr // n_t
                for d in range(nd):
                    tw[d] = 0.0
                    tb[d] = 0.0
                for b0 in range(t * nr // n_t, r1, FLUSH_ROWS):
                    _short_backward(dy, x, mean, var, eps, weight, dx, b0,
                                    min(FLUSH_ROWS, r1 - b0), aw, ab, k, co)
                    for q in range(nq):  # flushed once a block
                        for d in range(nd):
                            tw[d] += aw[q, d]
                            tb[d] += ab[q, d]
                            aw[q, d] = 0
                            ab[q, d] = 0
                for d in range(nd):
                    part_w[t, d] = tw[d]
                    part_b[t, d] = tb[d]
    else:
        for grp in prange(ng):
            tw = np.empty(nd)
            tb = np.empty(nd)
            acc_w = np.empty(nd, x.dtype)
            acc_b = np.empty(nd, x.dtype)
            for t in range(grp * n_t // ng, (grp + 1) * n_t // ng):
                r0 = t * nr // n_t
                r1 = (t + 1) * nr // n_t
                tw[:] = 0.0
                tb[:] = 0.0
                acc_w[:] = 0
                acc_b[:] = 0
                a1, a2 = _row_grad_sums(dy[0, r0], x[0, r0], weight, x.dtype.type(mean[r0]))
                for r in range(r0, r1):
                    c = x.dtype.type(mean[r])
                    off = mean[r] - np.float64(c)
                    rs, kx, k0, ksh = _row_grad_coeffs(off, var[r], eps, a1, a2, nd)
                    t_rs = x.dtype.type(rs)
                    t_x = x.dtype.type(kx)
                    t_0 = x.dtype.type(k0)
                    t_sh = x.dtype.type(ksh)
                    rn = min(r + 1, r1 - 1)
                    cn = x.dtype.type(mean[rn])
                    gr = dy[0, r]
                    xr = x[0, r]
                    dr = dx[0, r]
                    gn = dy[0, rn]
                    xn = x[0, rn]
                    b1 = x.dtype.type(0)
                    b2 = b1
                    for d in range(nd):
                        xc = xr[d] - c
                        gd = gr[d]
                        dr[d] = t_rs * weight[d] * gd + t_x * xc + t_0
                        acc_w[d] += gd * (xc * t_rs + t_sh)
                        acc_b[d] += gd
                        g = gn[d] * weight[d]
                        b1 += g
                        b2 += g * (xn[d] - cn)
                    a1 = np.float64(b1)
                    a2 = np.float64(b2)
                    if nd > BLOCK:
                        a1, a2 = _long_grad_sums(gn, xn, weight, cn)
                    if (r - r0) % FLUSH_ROWS == FLUSH_ROWS - 1 or r == r1 - 1:
                        for d in range(nd):
                            tw[d] += acc_w[d]
                            tb[d] += acc_b[d]
                            acc_w[d] = 0
                            acc_b[d] = 0
                # Assigned, not added into: with ``+=`` into part_w the parallel
                # twin ran 7x slower at chunk size 1 (measured, 4096x768).
                for d in range(nd):
                    part_w[t, d] = tw[d]
                    part_b[t, d] = tb[d]
    for d in range(nd):
        w = 0.0
        b = 0.0
        for t in range(n_t):
            w += part_w[t, d]
            b += part_b[t, d]
        dweight[d] = w
        dbias[d] = b
