"""Gradient-sum kernels: per-channel ``sum(dy)`` and
``sum(dy * (x - mean))`` over ``_cf``, ``walk`` and ``_cl`` views, and
their block-sum helpers.

Every gradient kernel takes a gate for a fused activation: ``gate`` holds
the forward's per-channel scale and shift (x's dtype, ``2 * C`` values;
empty for none) and ``dy`` counts only where ``(x - center) * scale +
shift > lo``, the forward's output before the activation (``lo`` is 0 for
ReLU, -inf for none). The forward wrote that gate, so the test repeats its
arithmetic exactly: no mask of x's size is kept.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .._jit import helper, kernel
from ._tasks import (BLOCK, CHUNK, CL_BLOCK, COLUMNS, MAX_CHUNKS, ROWS, _as_dtype,
                     _cl_row_chunks, _gate_of, _n_chunks, _walk_task, _walk_tasks)


@helper
def _cf_grad_sums(dy, x, c, j0, j1, center, gs, gh, lo):
    """Sums of ``dy`` and ``dy * (x - center)`` in x's dtype over values
    ``j0:j1`` of channel ``c`` (as :func:`_cf_sums`), dy gated by
    ``(gs, gh, lo)`` (see the module docstring)."""
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
        if lo == -np.inf:  # no gate: BatchNorm's loop as it was
            for q in range(run):
                g = gr[q]
                s += g
                sx += g * (xr[q] - center)
        else:
            for q in range(run):
                xc = xr[q] - center
                g = dy.dtype.type(0) if xc * gs + gh <= lo else gr[q]
                s += g
                sx += g * xc
        j += run
        a += 1
        b = 0
    return s, sx


@helper
def _cf_grad_totals(dy, x, c, j0, j1, center, gs, gh, lo):
    """float64 sums of ``dy`` and ``dy * (x - center)`` over values ``j0:j1``
    of channel ``c``, block by block (dy gated)."""
    s = 0.0
    sx = 0.0
    for j in range(j0, j1, BLOCK):
        bs, bsx = _cf_grad_sums(dy, x, c, j, min(j1, j + BLOCK), center, gs, gh, lo)
        s += bs
        sx += bsx
    return s, sx


@helper
def _cf_walk_grad_sums(dy, x, a0, a1, c0, off, center, gate, lo, s, sx):
    """float64 sums of ``dy`` and ``dy * (x - center)`` of channels
    ``c0:c0 + len(s)`` over samples ``a0:a1``, walking memory in order (see
    :func:`_cf_walk_moments`); ``center`` and ``gate`` at ``off + c``."""
    for _i in range(s.size):
        s[_i] = 0.0
    for _i in range(sx.size):
        sx[_i] = 0.0
    for a in range(a0, a1):
        for c in range(s.size):
            gr = dy[a, c0 + c]
            xr = x[a, c0 + c]
            mc = center[off + c0 + c]
            gs, gh = _gate_of(gate, off + c0 + c)
            bs = dy.dtype.type(0)
            bsx = bs
            for q in range(xr.size):
                xc = xr[q] - mc
                g = dy.dtype.type(0) if xc * gs + gh <= lo else gr[q]
                bs += g
                bsx += g * xc
            s[c] += bs
            sx[c] += bsx


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
def grad_sums_cf(dy, x, mean, gate, lo, sum_dy, sum_dy_xc, tasks):
    """Per-channel ``sum(dy)`` and ``sum(dy * (x - mean))`` over
    ``(P, A, C, B)`` views (float64 ``mean`` and results of length P * C),
    tasks as :func:`stats_cf`."""
    ns, na, nc, nb = x.shape
    m = na * nb
    nch = _n_chunks(m, CHUNK, MAX_CHUNKS)
    size = (m + nch - 1) // nch
    part_dy = np.empty((ns * nc, nch))
    part_dyx = np.empty((ns * nc, nch))
    center = _as_dtype(mean, x.dtype)
    n_t = ns * nc * nch
    ng = min(n_t, tasks)
    for grp in prange(ng):
        for t in range(grp * n_t // ng, (grp + 1) * n_t // ng):
            u = t // nch
            k = t - u * nch
            p = u // nc
            gs, gh = _gate_of(gate, u)
            part_dy[u, k], part_dyx[u, k] = _cf_grad_totals(
                dy[p], x[p], u - p * nc, k * size, min(m, k * size + size), center[u], gs, gh, lo)
    _sum_parts(part_dy, part_dyx, mean, center, sum_dy, sum_dy_xc)


@kernel
def grad_sums_walk(dy, x, mean, gate, lo, sum_dy, sum_dy_xc, tasks):
    """As :func:`grad_sums_cf`, tasks as :func:`stats_walk`."""
    ns, na, nc, nb = x.shape
    nch, spc, cw = _walk_tasks(na, nc, nb, x.itemsize)
    part_dy = np.empty((ns * nc, nch))
    part_dyx = np.empty((ns * nc, nch))
    center = _as_dtype(mean, x.dtype)
    per = nch * ((nc + cw - 1) // cw)
    n_t = ns * per
    ng = min(n_t, tasks)
    for grp in prange(ng):
        for t in range(grp * n_t // ng, (grp + 1) * n_t // ng):
            p = t // per
            k, a0, a1, c0, c1 = _walk_task(t - p * per, na, nc, spc, cw)
            s = np.empty(c1 - c0)
            sx = np.empty(s.size)
            _cf_walk_grad_sums(dy[p], x[p], a0, a1, c0, p * nc, center, gate, lo, s, sx)
            for j in range(s.size):
                part_dy[p * nc + c0 + j, k] = s[j]
                part_dyx[p * nc + c0 + j, k] = sx[j]
    _sum_parts(part_dy, part_dyx, mean, center, sum_dy, sum_dy_xc)


@helper
def _cl_grad_sums(dy, x, r0, r1, k0, off, mean, gate, lo, s, sx):
    """Add the float64 sums of ``dy`` and ``dy * (x - center)`` of columns
    ``k0:k0 + len(s)`` over rows ``r0:r1`` of ``(R, C)`` rows to ``s`` and
    ``sx``: blocks of rows summed in x's dtype; ``center`` (x's dtype),
    ``gate`` and ``mean`` at ``off + k``."""
    kw = s.size
    rows = max(1, min(ROWS, CL_BLOCK // kw))
    bs = np.empty(kw, x.dtype)
    bsx = np.empty(kw, x.dtype)
    ck = _as_dtype(mean[off + k0:off + k0 + kw], x.dtype)
    gs = np.zeros(kw, x.dtype)
    gh = np.zeros(kw, x.dtype)
    for k in range(kw):
        gs[k], gh[k] = _gate_of(gate, off + k0 + k)
    for rb in range(r0, r1, rows):
        for k in range(kw):
            bs[k] = 0
            bsx[k] = 0
        for r in range(rb, min(r1, rb + rows)):
            g0 = dy[r, k0:k0 + kw]
            x0 = x[r, k0:k0 + kw]
            if gate.size:
                for k in range(kw):
                    xc = x0[k] - ck[k]
                    g = dy.dtype.type(0) if xc * gs[k] + gh[k] <= lo else g0[k]
                    bs[k] += g
                    bsx[k] += g * xc
            else:  # no gate: its two loads per value cost 3% here (measured)
                for k in range(kw):
                    bs[k] += g0[k]
                    bsx[k] += g0[k] * (x0[k] - ck[k])
        for k in range(kw):
            s[k] += bs[k]
            sx[k] += bsx[k]


@kernel
def grad_sums_cl(dy, x, mean, gate, lo, sum_dy, sum_dy_xc, tasks):
    """Per-column ``sum(dy)`` and ``sum(dy * (x - mean))`` of each sample
    of ``(P, R, C)`` views (float64 ``mean`` and results of length P * C)."""
    ns, nr, nc = x.shape
    nrc, rsize = _cl_row_chunks(nr, nc)
    ncc = (nc + COLUMNS - 1) // COLUMNS
    part_dy = np.empty((nrc, ns * nc))
    part_dyx = np.empty((nrc, ns * nc))
    n_t = ns * nrc * ncc
    ng = min(n_t, tasks)
    for grp in prange(ng):
        for t in range(grp * n_t // ng, (grp + 1) * n_t // ng):
            p = t // (nrc * ncc)
            i = (t - p * nrc * ncc) // ncc
            k0 = (t - p * nrc * ncc - i * ncc) * COLUMNS
            kw = min(nc, k0 + COLUMNS) - k0
            s = np.zeros(kw)
            sx = np.zeros(kw)
            _cl_grad_sums(dy[p], x[p], i * rsize, min(nr, i * rsize + rsize), k0, p * nc, mean,
                          gate, lo, s, sx)
            for j in range(kw):
                part_dy[i, p * nc + k0 + j] = s[j]
                part_dyx[i, p * nc + k0 + j] = sx[j]
    n_k = ns * nc
    ng = min(n_k, tasks)
    for grp in prange(ng):
        for k in range(grp * n_k // ng, (grp + 1) * n_k // ng):
            sum_dy[k], sum_dy_xc[k] = _column_totals(part_dy, part_dyx, k, mean[k], x)


@helper(strict=True)
def _column_totals(part_dy, part_dyx, k, mean_k, x):
    """Column ``k``'s float64 sums over its row chunks (axis 0, in order),
    the second moved from ``mean_k`` rounded to x's dtype to ``mean_k``."""
    s = 0.0
    sx = 0.0
    for i in range(part_dy.shape[0]):
        s += part_dy[i, k]
        sx += part_dyx[i, k]
    return s, sx - (mean_k - np.float64(x.dtype.type(mean_k))) * s
