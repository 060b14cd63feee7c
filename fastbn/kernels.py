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

from ._jit import helper, kernel, serial_kernel

#: Values per task (per channel for ``_cf``, in all for ``_cl``).
CHUNK = 1 << 15
#: Most tasks per channel (``_cf``) or row chunks (``_cl``); bounds the
#: partials at ``O(MAX_CHUNKS * C)``.
MAX_CHUNKS = 64
#: Values per two-pass block: small enough that the second pass reads cache.
BLOCK = 4096
#: Values per ``_cl`` reduction task: more than ``CHUNK``, since each
#: task's result costs a float64 merge per column afterwards (at 32K values
#: the merges of 64 row chunks x 256 columns took a third of the statistics'
#: time).
CL_CHUNK = 1 << 17
#: Channels per ``_cl`` task.
COLUMNS = 512
#: Most rows per ``_cl`` block: bounds the terms a block accumulator sums.
ROWS = 256
#: Values per ``_cl`` block: large, so that the per-channel float64 merge
#: after each block costs little next to the block's streaming sums.
CL_BLOCK = 1 << 16
#: ``_cf`` reductions over runs (H*W values) shorter than this walk memory in
#: order, all channels of a sample after another: a walk channel by channel
#: would jump a whole sample after each run, and a short run ends before
#: the hardware prefetchers have caught on (they stop at page boundaries).
#: The choice depends on the shape only.
RUN_BYTES = 4096
#: Contiguous bytes per sample of one task of such a walk.
WALK_BYTES = 1 << 14
#: Values (``_cf``) or rows (``_cl``) a task averages for its first shift.
PILOT = 64
PILOT_ROWS = 16


@helper(inline=True)
def _n_chunks(total, per_chunk, most):
    n = (total + per_chunk - 1) // per_chunk
    return max(1, min(n, most))


