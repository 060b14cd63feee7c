"""Channel-per-task training kernels over ``_cf`` views: a channel's
statistics (or gradient sums) and its element-wise pass while it is still
in cache, in the chunks of the two-pass kernels (the same bits).

The loop that writes a channel's output also reads the task's next channel
(a sum nobody uses, kept in ``sink`` so that it stays): reading ahead from
memory overlaps the writes, where a pass that only writes would leave the
reads idle (measured, 2-vCPU Xeon, against the same kernels without it:
0.93-0.99 of their time forward, 0.81-0.99 backward, float32, channels of
6-64 KiB; see also :mod:`.rows`)."""

from __future__ import annotations

import numpy as np
from numba import prange

from .._jit import kernel
from ._moments import _cf_moments, _merge_chunks
from ._tasks import CHUNK, MAX_CHUNKS, _gate_of, _n_chunks
from .grad_sums import _cf_grad_totals
from .maps import _affine_coeffs, _grad_coeffs, _group_sums


@kernel
def forward_cf(x, parts, weight, bias, eps, lo, mean, var, gate, y, tasks):
    """Training forward over a ``(P, A, C, B)`` view, a channel (of a part,
    see :func:`.stats_cf`) per task: its statistics, then its normalization
    while the channel is still in cache (one read of x from memory instead
    of two). For channels that fit in cache and runs of :data:`RUN_BYTES`
    or more; the statistics are summed in the chunks of :func:`stats_cf`,
    so the results are the same bits. ``mean`` and ``var`` receive the
    statistics. A run of B values holds ``parts`` parameter channels of
    ``B / parts`` values each, statistics channel ``u``'s ``j``-th using
    ``weight[u * parts + j]`` (BatchNorm: 1; GroupNorm: the channels of a
    group). ``lo`` and ``gate``: the fused activation, as
    :func:`.affine_cf`."""
    ns, na, nc, nb = x.shape
    m = na * nb
    nch = _n_chunks(m, CHUNK, MAX_CHUNKS)
    size = (m + nch - 1) // nch
    run = nb // parts
    n_c = ns * nc
    ng = min(n_c, tasks)
    sink = np.zeros(ng, x.dtype)
    for grp in prange(ng):
        part_mean = np.empty(nch)
        part_m2 = np.empty(nch)
        u1 = (grp + 1) * n_c // ng
        touched = x.dtype.type(0)
        for u in range(grp * n_c // ng, u1):
            p = u // nc
            c = u - p * nc
            for k in range(nch):
                part_mean[k], part_m2[k] = _cf_moments(x[p], c, k * size, min(m, k * size + size))
            mean[u], var[u] = _merge_chunks(part_mean, part_m2, m, size)
            un = min(u + 1, u1 - 1)
            pn = un // nc
            cn = un - pn * nc
            for j in range(parts):
                q = u * parts + j
                center, scale, shift = _affine_coeffs(x, u, q, mean, var, weight, bias, eps)
                if gate.size:
                    gate[q] = scale
                    gate[gate.size // 2 + q] = shift
                for a in range(na):
                    xr = x[p, a, c, j * run:j * run + run]
                    xn = x[pn, a, cn, j * run:j * run + run]
                    yr = y[p, a, c, j * run:j * run + run]
                    if lo == -np.inf:  # no activation: no test (see affine_cf)
                        for b in range(run):
                            yr[b] = (xr[b] - center) * scale + shift
                            touched += xn[b]
                    else:
                        for b in range(run):
                            v = (xr[b] - center) * scale + shift
                            yr[b] = lo if v < lo else v
                            touched += xn[b]
        sink[grp] = touched


@kernel
def backward_cf(dy, x, parts, mean, invstd, weight, count, gate, lo, sum_dy, sum_dy_xc, dx,
                tasks):
    """Training backward over ``(P, A, C, B)`` views, a channel per task:
    its sums (in the chunks of :func:`grad_sums_cf`: the same bits), then
    its ``dx`` while the channel's x and dy are still in cache. With
    ``parts`` > 1 (and A = 1) a run holds that many parameter channels of
    B / parts values, each with its own sums (``sum_dy[u * parts + j]``, as
    :func:`grad_sums_cf` over the per-parameter view) and coefficients
    (:func:`._grad_coeffs`)."""
    ns, na, nc, nb = x.shape
    run = nb // parts
    m = na * run
    nch = _n_chunks(m, CHUNK, MAX_CHUNKS)
    size = (m + nch - 1) // nch
    n_c = ns * nc
    ng = min(n_c, tasks)
    sink = np.zeros(ng, x.dtype)
    for grp in prange(ng):
        u1 = (grp + 1) * n_c // ng
        touched = x.dtype.type(0)
        for u in range(grp * n_c // ng, u1):
            p = u // nc
            c = u - p * nc
            un = min(u + 1, u1 - 1)
            pn = un // nc
            cn = un - pn * nc
            center = x.dtype.type(mean[u])
            for j in range(parts):
                q = u * parts + j
                gs, gh = _gate_of(gate, q)
                s = 0.0
                sx = 0.0
                for k in range(nch):
                    bs, bsx = _cf_grad_totals(dy[p], x[p], c, j * run + k * size,
                                              j * run + min(m, k * size + size), center, gs, gh, lo)
                    s += bs
                    sx += bsx
                sum_dy[q] = s
                sum_dy_xc[q] = sx - (mean[u] - np.float64(center)) * s
            w1, w2 = _group_sums(u * parts, parts, weight, sum_dy, sum_dy_xc)
            for j in range(parts):
                q = u * parts + j
                center, g, h, e = _grad_coeffs(x, u, q, w1, w2, mean, invstd, weight, count)
                gs, gh = _gate_of(gate, q)
                for a in range(na):
                    gr = dy[p, a, c, j * run:j * run + run]
                    xr = x[p, a, c, j * run:j * run + run]
                    dr = dx[p, a, c, j * run:j * run + run]
                    gn = dy[pn, a, cn, j * run:j * run + run]
                    xn = x[pn, a, cn, j * run:j * run + run]
                    for b in range(run):
                        xc = xr[b] - center
                        gb = dy.dtype.type(0) if xc * gs + gh <= lo else gr[b]
                        dr[b] = g * gb + h * xc + e
                        touched += gn[b] + xn[b]
        sink[grp] = touched
