"""Numba kernels: plain loop nests, no validation, float64 accumulation.

Every kernel comes in two shapes of the same data:

* ``_cf`` (channels first in memory): a ``(A, C, B)`` view whose last axis
  runs through one channel. NCHW data is ``(N, C, H*W)``.
* ``_cl`` (channels last in memory): an ``(R, C)`` view whose rows hold one
  value per channel. NHWC data is ``(N*H*W, C)``; so is rank-2 input.

Work is split into tasks whose boundaries depend only on the shape, never on
the thread count, and partial results are merged in a fixed order: results
are bit-identical whatever the number of threads, serial or parallel.

Statistics are exact in the way a two-pass algorithm is: each block of
``BLOCK`` values (cache-resident) is summed twice, first for its mean, then
for the squared deviations from it; blocks, tasks and channels' partials are
combined with Chan et al.'s pairwise update on (count, mean, M2).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._jit import helper, kernel

#: Values per task (per channel for ``_cf``, in all for ``_cl``).
CHUNK = 1 << 15
#: Most tasks per channel (``_cf``) or row chunks (``_cl``); bounds the
#: partials at ``O(MAX_CHUNKS * C)``.
MAX_CHUNKS = 64
#: Values per two-pass block: small enough that the second pass reads cache.
BLOCK = 4096
#: Channels per ``_cl`` task.
COLUMNS = 512


@helper
def _n_chunks(total, per_chunk, most):
    n = (total + per_chunk - 1) // per_chunk
    return max(1, min(n, most))


@helper
def _chan(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """Merge (count, mean, M2) of two disjoint sets (Chan et al., 1979)."""
    if n_b == 0.0:
        return n_a, mean_a, m2_a
    n = n_a + n_b
    frac = n_b / n
    delta = mean_b - mean_a
    return n, mean_a + delta * frac, m2_a + m2_b + delta * delta * n_a * frac


@helper
def _cf_sums(x, c, j0, j1, center):
    """Sum of ``d`` and ``d**2``, ``d = x - center``, over values ``j0:j1`` of
    channel ``c`` of an ``(A, C, B)`` view, value ``j`` being ``x[j // B, c,
    j % B]``."""
    nb = x.shape[2]
    a = j0 // nb
    b = j0 - a * nb
    s = 0.0
    s2 = 0.0
    j = j0
    while j < j1:
        run = min(nb - b, j1 - j)
        for q in range(b, b + run):
            d = np.float64(x[a, c, q]) - center
            s += d
            s2 += d * d
        j += run
        a += 1
        b = 0
    return s, s2


@helper
def _block_moments(s, s2, nb, center):
    """(mean, M2) of a block from sums of deviations about ``center``."""
    return center + s / nb, s2 - s * s / nb


@kernel
def stats_cf(x, mean, var):
    """Per-channel mean and biased variance of an ``(A, C, B)`` view into
    float64 ``mean`` and ``var``."""
    na, nc, nb = x.shape
    m = na * nb
    nch = _n_chunks(m, CHUNK, MAX_CHUNKS)
    size = (m + nch - 1) // nch
    part_mean = np.empty((nc, nch))
    part_m2 = np.empty((nc, nch))
    for t in prange(nc * nch):
        c = t // nch
        k = t - c * nch
        j1 = min(m, k * size + size)
        n = 0.0
        mu = 0.0
        m2 = 0.0
        for j in range(k * size, j1, BLOCK):
            je = min(j1, j + BLOCK)
            cnt = np.float64(je - j)
            s, _ = _cf_sums(x, c, j, je, 0.0)
            center = s / cnt
            s, s2 = _cf_sums(x, c, j, je, center)
            mb, m2b = _block_moments(s, s2, cnt, center)
            n, mu, m2 = _chan(n, mu, m2, cnt, mb, m2b)
        part_mean[c, k] = mu
        part_m2[c, k] = m2
    for c in prange(nc):
        n = 0.0
        mu = 0.0
        m2 = 0.0
        for k in range(nch):
            cnt = np.float64(min(m, k * size + size) - k * size)
            n, mu, m2 = _chan(n, mu, m2, cnt, part_mean[c, k], part_m2[c, k])
        mean[c] = mu
        var[c] = m2 / n


@kernel
def stats_cl(x, mean, var):
    """Per-column mean and biased variance of an ``(R, C)`` view into float64
    ``mean`` and ``var``."""
    nr, nc = x.shape
    width = min(nc, COLUMNS)
    nrc = _n_chunks(nr, max(1, CHUNK // width), min(nr, MAX_CHUNKS))
    rsize = (nr + nrc - 1) // nrc
    ncc = (nc + COLUMNS - 1) // COLUMNS
    part_mean = np.empty((nrc, nc))
    part_m2 = np.empty((nrc, nc))
    for t in prange(nrc * ncc):
        i = t // ncc
        k0 = (t - i * ncc) * COLUMNS
        kw = min(nc, k0 + COLUMNS) - k0
        r1 = min(nr, i * rsize + rsize)
        rows = max(1, BLOCK // kw)
        mu = np.zeros(kw)
        m2 = np.zeros(kw)
        center = np.empty(kw)
        s = np.empty(kw)
        s2 = np.empty(kw)
        n = 0.0
        for r0 in range(i * rsize, r1, rows):
            re = min(r1, r0 + rows)
            cnt = np.float64(re - r0)
            center[:] = 0.0
            for r in range(r0, re):
                for k in range(kw):
                    center[k] += x[r, k0 + k]
            for k in range(kw):
                center[k] /= cnt
                s[k] = 0.0
                s2[k] = 0.0
            for r in range(r0, re):
                for k in range(kw):
                    d = np.float64(x[r, k0 + k]) - center[k]
                    s[k] += d
                    s2[k] += d * d
            for k in range(kw):
                mb, m2b = _block_moments(s[k], s2[k], cnt, center[k])
                _, mu[k], m2[k] = _chan(n, mu[k], m2[k], cnt, mb, m2b)
            n += cnt
        part_mean[i, k0:k0 + kw] = mu
        part_m2[i, k0:k0 + kw] = m2
    for k in prange(nc):
        n = 0.0
        mu = 0.0
        m2 = 0.0
        for i in range(nrc):
            cnt = np.float64(min(nr, i * rsize + rsize) - i * rsize)
            n, mu, m2 = _chan(n, mu, m2, cnt, part_mean[i, k], part_m2[i, k])
        mean[k] = mu
        var[k] = m2 / n


@kernel
def grad_sums_cf(dy, x, center, sum_dy, sum_dy_xc):
    """Per-channel ``sum(dy)`` and ``sum(dy * (x - center))`` over
    ``(A, C, B)`` views."""
    na, nc, nb = x.shape
    m = na * nb
    nch = _n_chunks(m, CHUNK, MAX_CHUNKS)
    size = (m + nch - 1) // nch
    part_dy = np.empty((nc, nch))
    part_dyx = np.empty((nc, nch))
    for t in prange(nc * nch):
        c = t // nch
        k = t - c * nch
        j1 = min(m, k * size + size)
        mc = center[c]
        a = (k * size) // nb
        b = k * size - a * nb
        s = 0.0
        sx = 0.0
        j = k * size
        while j < j1:
            run = min(nb - b, j1 - j)
            for q in range(b, b + run):
                g = np.float64(dy[a, c, q])
                s += g
                sx += g * (np.float64(x[a, c, q]) - mc)
            j += run
            a += 1
            b = 0
        part_dy[c, k] = s
        part_dyx[c, k] = sx
    for c in prange(nc):
        s = 0.0
        sx = 0.0
        for k in range(nch):
            s += part_dy[c, k]
            sx += part_dyx[c, k]
        sum_dy[c] = s
        sum_dy_xc[c] = sx


@kernel
def grad_sums_cl(dy, x, center, sum_dy, sum_dy_xc):
    """Per-column ``sum(dy)`` and ``sum(dy * (x - center))`` over ``(R, C)``
    views."""
    nr, nc = x.shape
    width = min(nc, COLUMNS)
    nrc = _n_chunks(nr, max(1, CHUNK // width), min(nr, MAX_CHUNKS))
    rsize = (nr + nrc - 1) // nrc
    ncc = (nc + COLUMNS - 1) // COLUMNS
    part_dy = np.empty((nrc, nc))
    part_dyx = np.empty((nrc, nc))
    for t in prange(nrc * ncc):
        i = t // ncc
        k0 = (t - i * ncc) * COLUMNS
        kw = min(nc, k0 + COLUMNS) - k0
        s = np.zeros(kw)
        sx = np.zeros(kw)
        for r in range(i * rsize, min(nr, i * rsize + rsize)):
            for k in range(kw):
                g = np.float64(dy[r, k0 + k])
                s[k] += g
                sx[k] += g * (np.float64(x[r, k0 + k]) - center[k0 + k])
        part_dy[i, k0:k0 + kw] = s
        part_dyx[i, k0:k0 + kw] = sx
    for k in prange(nc):
        s = 0.0
        sx = 0.0
        for i in range(nrc):
            s += part_dy[i, k]
            sx += part_dyx[i, k]
        sum_dy[k] = s
        sum_dy_xc[k] = sx


@kernel
def affine_cf(x, center, scale, shift, y):
    """``y = (x - center) * scale + shift`` per channel of ``(A, C, B)``
    views, computed in float64."""
    na, nc, nb = x.shape
    nq = (nb + CHUNK - 1) // CHUNK
    for t in prange(na * nc * nq):
        row = t // nq
        b0 = (t - row * nq) * CHUNK
        a = row // nc
        c = row - a * nc
        mc = center[c]
        sc = scale[c]
        sh = shift[c]
        for b in range(b0, min(nb, b0 + CHUNK)):
            y[a, c, b] = (np.float64(x[a, c, b]) - mc) * sc + sh


@kernel
def affine_cl(x, center, scale, shift, y):
    """``y = (x - center) * scale + shift`` per column of ``(R, C)`` views,
    computed in float64."""
    nr, nc = x.shape
    rows = max(1, CHUNK // nc)
    for t in prange((nr + rows - 1) // rows):
        for r in range(t * rows, min(nr, t * rows + rows)):
            for k in range(nc):
                y[r, k] = (np.float64(x[r, k]) - center[k]) * scale[k] + shift[k]


@kernel
def grad_input_cf(dy, x, center, k_dy, k_x, k_0, dx):
    """``dx = k_dy * dy + k_x * (x - center) + k_0`` per channel of
    ``(A, C, B)`` views, computed in float64."""
    na, nc, nb = x.shape
    nq = (nb + CHUNK - 1) // CHUNK
    for t in prange(na * nc * nq):
        row = t // nq
        b0 = (t - row * nq) * CHUNK
        a = row // nc
        c = row - a * nc
        mc = center[c]
        g = k_dy[c]
        h = k_x[c]
        e = k_0[c]
        for b in range(b0, min(nb, b0 + CHUNK)):
            dx[a, c, b] = g * np.float64(dy[a, c, b]) + h * (np.float64(x[a, c, b]) - mc) + e


@kernel
def grad_input_cl(dy, x, center, k_dy, k_x, k_0, dx):
    """``dx = k_dy * dy + k_x * (x - center) + k_0`` per column of ``(R, C)``
    views, computed in float64."""
    nr, nc = x.shape
    rows = max(1, CHUNK // nc)
    for t in prange((nr + rows - 1) // rows):
        for r in range(t * rows, min(nr, t * rows + rows)):
            for k in range(nc):
                dx[r, k] = (
                    k_dy[k] * np.float64(dy[r, k])
                    + k_x[k] * (np.float64(x[r, k]) - center[k])
                    + k_0[k]
                )


KERNELS = {
    "stats": {"cf": stats_cf, "cl": stats_cl},
    "grad_sums": {"cf": grad_sums_cf, "cl": grad_sums_cl},
    "affine": {"cf": affine_cf, "cl": affine_cl},
    "grad_input": {"cf": grad_input_cf, "cl": grad_input_cl},
}


def dispatchers() -> list:
    """Every Numba dispatcher of the package (for cache and compile checks)."""
    return [d for pair in KERNELS.values() for k in pair.values() for d in k.dispatchers()]