@helper(inline=True)
def _walk_tasks(na, nc, nb, itemsize):
    """How a walk in memory order over an ``(A, C, B)`` view is cut into
    tasks: ``(sample chunks, samples per chunk, channels per group)``. A
    task sums at least :data:`BLOCK` values of each of its channels (fixed
    per-channel costs stay small) over runs of :data:`WALK_BYTES` or more
    per sample (so that memory is still streamed); no chunk is empty."""
    nch = _n_chunks(na, max(1, BLOCK // nb), MAX_CHUNKS)
    spc = (na + nch - 1) // nch
    cw = min(nc, max(1, WALK_BYTES // (nb * itemsize)))
    return (na + spc - 1) // spc, spc, cw


@helper(inline=True)
def _as_dtype(v, dtype):
    """``v.astype(dtype)`` as a plain loop (cheaper to compile)."""
    out = np.empty(v.size, dtype)
    for i in range(v.size):
        out[i] = v[i]
    return out


@helper(inline=True)
def _cf_piece(t, nc, nq):
    """(sample, channel, first value) of element-wise task ``t`` over an
    ``(A, C, B)`` view whose rows are cut into ``nq`` pieces of ``CHUNK``."""
    row = t // nq
    a = row // nc
    return a, row - a * nc, (t - row * nq) * CHUNK


@helper(strict=True)
def _chan(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """Merge (count, mean, M2) of two disjoint sets (Chan et al., 1979)."""
    if n_b == 0.0:
        return n_a, mean_a, m2_a
    n = n_a + n_b
    frac = n_b / n
    delta = mean_b - mean_a
    return n, mean_a + delta * frac, m2_a + m2_b + delta * delta * n_a * frac


@helper(strict=True)
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


@helper(strict=True)
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
    A row at a time into fresh accumulators (which LLVM knows alias
    nothing): one stream through memory, which a core reads faster than
    several rows in step (measured in memory: 3.6 against 2.4 values/ns on
    an AMD EPYC, 4 rows a step)."""
    kw = center.size
    c = np.empty(kw, x.dtype)
    a1 = np.zeros(kw, x.dtype)
    a2 = np.zeros(kw, x.dtype)
    for k in range(kw):
        c[k] = center[k]
    for r in range(r0, r1):
        xr = x[r, k0:k0 + kw]
        for k in range(kw):
            d = xr[k] - c[k]
            a1[k] += d
            a2[k] += d * d
    for k in range(kw):
        s[k] = a1[k]
        s2[k] = a2[k]


@helper(inline=True)
def _affine_coeffs(x, c, mean, var, weight, bias, eps):
    """Channel ``c``'s ``(center, scale, shift)`` in x's dtype, for
    ``y = (x - center) * scale + shift``: the float64 mean's rounding to the
    center is moved into the shift. Empty ``weight``/``bias`` mean ones and
    zeros."""
    scale = 1.0 / np.sqrt(var[c] + eps) if var[c] + eps > 0.0 else 0.0  # eps = 0, constant
    if weight.size:
        scale *= weight[c]
    shift = bias[c] if bias.size else 0.0
    center = x.dtype.type(mean[c])
    shift -= (mean[c] - np.float64(center)) * scale
    return center, x.dtype.type(scale), x.dtype.type(shift)


@helper(inline=True)
def _grad_coeffs(x, c, mean, invstd, weight, sum_dy, sum_dy_xc, m):
    """Channel ``c``'s ``(center, k_dy, k_x, k_0)`` in x's dtype, for the
    training gradient ``dx = k_dy * dy + k_x * (x - center) + k_0``."""
    k_dy = invstd[c] * (weight[c] if weight.size else 1.0)
    k_x = -k_dy * invstd[c] * invstd[c] * sum_dy_xc[c] / m
    center = x.dtype.type(mean[c])
    k_0 = -k_dy * sum_dy[c] / m - (mean[c] - np.float64(center)) * k_x
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
        center[c], scale[c], shift[c] = _affine_coeffs(x, c, mean, var, weight, bias, eps)
    return center, scale, shift


@helper(inline=True)
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


@serial_kernel
def update_running(mean, var, unbias, momentum, running_mean, running_var, tasks):
    """Exponential update of the running statistics, the variance times
    ``unbias`` (``m / (m - 1)`` or 1), only if every batch statistic is
    finite; returns whether they were."""
    for c in range(mean.size):
        if not (np.isfinite(mean[c]) and np.isfinite(var[c])):
            return False
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


@helper(strict=True)
def _fold(mu, m2, n, t1, t2, nt, shift):
    """Merge, per column, the float64 sums ``t1``, ``t2`` of ``nt`` deviations
    from ``shift`` into the (mean, M2) ``mu``, ``m2`` of ``n`` earlier values
    (Chan et al.), and clear the sums."""
    if nt == 0.0:
        return
    for k in range(mu.size):
        mb, m2b = _block_moments(t1[k], t2[k], nt, np.float64(shift[k]))
        _, mu[k], m2[k] = _chan(n, mu[k], m2[k], nt, mb, m2b)
        t1[k] = 0.0
        t2[k] = 0.0


@helper
def _cl_moments(x, r0, r1, k0, mu, m2):
    """(mean, M2) of columns ``k0:k0 + len(mu)`` over rows ``r0:r1`` into
    ``mu`` and ``m2``. Blocks of shifted sums in x's dtype (the shift: the
    mean of a short pilot) are added up in float64 while the shift stays, so
    a block costs two adds per column; a block whose sums lost more than 2
    bits to cancellation moves the shift to its own mean, the sums so far
    being folded into ``mu``, ``m2`` with Chan's formula first."""
    kw = mu.size
    rows = max(1, min(ROWS, CL_BLOCK // kw))
    shift = np.zeros(kw, x.dtype)
    s = np.empty(kw, x.dtype)
    s2 = np.empty(kw, x.dtype)
    t1 = np.zeros(kw)
    t2 = np.zeros(kw)
    for _i in range(mu.size):
        mu[_i] = 0.0
    for _i in range(m2.size):
        m2[_i] = 0.0
    pilot = min(PILOT_ROWS, r1 - r0)
    for r in range(r0, r0 + pilot):
        xr = x[r, k0:k0 + kw]
        for k in range(kw):
            shift[k] += xr[k]
    for k in range(kw):
        shift[k] = shift[k] / pilot
    n = 0.0
    nt = 0.0
    for rb in range(r0, r1, rows):
        re = min(r1, rb + rows)
        cnt = np.float64(re - rb)
        _cl_sums(x, rb, re, k0, shift, s, s2)
        redo = False
        for k in range(kw):
            redo |= _cancels(s[k], s2[k], cnt)
        if redo:
            _fold(mu, m2, n, t1, t2, nt, shift)
            n += nt
            nt = 0.0
            for k in range(kw):
                shift[k] = shift[k] + s[k] / cnt
            _cl_sums(x, rb, re, k0, shift, s, s2)
        for k in range(kw):
            t1[k] += s[k]
            t2[k] += s2[k]
        nt += cnt
    _fold(mu, m2, n, t1, t2, nt, shift)


@helper
def _run_sums(xr, center):
    """Sums of ``d`` and ``d**2``, ``d = xr - center``, in xr's dtype."""
    s = center - center
    s2 = s
    for q in range(xr.size):
        d = xr[q] - center
        s += d
        s2 += d * d
    return s, s2


@helper(inline=True)
def _walk_task(t, na, nc, spc, cw):
    """Task ``t`` of a walk (see :func:`_walk_tasks`): its sample chunk
    ``k``, samples ``a0:a1`` and channels ``c0:c1``."""
    ncg = (nc + cw - 1) // cw
    k = t // ncg
    c0 = (t - k * ncg) * cw
    return k, k * spc, min(na, k * spc + spc), c0, min(nc, c0 + cw)


@helper
def _cf_walk_moments(x, a0, a1, c0, mu, m2):
    """(mean, M2) of channels ``c0:c0 + len(mu)`` over samples ``a0:a1`` of
    an ``(A, C, B)`` view (runs of B values shorter than :data:`BLOCK`),
    walking memory in order: each run is summed about its channel's shift
    in x's dtype, and the runs are added up in float64 while the shift
    stays; a run whose sums lost more than 2 bits to cancellation moves its
    channel's shift to its own mean (as :func:`_cl_moments`)."""
    nc, nb = mu.size, x.shape[2]
    shift = np.empty(nc, x.dtype)
    t1 = np.zeros(nc)
    t2 = np.zeros(nc)
    n = np.zeros(nc)
    nt = 0.0
    pilot = min(PILOT, nb)
    for c in range(nc):
        shift[c] = 0.0
        mu[c] = 0.0
        m2[c] = 0.0
    cnt = np.float64(nb)
    for a in range(a0, a1):
        for c in range(nc):
            xr = x[a, c0 + c]
            if a == a0:  # the first run of a channel: shift to the mean of its pilot
                shift[c] = x.dtype.type(_run_sums(xr[:pilot], shift[c])[0] / pilot)
            for _ in range(2):  # a second time only after the shift moved
                s, s2 = _run_sums(xr, shift[c])
                if not _cancels(s, s2, cnt):
                    break
                mb, m2b = _block_moments(t1[c], t2[c], nt - n[c], np.float64(shift[c]))
                n[c], mu[c], m2[c] = _chan(n[c], mu[c], m2[c], nt - n[c], mb, m2b)
                t1[c] = 0.0
                t2[c] = 0.0
                shift[c] = x.dtype.type(shift[c] + s / cnt)
            t1[c] += s
            t2[c] += s2
        nt += cnt
    for c in range(nc):
        if nt > n[c]:
            mb, m2b = _block_moments(t1[c], t2[c], nt - n[c], np.float64(shift[c]))
            _, mu[c], m2[c] = _chan(n[c], mu[c], m2[c], nt - n[c], mb, m2b)


@helper
def _cf_walk_grad_sums(dy, x, a0, a1, c0, center, s, sx):
    """float64 sums of ``dy`` and ``dy * (x - center)`` of channels
    ``c0:c0 + len(s)`` over samples ``a0:a1``, walking memory in order (see
    :func:`_cf_walk_moments`)."""
    for _i in range(s.size):
        s[_i] = 0.0
    for _i in range(sx.size):
        sx[_i] = 0.0
    for a in range(a0, a1):
        for c in range(s.size):
            gr = dy[a, c0 + c]
            xr = x[a, c0 + c]
            mc = center[c0 + c]
            bs = mc - mc
            bsx = bs
            for q in range(xr.size):
                bs += gr[q]
                bsx += gr[q] * (xr[q] - mc)
            s[c] += bs
            sx[c] += bsx


@helper
def _merge_all(part_mean, part_m2, total, size, mean, var, tasks):
    """:func:`_merge_chunks` of every channel (its parts along axis 1)."""
    n_c = part_mean.shape[0]
    for c in range(n_c):
        mean[c], var[c] = _merge_chunks(part_mean[c], part_m2[c], total, size)


@kernel
def stats_cf(x, mean, var, tasks):
    """Per-channel mean and biased variance of an ``(A, C, B)`` view into
    float64 ``mean`` and ``var``, a task per chunk of a channel."""
    na, nc, nb = x.shape
    m = na * nb
    nch = _n_chunks(m, CHUNK, MAX_CHUNKS)
    size = (m + nch - 1) // nch
    part_mean = np.empty((nc, nch))
    part_m2 = np.empty((nc, nch))
    n_t = nc * nch
    ng = min(n_t, tasks)
    for grp in prange(ng):
        for t in range(grp * n_t // ng, (grp + 1) * n_t // ng):
            c = t // nch
            k = t - c * nch
            part_mean[c, k], part_m2[c, k] = _cf_moments(x, c, k * size, min(m, k * size + size))
    _merge_all(part_mean, part_m2, m, size, mean, var, tasks)


@kernel
def stats_walk(x, mean, var, tasks):
    """As :func:`stats_cf`, for runs shorter than :data:`RUN_BYTES`: a task
    per chunk of samples and group of channels, walking memory in order."""
    na, nc, nb = x.shape
    nch, spc, cw = _walk_tasks(na, nc, nb, x.itemsize)
    part_mean = np.empty((nc, nch))
    part_m2 = np.empty((nc, nch))
    n_t = nch * ((nc + cw - 1) // cw)
    ng = min(n_t, tasks)
    for grp in prange(ng):
        for t in range(grp * n_t // ng, (grp + 1) * n_t // ng):
            k, a0, a1, c0, c1 = _walk_task(t, na, nc, spc, cw)
            mu = np.empty(c1 - c0)
            m2 = np.empty(mu.size)
            _cf_walk_moments(x, a0, a1, c0, mu, m2)
            for j in range(mu.size):
                part_mean[c0 + j, k] = mu[j]
                part_m2[c0 + j, k] = m2[j]
    _merge_all(part_mean, part_m2, na * nb, spc * nb, mean, var, tasks)


@kernel
def stats_cl(x, mean, var, tasks):
    """Per-column mean and biased variance of an ``(R, C)`` view into float64
    ``mean`` and ``var``."""
    nr, nc = x.shape
    width = min(nc, COLUMNS)
    nrc = _n_chunks(nr, max(1, CL_CHUNK // width), min(nr, MAX_CHUNKS))
    rsize = (nr + nrc - 1) // nrc
    ncc = (nc + COLUMNS - 1) // COLUMNS
    part_mean = np.empty((nc, nrc))
    part_m2 = np.empty((nc, nrc))
    n_t = nrc * ncc
    ng = min(n_t, tasks)
    for grp in prange(ng):
        for t in range(grp * n_t // ng, (grp + 1) * n_t // ng):
            i = t // ncc
            k0 = (t - i * ncc) * COLUMNS
            kw = min(nc, k0 + COLUMNS) - k0
            r0 = i * rsize
            r1 = min(nr, r0 + rsize)
            mu = np.empty(kw)
            m2 = np.empty(kw)
            _cl_moments(x, r0, r1, k0, mu, m2)
            for j in range(kw):
                part_mean[k0 + j, i] = mu[j]
                part_m2[k0 + j, i] = m2[j]
    n_k = nc
    ng = min(n_k, tasks)
    for grp in prange(ng):
        for k in range(grp * n_k // ng, (grp + 1) * n_k // ng):
            mean[k], var[k] = _merge_chunks(part_mean[k], part_m2[k], nr, rsize)


@kernel
def grad_sums_cf(dy, x, mean, sum_dy, sum_dy_xc, tasks):
    """Per-channel ``sum(dy)`` and ``sum(dy * (x - mean))`` over
    ``(A, C, B)`` views (float64 ``mean`` and results), tasks as
    :func:`stats_cf`."""
    na, nc, nb = x.shape
    m = na * nb
    nch = _n_chunks(m, CHUNK, MAX_CHUNKS)
    size = (m + nch - 1) // nch
    part_dy = np.empty((nc, nch))
    part_dyx = np.empty((nc, nch))
    center = _as_dtype(mean, x.dtype)
    n_t = nc * nch
    ng = min(n_t, tasks)
    for grp in prange(ng):
        for t in range(grp * n_t // ng, (grp + 1) * n_t // ng):
            c = t // nch
            k = t - c * nch
            part_dy[c, k], part_dyx[c, k] = _cf_grad_totals(
                dy, x, c, k * size, min(m, k * size + size), center[c])
    _sum_parts(part_dy, part_dyx, mean, center, sum_dy, sum_dy_xc)


@kernel
def grad_sums_walk(dy, x, mean, sum_dy, sum_dy_xc, tasks):
    """As :func:`grad_sums_cf`, tasks as :func:`stats_walk`."""
    na, nc, nb = x.shape
    nch, spc, cw = _walk_tasks(na, nc, nb, x.itemsize)
    part_dy = np.empty((nc, nch))
    part_dyx = np.empty((nc, nch))
    center = _as_dtype(mean, x.dtype)
    n_t = nch * ((nc + cw - 1) // cw)
    ng = min(n_t, tasks)
    for grp in prange(ng):
        for t in range(grp * n_t // ng, (grp + 1) * n_t // ng):
            k, a0, a1, c0, c1 = _walk_task(t, na, nc, spc, cw)
            s = np.empty(c1 - c0)
            sx = np.empty(s.size)
            _cf_walk_grad_sums(dy, x, a0, a1, c0, center, s, sx)
            for j in range(s.size):
                part_dy[c0 + j, k] = s[j]
                part_dyx[c0 + j, k] = sx[j]
    _sum_parts(part_dy, part_dyx, mean, center, sum_dy, sum_dy_xc)


@helper
def _sum_parts(part_dy, part_dyx, mean, center, sum_dy, sum_dy_xc):
    """Per channel, the sums of the parts (axis 1, in order), the second
    moved from ``center`` (x's dtype) to the float64 ``mean``."""
    for c in range(part_dy.shape[0]):
        s = 0.0
        sx = 0.0
        for k in range(part_dy.shape[1]):
            s += part_dy[c, k]
            sx += part_dyx[c, k]
        sum_dy[c] = s
        sum_dy_xc[c] = sx - (mean[c] - np.float64(center[c])) * s


@kernel
def grad_sums_cl(dy, x, mean, sum_dy, sum_dy_xc, tasks):
    """Per-column ``sum(dy)`` and ``sum(dy * (x - mean))`` over ``(R, C)``
    views (float64 ``mean`` and results)."""
    nr, nc = x.shape
    width = min(nc, COLUMNS)
    nrc = _n_chunks(nr, max(1, CL_CHUNK // width), min(nr, MAX_CHUNKS))
    rsize = (nr + nrc - 1) // nrc
    ncc = (nc + COLUMNS - 1) // COLUMNS
    part_dy = np.empty((nrc, nc))
    part_dyx = np.empty((nrc, nc))
    n_t = nrc * ncc
    ng = min(n_t, tasks)
    for grp in prange(ng):
        for t in range(grp * n_t // ng, (grp + 1) * n_t // ng):
            i = t // ncc
            k0 = (t - i * ncc) * COLUMNS
            kw = min(nc, k0 + COLUMNS) - k0
            r1 = min(nr, i * rsize + rsize)
            rows = max(1, min(ROWS, CL_BLOCK // kw))
            s = np.zeros(kw)
            sx = np.zeros(kw)
            bs = np.empty(kw, x.dtype)
            bsx = np.empty(kw, x.dtype)
            ck = _as_dtype(mean[k0:k0 + kw], x.dtype)
            for r0 in range(i * rsize, r1, rows):
                for k in range(kw):
                    bs[k] = 0
                    bsx[k] = 0
                for r in range(r0, min(r1, r0 + rows)):
                    g0 = dy[r, k0:k0 + kw]
                    x0 = x[r, k0:k0 + kw]
                    for k in range(kw):
                        bs[k] += g0[k]
                        bsx[k] += g0[k] * (x0[k] - ck[k])
                for k in range(kw):
                    s[k] += bs[k]
                    sx[k] += bsx[k]
            for j in range(kw):
                part_dy[i, k0 + j] = s[j]
                part_dyx[i, k0 + j] = sx[j]
    n_k = nc
    ng = min(n_k, tasks)
    for grp in prange(ng):
        for k in range(grp * n_k // ng, (grp + 1) * n_k // ng):
            s = 0.0
            sx = 0.0
            for i in range(nrc):
                s += part_dy[i, k]
                sx += part_dyx[i, k]
            sum_dy[k] = s
            sum_dy_xc[k] = sx - (mean[k] - np.float64(x.dtype.type(mean[k]))) * s


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
def grad_input_cf(dy, x, mean, invstd, weight, sum_dy, sum_dy_xc, count, dx, tasks):
    """Training-mode ``dx`` per channel of ``(A, C, B)`` views, from the
    float64 statistics and the sums of :func:`grad_sums_cf`."""
    na, nc, nb = x.shape
    center, k_dy, k_x, k_0 = _grad_table(x, mean, invstd, weight, sum_dy, sum_dy_xc, count)
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
def grad_input_cl(dy, x, mean, invstd, weight, sum_dy, sum_dy_xc, count, dx, tasks):
    """As :func:`grad_input_cf`, over ``(R, C)`` views."""
    nr, nc = x.shape
    center, k_dy, k_x, k_0 = _grad_table(x, mean, invstd, weight, sum_dy, sum_dy_xc, count)
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


@kernel
def forward_cf(x, weight, bias, eps, mean, var, y, tasks):
    """Training forward over an ``(A, C, B)`` view, a channel per task: its
    statistics, then its normalization while the channel is still in cache
    (one read of x from memory instead of two). For channels that fit in
    cache and runs of :data:`RUN_BYTES` or more; the statistics are summed
    in the chunks of :func:`stats_cf`, so the results are the same bits.
    ``mean`` and ``var`` receive the statistics."""
    na, nc, nb = x.shape
    m = na * nb
    nch = _n_chunks(m, CHUNK, MAX_CHUNKS)
    size = (m + nch - 1) // nch
    n_c = nc
    ng = min(n_c, tasks)
    for grp in prange(ng):
        part_mean = np.empty(nch)
        part_m2 = np.empty(nch)
        for c in range(grp * n_c // ng, (grp + 1) * n_c // ng):
            for k in range(nch):
                part_mean[k], part_m2[k] = _cf_moments(x, c, k * size, min(m, k * size + size))
            mean[c], var[c] = _merge_chunks(part_mean, part_m2, m, size)
            center, scale, shift = _affine_coeffs(x, c, mean, var, weight, bias, eps)
            for a in range(na):
                xr = x[a, c]
                yr = y[a, c]
                for b in range(nb):
                    yr[b] = (xr[b] - center) * scale + shift


@kernel
def backward_cf(dy, x, mean, invstd, weight, count, sum_dy, sum_dy_xc, dx, tasks):
    """Training backward over ``(A, C, B)`` views, a channel per task: its
    sums (in the chunks of :func:`grad_sums_cf`: the same bits), then its
    ``dx`` while the channel's x and dy are still in cache."""
    na, nc, nb = x.shape
    m = na * nb
    nch = _n_chunks(m, CHUNK, MAX_CHUNKS)
    size = (m + nch - 1) // nch
    n_c = nc
    ng = min(n_c, tasks)
    for grp in prange(ng):
        for c in range(grp * n_c // ng, (grp + 1) * n_c // ng):
            center = x.dtype.type(mean[c])
            s = 0.0
            sx = 0.0
            for k in range(nch):
                bs, bsx = _cf_grad_totals(dy, x, c, k * size, min(m, k * size + size), center)
                s += bs
                sx += bsx
            sum_dy[c] = s
            sum_dy_xc[c] = sx - (mean[c] - np.float64(center)) * s
            center, g, h, e = _grad_coeffs(x, c, mean, invstd, weight, sum_dy, sum_dy_xc, count)
            for a in range(na):
                gr = dy[a, c]
                xr = x[a, c]
                dr = dx[a, c]
                for b in range(nb):
                    dr[b] = g * gr[b] + h * (xr[b] - center) + e


#: Kernels by step and memory order: "cf", "walk" (channels first with runs
#: shorter than RUN_BYTES: only the reductions differ) and "cl".
KERNELS = {
    "stats": {"cf": stats_cf, "walk": stats_walk, "cl": stats_cl},
    "grad_sums": {"cf": grad_sums_cf, "walk": grad_sums_walk, "cl": grad_sums_cl},
    "affine": {"cf": affine_cf, "walk": affine_cf, "cl": affine_cl},
    "grad_input": {"cf": grad_input_cf, "walk": grad_input_cf, "cl": grad_input_cl},
    "fused_forward": {"cf": forward_cf},
    "fused_backward": {"cf": backward_cf},
    "update_running": {"any": update_running},
}


def dispatchers() -> list:
    """Every Numba dispatcher of the package (for cache and compile checks)."""
    every = {id(k): k for group in KERNELS.values() for k in group.values()}
    return [d for k in every.values() for d in k.dispatchers()]
