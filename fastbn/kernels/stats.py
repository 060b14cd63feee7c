"""Statistics kernels: per-channel mean and biased variance of ``_cf``
views (a task per chunk of a channel), ``walk`` (in memory order, for short
runs) and ``_cl`` views."""

from __future__ import annotations

import numpy as np
from numba import prange

from .._jit import kernel
from ._moments import _cf_moments, _cf_walk_moments, _cl_moments, _merge_all, _merge_chunks
from ._tasks import (CHUNK, COLUMNS, MAX_CHUNKS, _cl_row_chunks, _n_chunks, _walk_task,
                     _walk_tasks)


@kernel
def stats_cf(x, mean, var, tasks):
    """Per-channel mean and biased variance of each of the P parts of a
    ``(P, A, C, B)`` view (BatchNorm: P = 1; ghost batches: a part per
    chunk of samples) into float64 ``mean`` and ``var`` of length P * C, a
    task per chunk of a channel."""
    ns, na, nc, nb = x.shape
    m = na * nb
    nch = _n_chunks(m, CHUNK, MAX_CHUNKS)
    size = (m + nch - 1) // nch
    part_mean = np.empty((ns * nc, nch))
    part_m2 = np.empty((ns * nc, nch))
    n_t = ns * nc * nch
    ng = min(n_t, tasks)
    for grp in prange(ng):
        for t in range(grp * n_t // ng, (grp + 1) * n_t // ng):
            u = t // nch
            k = t - u * nch
            p = u // nc
            part_mean[u, k], part_m2[u, k] = _cf_moments(x[p], u - p * nc, k * size,
                                                         min(m, k * size + size))
    _merge_all(part_mean, part_m2, m, size, mean, var, tasks)


@kernel
def stats_walk(x, mean, var, tasks):
    """As :func:`stats_cf`, for runs shorter than :data:`RUN_BYTES`: a task
    per chunk of samples and group of channels, walking memory in order."""
    ns, na, nc, nb = x.shape
    nch, spc, cw = _walk_tasks(na, nc, nb, x.itemsize)
    part_mean = np.empty((ns * nc, nch))
    part_m2 = np.empty((ns * nc, nch))
    per = nch * ((nc + cw - 1) // cw)
    n_t = ns * per
    ng = min(n_t, tasks)
    for grp in prange(ng):
        for t in range(grp * n_t // ng, (grp + 1) * n_t // ng):
            p = t // per
            k, a0, a1, c0, c1 = _walk_task(t - p * per, na, nc, spc, cw)
            mu = np.empty(c1 - c0)
            m2 = np.empty(mu.size)
            _cf_walk_moments(x[p], a0, a1, c0, mu, m2)
            for j in range(mu.size):
                part_mean[p * nc + c0 + j, k] = mu[j]
                part_m2[p * nc + c0 + j, k] = m2[j]
    _merge_all(part_mean, part_m2, na * nb, spc * nb, mean, var, tasks)


@kernel
def stats_cl(x, mean, var, tasks):
    """Per-column mean and biased variance of each sample of a ``(P, R, C)``
    view (P samples of R rows) into float64 ``mean`` and ``var`` of length
    P * C (BatchNorm: P = 1; InstanceNorm and GroupNorm: a sample each)."""
    ns, nr, nc = x.shape
    nrc, rsize = _cl_row_chunks(nr, nc)
    ncc = (nc + COLUMNS - 1) // COLUMNS
    part_mean = np.empty((ns * nc, nrc))
    part_m2 = np.empty((ns * nc, nrc))
    n_t = ns * nrc * ncc
    ng = min(n_t, tasks)
    for grp in prange(ng):
        for t in range(grp * n_t // ng, (grp + 1) * n_t // ng):
            p = t // (nrc * ncc)
            i = (t - p * nrc * ncc) // ncc
            k0 = (t - p * nrc * ncc - i * ncc) * COLUMNS
            kw = min(nc, k0 + COLUMNS) - k0
            r0 = i * rsize
            r1 = min(nr, r0 + rsize)
            mu = np.empty(kw)
            m2 = np.empty(kw)
            _cl_moments(x[p], r0, r1, k0, mu, m2)
            for j in range(kw):
                part_mean[p * nc + k0 + j, i] = mu[j]
                part_m2[p * nc + k0 + j, i] = m2[j]
    n_k = ns * nc
    ng = min(n_k, tasks)
    for grp in prange(ng):
        for k in range(grp * n_k // ng, (grp + 1) * n_k // ng):
            mean[k], var[k] = _merge_chunks(part_mean[k], part_m2[k], nr, rsize)
