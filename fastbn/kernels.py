"""Numba kernels: plain loop nests, no validation; blocks summed in the input
dtype, partial results merged in float64.

Every kernel comes in two shapes of the same data:

* ``_cf`` (channels first in memory): a ``(A, C, B)`` view whose last axis
  runs through one channel. NCHW data is ``(N, C, H*W)``.
* ``_cl`` (channels last in memory): an ``(R, C)`` view whose rows hold one
  value per channel. NHWC data is ``(N*H*W, C)``; so is rank-2 input.

Work is split into tasks whose boundaries depend only on the shape, never on
the thread count, and partial results are merged in a fixed order: results
are bit-identical whatever the number of threads, serial or parallel.

Statistics are exact in the way a two-pass algorithm is: each block of at
most ``BLOCK`` values (cache-resident) is summed twice, first for its mean,
then for the deviations from it and their squares. Block sums run in the
input's dtype, so float32 data vectorises at full SIMD width; a block is
small, so they stay exact to a few ulps. Blocks, tasks and channels are then
combined in float64 with Chan et al.'s pairwise update on (count, mean, M2).

Element-wise kernels compute ``(x - center) * scale + shift`` with the
center kept apart from the shift: ``x - center`` is exact when the mean
dwarfs the spread, so float32 arithmetic keeps the accuracy of the float64
statistics (the center's rounding error is folded into the shift).
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
#: Most rows per ``_cl`` block: bounds the terms a block accumulator sums.
ROWS = 256
#: Values per ``_cl`` block: large, so that the per-channel float64 merge
#: after each block costs little next to the block's streaming sums.
CL_BLOCK = 1 << 16
#: Values (``_cf``) or rows (``_cl``) a task averages for its first shift.
PILOT = 64
PILOT_ROWS = 16


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
def _merge_chunks(chunk_mean, chunk_m2, total, size):
    """(mean, biased variance) of ``total`` values from the (mean, M2) of
    their consecutive chunks of ``size`` values (the last may be shorter)."""
    n = 0.0
    mu = 0.0
    m2 = 0.0
    for k in range(chunk_mean.size):
        cnt = np.float64(min(total, k * size + size) - k * size)
        n, mu, m2 = _chan(n, mu, m2, cnt, chunk_mean[k], chunk_m2[k])
    return mu, m2 / n


@helper
def _block_moments(s, s2, nb, center):
    """(mean, M2) of a block from the sums of deviations about ``center``."""
    return center + s / nb, s2 - s * s / nb


@helper
def _cf_sums(x, c, j0, j1, center):
    """Sums of ``d`` and ``d**2``, ``d = x - center``, in x's dtype, over
    values ``j0:j1`` of channel ``c`` of an ``(A, C, B)`` view (value ``j``
    is ``x[j // B, c, j % B]``)."""
    nb = x.shape[2]
    a = j0 // nb
    b = j0 - a * nb
    s = center - center
    s2 = s
    j = j0
    while j < j1:
        run = min(nb - b, j1 - j)
        xr = x[a, c, b:b + run]
        for q in range(run):
            d = xr[q] - center
            s += d
            s2 += d * d
        j += run
        a += 1
        b = 0
    return s, s2


@helper
def _cancels(s, s2, cnt):
    """Whether shifted sums lost more than 2 bits to cancellation, i.e. the
    shift lies too far from the block's mean for its spread."""
    s = np.float64(s)
    return s * s > 0.75 * cnt * np.float64(s2)


@helper
def _cf_grad_sums(dy, x, c, j0, j1, center):
    """Sums of ``dy`` and ``dy * (x - center)`` in x's dtype over values
    ``j0:j1`` of channel ``c`` (as :func:`_cf_sums`)."""
    nb = x.shape[2]
    a = j0 // nb
    b = j0 - a * nb
    s = dy.dtype.type(0)
    sx = s
    j = j0
    while j < j1:
        run = min(nb - b, j1 - j)
        gr = dy[a, c, b:b + run]
        xr = x[a, c, b:b + run]
        for q in range(run):
            g = gr[q]
            s += g
            sx += g * (xr[q] - center)
        j += run
        a += 1
        b = 0
    return s, sx


@helper
def _cl_sums(x, r0, r1, k0, center, s, s2):
    """Per-column sums of ``d`` and ``d**2``, ``d = x - center``, over rows
    ``r0:r1`` and columns ``k0:k0 + len(center)``, into ``s`` and ``s2``.
    Four rows a step: the accumulators are read and written once per four."""
    kw = center.size
    s[:] = 0
    s2[:] = 0
    r = r0
    while r < r1:
        if r + 4 <= r1:
            x0 = x[r, k0:k0 + kw]
            x1 = x[r + 1, k0:k0 + kw]
            x2 = x[r + 2, k0:k0 + kw]
            x3 = x[r + 3, k0:k0 + kw]
            for k in range(kw):
                d0 = x0[k] - center[k]
                d1 = x1[k] - center[k]
                d2 = x2[k] - center[k]
                d3 = x3[k] - center[k]
                s[k] += (d0 + d1) + (d2 + d3)
                s2[k] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
            r += 4
        else:
            xr = x[r, k0:k0 + kw]
            for k in range(kw):
                d = xr[k] - center[k]
                s[k] += d
                s2[k] += d * d
            r += 1


@helper
def _affine_coeffs(x, c, mean, var, weight, bias, eps):
    """Channel ``c``'s ``(center, scale, shift)`` in x's dtype, for
    ``y = (x - center) * scale + shift``: the float64 mean's rounding to the
    center is moved into the shift. Empty ``weight``/``bias`` mean ones and
    zeros."""
    scale = 1.0 / np.sqrt(var[c] + eps)
    if weight.size:
        scale *= weight[c]
    shift = bias[c] if bias.size else 0.0
    center = x.dtype.type(mean[c])
    shift -= (mean[c] - np.float64(center)) * scale
    return center, x.dtype.type(scale), x.dtype.type(shift)


@helper
def _grad_coeffs(x, c, mean, invstd, weight, sum_dy, sum_dy_xc, m):
    """Channel ``c``'s ``(center, k_dy, k_x, k_0)`` in x's dtype, for the
    training gradient ``dx = k_dy * dy + k_x * (x - center) + k_0``."""
    k_dy = invstd[c] * (weight[c] if weight.size else 1.0)
    k_x = -k_dy * invstd[c] * invstd[c] * sum_dy_xc[c] / m
    center = x.dtype.type(mean[c])
    k_0 = -k_dy * sum_dy[c] / m - (mean[c] - np.float64(center)) * k_x
    t = x.dtype.type
    return center, t(k_dy), t(k_x), t(k_0)


@helper
def _affine_table(x, mean, var, weight, bias, eps):
    """:func:`_affine_coeffs` of every channel, as three arrays of x's dtype."""
    nc = mean.size
    center = np.empty(nc, x.dtype)
    scale = np.empty(nc, x.dtype)
    shift = np.empty(nc, x.dtype)
    for c in range(nc):
        center[c], scale[c], shift[c] = _affine_coeffs(x, c, mean, var, weight, bias, eps)
    return center, scale, shift


@helper
def _grad_table(x, mean, invstd, weight, sum_dy, sum_dy_xc, m):
    """:func:`_grad_coeffs` of every channel, as four arrays of x's dtype."""
    nc = mean.size
    center = np.empty(nc, x.dtype)
    k_dy = np.empty(nc, x.dtype)
    k_x = np.empty(nc, x.dtype)
    k_0 = np.empty(nc, x.dtype)
    for c in range(nc):
        center[c], k_dy[c], k_x[c], k_0[c] = _grad_coeffs(
            x, c, mean, invstd, weight, sum_dy, sum_dy_xc, m)
    return center, k_dy, k_x, k_0


@kernel
def update_running(mean, var, count, momentum, running_mean, running_var):
    """Exponential update of the running statistics (unbiased variance),
    only if every batch statistic is finite; returns whether they were."""
    for c in range(mean.size):
        if not (np.isfinite(mean[c]) and np.isfinite(var[c])):
            return False
    unbias = count / (count - 1.0)
    for c in range(mean.size):
        running_mean[c] = (1.0 - momentum) * running_mean[c] + momentum * mean[c]
        running_var[c] = (1.0 - momentum) * running_var[c] + momentum * var[c] * unbias
    return True


@helper
def _cf_moments(x, c, j0, j1):
    """(mean, M2) of values ``j0:j1`` of channel ``c`` (as :func:`_cf_sums`):
    blocks of shifted sums, the shift being the running mean (first, that of
    a short pilot), a block summed again about its own mean if its sums lost
    too much to cancellation, blocks merged with Chan's formula."""
    pilot = min(PILOT, j1 - j0)
    s, _ = _cf_sums(x, c, j0, j0 + pilot, x.dtype.type(0))
    shift = x.dtype.type(s / pilot)
    n = 0.0
    mu = 0.0
    m2 = 0.0
    for j in range(j0, j1, BLOCK):
        je = min(j1, j + BLOCK)
        cnt = np.float64(je - j)
        s, s2 = _cf_sums(x, c, j, je, shift)
        if _cancels(s, s2, cnt):
            shift = x.dtype.type(shift + s / cnt)
            s, s2 = _cf_sums(x, c, j, je, shift)
        mb, m2b = _block_moments(np.float64(s), np.float64(s2), cnt, np.float64(shift))
        n, mu, m2 = _chan(n, mu, m2, cnt, mb, m2b)
        shift = x.dtype.type(mu)
    return mu, m2


@helper
def _cf_grad_totals(dy, x, c, j0, j1, center):
    """float64 sums of ``dy`` and ``dy * (x - center)`` over values ``j0:j1``
    of channel ``c``, block by block."""
    s = 0.0
    sx = 0.0
    for j in range(j0, j1, BLOCK):
        bs, bsx = _cf_grad_sums(dy, x, c, j, min(j1, j + BLOCK), center)
        s += bs
        sx += bsx
    return s, sx


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
        part_mean[c, k], part_m2[c, k] = _cf_moments(x, c, k * size, min(m, k * size + size))
    for c in prange(nc):
        mean[c], var[c] = _merge_chunks(part_mean[c], part_m2[c], m, size)


@kernel
def stats_cl(x, mean, var):
    """Per-column mean and biased variance of an ``(R, C)`` view into float64
    ``mean`` and ``var``."""
    nr, nc = x.shape
    width = min(nc, COLUMNS)
    nrc = _n_chunks(nr, max(1, CHUNK // width), min(nr, MAX_CHUNKS))
    rsize = (nr + nrc - 1) // nrc
    ncc = (nc + COLUMNS - 1) // COLUMNS
    part_mean = np.empty((nc, nrc))
    part_m2 = np.empty((nc, nrc))
    for t in prange(nrc * ncc):
        i = t // ncc
        k0 = (t - i * ncc) * COLUMNS
        kw = min(nc, k0 + COLUMNS) - k0
        r0 = i * rsize
        r1 = min(nr, r0 + rsize)
        rows = max(1, min(ROWS, CL_BLOCK // kw))
        mu = np.zeros(kw)
        m2 = np.zeros(kw)
        shift = np.zeros(kw, x.dtype)
        s = np.empty(kw, x.dtype)
        s2 = np.empty(kw, x.dtype)
        pilot = min(PILOT_ROWS, r1 - r0)
        for r in range(r0, r0 + pilot):
            xr = x[r, k0:k0 + kw]
            for k in range(kw):
                shift[k] += xr[k]
        for k in range(kw):
            shift[k] = shift[k] / pilot
        n = 0.0
        for rb in range(r0, r1, rows):
            re = min(r1, rb + rows)
            cnt = np.float64(re - rb)
            _cl_sums(x, rb, re, k0, shift, s, s2)
            redo = False
            for k in range(kw):
                redo |= _cancels(s[k], s2[k], cnt)
            if redo:
                for k in range(kw):
                    shift[k] = shift[k] + s[k] / cnt
                _cl_sums(x, rb, re, k0, shift, s, s2)
            for k in range(kw):
                mb, m2b = _block_moments(
                    np.float64(s[k]), np.float64(s2[k]), cnt, np.float64(shift[k])
                )
                _, mu[k], m2[k] = _chan(n, mu[k], m2[k], cnt, mb, m2b)
                shift[k] = mu[k]
            n += cnt
        part_mean[k0:k0 + kw, i] = mu
        part_m2[k0:k0 + kw, i] = m2
    for k in prange(nc):
        mean[k], var[k] = _merge_chunks(part_mean[k], part_m2[k], nr, rsize)


@kernel
def grad_sums_cf(dy, x, mean, sum_dy, sum_dy_xc):
    """Per-channel ``sum(dy)`` and ``sum(dy * (x - mean))`` over
    ``(A, C, B)`` views (float64 ``mean`` and results)."""
    na, nc, nb = x.shape
    m = na * nb
    nch = _n_chunks(m, CHUNK, MAX_CHUNKS)
    size = (m + nch - 1) // nch
    part_dy = np.empty((nc, nch))
    part_dyx = np.empty((nc, nch))
    for t in prange(nc * nch):
        c = t // nch
        k = t - c * nch
        part_dy[c, k], part_dyx[c, k] = _cf_grad_totals(
            dy, x, c, k * size, min(m, k * size + size), x.dtype.type(mean[c]))
    for c in prange(nc):
        s = 0.0
        sx = 0.0
        for k in range(nch):
            s += part_dy[c, k]
            sx += part_dyx[c, k]
        sum_dy[c] = s
        sum_dy_xc[c] = sx - (mean[c] - np.float64(x.dtype.type(mean[c]))) * s


@kernel
def grad_sums_cl(dy, x, mean, sum_dy, sum_dy_xc):
    """Per-column ``sum(dy)`` and ``sum(dy * (x - mean))`` over ``(R, C)``
    views (float64 ``mean`` and results)."""
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
        r1 = min(nr, i * rsize + rsize)
        rows = max(1, min(ROWS, CL_BLOCK // kw))
        s = np.zeros(kw)
        sx = np.zeros(kw)
        bs = np.empty(kw, x.dtype)
        bsx = np.empty(kw, x.dtype)
        ck = mean[k0:k0 + kw].astype(x.dtype)
        for r0 in range(i * rsize, r1, rows):
            bs[:] = 0
            bsx[:] = 0
            r = r0
            re = min(r1, r0 + rows)
            while r < re:
                if r + 2 <= re:
                    g0 = dy[r, k0:k0 + kw]
                    g1 = dy[r + 1, k0:k0 + kw]
                    x0 = x[r, k0:k0 + kw]
                    x1 = x[r + 1, k0:k0 + kw]
                    for k in range(kw):
                        bs[k] += g0[k] + g1[k]
                        bsx[k] += g0[k] * (x0[k] - ck[k]) + g1[k] * (x1[k] - ck[k])
                    r += 2
                else:
                    g0 = dy[r, k0:k0 + kw]
                    x0 = x[r, k0:k0 + kw]
                    for k in range(kw):
                        bs[k] += g0[k]
                        bsx[k] += g0[k] * (x0[k] - ck[k])
                    r += 1
            for k in range(kw):
                s[k] += bs[k]
                sx[k] += bsx[k]
        part_dy[i, k0:k0 + kw] = s
        part_dyx[i, k0:k0 + kw] = sx
    for k in prange(nc):
        s = 0.0
        sx = 0.0
        for i in range(nrc):
            s += part_dy[i, k]
            sx += part_dyx[i, k]
        sum_dy[k] = s
        sum_dy_xc[k] = sx - (mean[k] - np.float64(x.dtype.type(mean[k]))) * s


@kernel
def affine_cf(x, mean, var, weight, bias, eps, y):
    """``y = (x - mean) / sqrt(var + eps) * weight + bias`` per channel of
    ``(A, C, B)`` views; float64 ``mean``, ``var``, ``weight``, ``bias``
    (empty: ones, zeros)."""
    na, nc, nb = x.shape
    center, scale, shift = _affine_table(x, mean, var, weight, bias, eps)
    nq = (nb + CHUNK - 1) // CHUNK
    for t in prange(na * nc * nq):
        row = t // nq
        b0 = (t - row * nq) * CHUNK
        a = row // nc
        c = row - a * nc
        mc = center[c]
        sc = scale[c]
        sh = shift[c]
        xr = x[a, c, b0:b0 + CHUNK]
        yr = y[a, c, b0:b0 + CHUNK]
        for b in range(xr.size):
            yr[b] = (xr[b] - mc) * sc + sh


@kernel
def affine_cl(x, mean, var, weight, bias, eps, y):
    """As :func:`affine_cf`, over ``(R, C)`` views."""
    nr, nc = x.shape
    center, scale, shift = _affine_table(x, mean, var, weight, bias, eps)
    rows = max(1, CHUNK // nc)
    for t in prange((nr + rows - 1) // rows):
        for r in range(t * rows, min(nr, t * rows + rows)):
            xr = x[r]
            yr = y[r]
            for k in range(nc):
                yr[k] = (xr[k] - center[k]) * scale[k] + shift[k]


@kernel
def grad_input_cf(dy, x, mean, invstd, weight, sum_dy, sum_dy_xc, count, dx):
    """Training-mode ``dx`` per channel of ``(A, C, B)`` views, from the
    float64 statistics and the sums of :func:`grad_sums_cf`."""
    na, nc, nb = x.shape
    center, k_dy, k_x, k_0 = _grad_table(x, mean, invstd, weight, sum_dy, sum_dy_xc, count)
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
        gr = dy[a, c, b0:b0 + CHUNK]
        xr = x[a, c, b0:b0 + CHUNK]
        dr = dx[a, c, b0:b0 + CHUNK]
        for b in range(xr.size):
            dr[b] = g * gr[b] + h * (xr[b] - mc) + e


@kernel
def grad_input_cl(dy, x, mean, invstd, weight, sum_dy, sum_dy_xc, count, dx):
    """As :func:`grad_input_cf`, over ``(R, C)`` views."""
    nr, nc = x.shape
    center, k_dy, k_x, k_0 = _grad_table(x, mean, invstd, weight, sum_dy, sum_dy_xc, count)
    rows = max(1, CHUNK // nc)
    for t in prange((nr + rows - 1) // rows):
        for r in range(t * rows, min(nr, t * rows + rows)):
            gr = dy[r]
            xr = x[r]
            dr = dx[r]
            for k in range(nc):
                dr[k] = k_dy[k] * gr[k] + k_x[k] * (xr[k] - center[k]) + k_0[k]


@kernel
def forward_cf(x, weight, bias, eps, mean, var, y):
    """Training forward over an ``(A, C, B)`` view, a channel per task: its
    statistics, then its normalization while the channel is still in cache
    (one read of x from memory instead of two). For channels that fit in
    cache; float64 ``weight``/``bias`` (empty: ones, zeros), ``mean`` and
    ``var`` receive the statistics."""
    na, nc, nb = x.shape
    for c in prange(nc):
        mu, m2 = _cf_moments(x, c, 0, na * nb)
        mean[c] = mu
        var[c] = m2 / (na * nb)
        center, scale, shift = _affine_coeffs(x, c, mean, var, weight, bias, eps)
        for a in range(na):
            xr = x[a, c]
            yr = y[a, c]
            for b in range(nb):
                yr[b] = (xr[b] - center) * scale + shift


@kernel
def backward_cf(dy, x, mean, invstd, weight, count, sum_dy, sum_dy_xc, dx):
    """Training backward over ``(A, C, B)`` views, a channel per task: its
    sums, then its ``dx`` while the channel's x and dy are still in cache."""
    na, nc, nb = x.shape
    for c in prange(nc):
        center = x.dtype.type(mean[c])
        s, sx = _cf_grad_totals(dy, x, c, 0, na * nb, center)
        sum_dy[c] = s
        sum_dy_xc[c] = sx - (mean[c] - np.float64(center)) * s
        center, g, h, e = _grad_coeffs(x, c, mean, invstd, weight, sum_dy, sum_dy_xc, count)
        for a in range(na):
            gr = dy[a, c]
            xr = x[a, c]
            dr = dx[a, c]
            for b in range(nb):
                dr[b] = g * gr[b] + h * (xr[b] - center) + e


KERNELS = {
    "stats": {"cf": stats_cf, "cl": stats_cl},
    "grad_sums": {"cf": grad_sums_cf, "cl": grad_sums_cl},
    "affine": {"cf": affine_cf, "cl": affine_cl},
    "grad_input": {"cf": grad_input_cf, "cl": grad_input_cl},
    "fused_forward": {"cf": forward_cf},
    "fused_backward": {"cf": backward_cf},
    "update_running": {"any": update_running},
}


def dispatchers() -> list:
    """Every Numba dispatcher of the package (for cache and compile checks)."""
    return [d for group in KERNELS.values() for k in group.values() for d in k.dispatchers()]
