"""LayerNorm's kernels over ``(1, R, D)`` views: statistics per row (a
channel of :func:`.stats_cf`'s view, summed the same exact way), weight and
bias along the row. A task holds whole rows and normalizes each while it is
in cache, so x is read from memory once per pass."""

from __future__ import annotations

import numpy as np
from numba import prange

from .._jit import kernel
from ._moments import _cf_moments
from ._tasks import BLOCK, CHUNK, MAX_CHUNKS, _n_chunks
from .maps import _affine_coeffs


@kernel
def rows_forward(x, weight, bias, eps, mean, var, y, tasks):
    """Per row: float64 ``mean`` and biased ``var``, then
    ``y = (x - mean) / sqrt(var + eps) * weight + bias``, ``weight`` and
    ``bias`` of length D in x's dtype."""
    _, nr, nd = x.shape
    n_t = _n_chunks(nr, max(1, CHUNK // nd), nr)
    ng = min(n_t, tasks)
    for grp in prange(ng):
        for t in range(grp * n_t // ng, (grp + 1) * n_t // ng):
            for r in range(t * nr // n_t, (t + 1) * nr // n_t):
                mu, m2 = _cf_moments(x, r, 0, nd)
                mean[r] = mu
                var[r] = m2 / nd
                center, scale, shift = _affine_coeffs(x, r, r, mean, var, weight[:0], bias[:0], eps)
                xr = x[0, r]
                yr = y[0, r]
                for d in range(nd):
                    yr[d] = ((xr[d] - center) * scale + shift) * weight[d] + bias[d]


@kernel
def rows_backward(dy, x, mean, invstd, weight, dx, dweight, dbias, tasks):
    """Per row: the sums of ``g = dy * weight`` and ``g * (x - mean)``, then
    ``dx`` while the row is in cache; ``dweight`` and ``dbias`` (float64,
    length D) are the column sums of ``dy * xhat`` and ``dy``, per task in
    float64 and merged in task order."""
    _, nr, nd = x.shape
    n_t = _n_chunks(nr, max(1, CHUNK // nd), MAX_CHUNKS)
    part_w = np.zeros((n_t, nd))
    part_b = np.zeros((n_t, nd))
    ng = min(n_t, tasks)
    for grp in prange(ng):
        for t in range(grp * n_t // ng, (grp + 1) * n_t // ng):
            pw = part_w[t]
            pb = part_b[t]
            for r in range(t * nr // n_t, (t + 1) * nr // n_t):
                center = x.dtype.type(mean[r])
                off = mean[r] - np.float64(center)
                gr = dy[0, r]
                xr = x[0, r]
                dr = dx[0, r]
                s = 0.0
                sx = 0.0
                for j in range(0, nd, BLOCK):
                    bs = x.dtype.type(0)
                    bsx = bs
                    for d in range(j, min(nd, j + BLOCK)):
                        g = gr[d] * weight[d]
                        bs += g
                        bsx += g * (xr[d] - center)
                    s += bs
                    sx += bsx
                rs = invstd[r]
                k_x = -rs * rs * rs * (sx - off * s) / nd
                k_0 = -rs * s / nd - off * k_x
                t_rs = x.dtype.type(rs)
                t_x = x.dtype.type(k_x)
                t_0 = x.dtype.type(k_0)
                t_sh = x.dtype.type(-off * rs)
                for d in range(nd):
                    xc = xr[d] - center
                    dr[d] = t_rs * weight[d] * gr[d] + t_x * xc + t_0
                    pw[d] += gr[d] * (xc * t_rs + t_sh)
                    pb[d] += gr[d]
    for d in range(nd):
        a = 0.0
        b = 0.0
        for t in range(n_t):
            a += part_w[t, d]
            b += part_b[t, d]
        dweight[d] = a
        dbias[d] = b
