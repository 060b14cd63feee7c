"""Exact statistics of a task: blocks of shifted sums in the input's
dtype, merged in float64 with Chan et al.'s update on (count, mean, M2)."""

from __future__ import annotations

import numpy as np

from .._jit import helper
from ._tasks import BLOCK, CL_BLOCK, PILOT, PILOT_ROWS, ROWS


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


@helper(inline=True)
def _row_stats(c, s1, s2, n):
    """float64 (mean, biased variance) of a LayerNorm row of ``n`` values
    from the sums, in x's dtype, of their deviations from ``c`` and of
    their squares."""
    a = np.float64(s1)
    return np.float64(c) + a / n, max(0.0, (np.float64(s2) - a * a / n) / n)


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
def _merge_all(part_mean, part_m2, total, size, mean, var, tasks):
    """:func:`_merge_chunks` of every channel (its parts along axis 1)."""
    n_c = part_mean.shape[0]
    for c in range(n_c):
        mean[c], var[c] = _merge_chunks(part_mean[c], part_m2[c], total, size)
