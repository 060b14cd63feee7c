"""LayerNorm's short rows (:mod:`.rows`): rows of at most
:data:`SHORT_BYTES` go a block of :data:`FLUSH_ROWS` rows at a time, since
per-row fixed costs, not memory, bound them: first the block's row sums
(two rows a loop), then its float64 coefficients in one loop over its rows
(vectorized across rows), then its outputs. The kernels' parfor over them
takes no views and indexes rows with unsigned integers, so Numba marks its
arrays noalias (no runtime alias checks per row) and wraps no index. The
sums sit in loops that store nothing, a plain sum never in the loop of a
sum of products (there, a parallel twin loaded from the cache summed an ulp
off the fresh compile: docs/cold-start.md). 65536x16 float32, 2 threads,
Xeon: backward 0.80 -> 0.48 ms, forward 0.60 -> 0.50 ms (kernels alone).
"""

from __future__ import annotations

import numpy as np

from .._jit import helper
from ._moments import _row_stats
from .maps import _row_affine, _row_grad_coeffs

#: Rows whose column sums (dweight, dbias) accumulate in x's dtype before
#: they are added to the task's float64 partials.
FLUSH_ROWS = 64
#: Rows of at most this many bytes take the short-row path (float64 rows of
#: 256 bytes ran faster pipelined).
SHORT_BYTES = 192
#: Values in a tile of the short-row path's column sums: consecutive rows add
#: into different tile rows, not into one (a chain through memory).
TILE = 64


@helper(inline=True)
def _short_forward(x, weight, bias, eps, mean, var, y, b0, nb, k, co):
    """:func:`rows_forward` of the short rows ``b0:b0 + nb``; ``k`` (3, >=
    nb + 1) and ``co`` (3, >= nb) are scratch in x's dtype."""
    nd = x.shape[2]
    dt = x.dtype.type
    for i in range(0, nb, 2):  # two rows a loop: half the loops' fixed costs
        ra = np.uint64(b0 + i)
        rb = np.uint64(b0 + min(i + 1, nb - 1))
        sa = sb = dt(0)
        for d in range(nd):
            sa += x[0, ra, d]
            sb += x[0, rb, d]
        ca, cb = dt(sa / nd), dt(sb / nd)
        pa = qa = pb = qb = dt(0)
        for d in range(nd):  # apart from the sums of squares (module doc)
            pa += x[0, ra, d] - ca
            pb += x[0, rb, d] - cb
        for d in range(nd):
            qa += (x[0, ra, d] - ca) * (x[0, ra, d] - ca)
            qb += (x[0, rb, d] - cb) * (x[0, rb, d] - cb)
        k[0, i], k[1, i], k[2, i] = ca, pa, qa
        k[0, i + 1], k[1, i + 1], k[2, i + 1] = cb, pb, qb
    for i in range(nb):
        mu, v = _row_stats(k[0, i], k[1, i], k[2, i], nd)
        mean[np.uint64(b0 + i)] = mu
        var[np.uint64(b0 + i)] = v
        c = dt(mu)
        rs, shift = _row_affine(mu, c, v, eps)
        co[0, i], co[1, i], co[2, i] = c, rs, shift
    for i in range(nb):
        r = np.uint64(b0 + i)
        c, sc, sh = co[0, i], co[1, i], co[2, i]
        for d in range(nd):
            y[0, r, d] = ((x[0, r, d] - c) * sc + sh) * weight[d] + bias[d]


@helper(inline=True)
def _short_backward(dy, x, mean, var, eps, weight, dx, b0, nb, aw, ab, k, co):
    """:func:`rows_backward`'s dx of the short rows ``b0:b0 + nb``; their
    column sums are added to the tiles ``aw`` and ``ab`` (Q, D), row ``i``
    to tile row ``i % Q`` (Q a power of two). ``k`` (4, >= nb + 1, float64)
    and ``co`` (4, >= nb, x's dtype) are scratch."""
    nd = x.shape[2]
    dt = x.dtype.type
    for i in range(0, nb, 2):  # two rows a loop: half the loops' fixed costs
        ra = np.uint64(b0 + i)
        rb = np.uint64(b0 + min(i + 1, nb - 1))
        ca, cb = dt(mean[ra]), dt(mean[rb])
        s1a = s1b = s2a = s2b = dt(0)
        for d in range(nd):  # apart from the sums of products (module doc)
            s1a += dy[0, ra, d] * weight[d]
            s1b += dy[0, rb, d] * weight[d]
        for d in range(nd):
            s2a += dy[0, ra, d] * weight[d] * (x[0, ra, d] - ca)
            s2b += dy[0, rb, d] * weight[d] * (x[0, rb, d] - cb)
        k[0, i], k[1, i], k[2, i], k[3, i] = mean[ra] - np.float64(ca), var[ra], s1a, s2a
        k[0, i + 1], k[1, i + 1] = mean[rb] - np.float64(cb), var[rb]
        k[2, i + 1], k[3, i + 1] = s1b, s2b
    for i in range(nb):
        co[0, i], co[1, i], co[2, i], co[3, i] = _row_grad_coeffs(k[0, i], k[1, i], eps, k[2, i],
                                                                  k[3, i], nd)
    for i in range(nb):
        r = np.uint64(b0 + i)
        q = np.uint64(i & (aw.shape[0] - 1))
        c, t_rs, t_x, t_0, t_sh = dt(mean[r]), co[0, i], co[1, i], co[2, i], co[3, i]
        for d in range(nd):
            xc = x[0, r, d] - c
            gd = dy[0, r, d]
            dx[0, r, d] = t_rs * weight[d] * gd + t_x * xc + t_0
            aw[q, d] += gd * (xc * t_rs + t_sh)
            ab[q, d] += gd
