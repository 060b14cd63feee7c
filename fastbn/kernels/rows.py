"""LayerNorm's kernels over ``(1, R, D)`` views: statistics per row, weight
and bias along the row. A task holds whole rows and normalizes each while
it is in cache, so x is read from memory once per pass.

Rows go in tiles of :data:`TILE` values: each row's sums are taken in x's
dtype (vectorized along the row), then the per-row float64 arithmetic
(mean, variance, square root, coefficients) runs as loops over the tile's
rows, which vectorize too; short rows would otherwise pay that scalar
arithmetic per row. A row of at most :data:`BLOCK` values is summed like a
block of the BatchNorm kernels: its mean in x's dtype is the shift of the
second pass, whose sums correct it (exact when the mean dwarfs the spread);
longer rows go through :func:`._cf_moments`.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .._jit import helper, kernel
from ._moments import _cf_moments
from ._tasks import BLOCK, CHUNK, MAX_CHUNKS, _n_chunks

#: Values per tile of rows; at most :data:`TILE_ROWS` rows.
TILE = 2048
TILE_ROWS = 64


@helper(inline=True)
def _tiles(nr, nd):
    """(rows per tile, tasks): whole tiles per task, about CHUNK values each."""
    tr = max(1, min(TILE_ROWS, TILE // nd))
    return tr, _n_chunks(nr, max(tr, CHUNK // nd), MAX_CHUNKS)


@helper
def _tile_moments(x, r0, r1, mean, var, s2s):
    """float64 mean and biased variance of rows ``r0:r1`` into ``mean``,
    ``var`` (indexed from 0); ``s2s`` is scratch."""
    nd = x.shape[2]
    if nd > BLOCK:
        for i in range(r1 - r0):
            mu, m2 = _cf_moments(x, r0 + i, 0, nd)
            mean[i] = mu
            var[i] = m2 / nd
        return
    for i in range(r1 - r0):
        xr = x[0, r0 + i]
        s = x.dtype.type(0)
        for d in range(nd):
            s += xr[d]
        c = x.dtype.type(s / nd)
        s1 = x.dtype.type(0)
        s2 = s1
        for d in range(nd):
            e = xr[d] - c
            s1 += e
            s2 += e * e
        mean[i] = c
        var[i] = s1
        s2s[i] = s2
    for i in range(r1 - r0):
        s1 = var[i]
        var[i] = max(0.0, (s2s[i] - s1 * s1 / nd) / nd)
        mean[i] += s1 / nd


@helper(inline=True)
def _row_grad_sums(gr, xr, weight, c):
    """float64 sums of ``g = gr * weight`` and ``g * (xr - c)`` over a row,
    in blocks of :data:`BLOCK` summed in x's dtype (one loop when the row
    is one block: a loop over blocks stops LLVM from vectorizing)."""
    nd = xr.size
    if nd <= BLOCK:
        bs = xr.dtype.type(0)
        bsx = bs
        for d in range(nd):
            g = gr[d] * weight[d]
            bs += g
            bsx += g * (xr[d] - c)
        return np.float64(bs), np.float64(bsx)
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
    tr, n_t = _tiles(nr, nd)
    ng = min(n_t, tasks)
    for grp in prange(ng):
        mu = np.empty(TILE_ROWS)
        v = np.empty(TILE_ROWS)
        s2s = np.empty(TILE_ROWS)
        center = np.empty(TILE_ROWS, x.dtype)
        scale = np.empty(TILE_ROWS, x.dtype)
        shift = np.empty(TILE_ROWS, x.dtype)
        for t in range(grp * n_t // ng, (grp + 1) * n_t // ng):
            for r0 in range(t * nr // n_t, (t + 1) * nr // n_t, tr):
                r1 = min((t + 1) * nr // n_t, r0 + tr)
                _tile_moments(x, r0, r1, mu, v, s2s)
                for i in range(r1 - r0):
                    mean[r0 + i] = mu[i]
                    var[r0 + i] = v[i]
                    rs = 1.0 / np.sqrt(v[i] + eps) if v[i] + eps > 0.0 else 0.0
                    c = x.dtype.type(mu[i])
                    center[i] = c
                    scale[i] = rs
                    shift[i] = -(mu[i] - np.float64(c)) * rs
                for i in range(r1 - r0):
                    xr = x[0, r0 + i]
                    yr = y[0, r0 + i]
                    c = center[i]
                    sc = scale[i]
                    sh = shift[i]
                    for d in range(nd):
                        yr[d] = ((xr[d] - c) * sc + sh) * weight[d] + bias[d]


@kernel
def rows_backward(dy, x, mean, invstd, weight, dx, dweight, dbias, tasks):
    """Per row: the sums of ``g = dy * weight`` and ``g * (x - mean)``, then
    ``dx`` while the row is in cache; ``dweight`` and ``dbias`` (float64,
    length D) are the column sums of ``dy * xhat`` and ``dy``, per tile in
    x's dtype, per task in float64, merged in task order."""
    _, nr, nd = x.shape
    tr, n_t = _tiles(nr, nd)
    part_w = np.empty((n_t, nd))
    part_b = np.empty((n_t, nd))
    ng = min(n_t, tasks)
    for grp in prange(ng):
        a1 = np.empty(TILE_ROWS)
        a2 = np.empty(TILE_ROWS)
        center = np.empty(TILE_ROWS, x.dtype)
        k_dy = np.empty(TILE_ROWS, x.dtype)
        k_x = np.empty(TILE_ROWS, x.dtype)
        k_0 = np.empty(TILE_ROWS, x.dtype)
        shift = np.empty(TILE_ROWS, x.dtype)
        acc_w = np.empty(nd, x.dtype)
        acc_b = np.empty(nd, x.dtype)
        tw = np.empty(nd)
        tb = np.empty(nd)
        for t in range(grp * n_t // ng, (grp + 1) * n_t // ng):
            tw[:] = 0.0
            tb[:] = 0.0
            for r0 in range(t * nr // n_t, (t + 1) * nr // n_t, tr):
                r1 = min((t + 1) * nr // n_t, r0 + tr)
                for i in range(r1 - r0):
                    c = x.dtype.type(mean[r0 + i])
                    center[i] = c
                    gr = dy[0, r0 + i]
                    xr = x[0, r0 + i]
                    a1[i], a2[i] = _row_grad_sums(gr, xr, weight, c)
                for i in range(r1 - r0):
                    off = mean[r0 + i] - np.float64(center[i])
                    rs = invstd[r0 + i]
                    kx = -rs * rs * rs * (a2[i] - off * a1[i]) / nd
                    k_dy[i] = rs
                    k_x[i] = kx
                    k_0[i] = -rs * a1[i] / nd - off * kx
                    shift[i] = -off * rs
                for d in range(nd):
                    acc_w[d] = 0
                    acc_b[d] = 0
                for i in range(r1 - r0):
                    gr = dy[0, r0 + i]
                    xr = x[0, r0 + i]
                    dr = dx[0, r0 + i]
                    c = center[i]
                    g = k_dy[i]
                    h = k_x[i]
                    e = k_0[i]
                    sh = shift[i]
                    for d in range(nd):
                        xc = xr[d] - c
                        gd = gr[d]
                        dr[d] = g * weight[d] * gd + h * xc + e
                        acc_w[d] += gd * (xc * g + sh)
                        acc_b[d] += gd
                for d in range(nd):
                    tw[d] += acc_w[d]
                    tb[d] += acc_b[d]
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
