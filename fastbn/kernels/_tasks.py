"""Task sizes and task splitting shared by the kernels: the constants
that fix where tasks and blocks begin (they depend on the shape only) and
the helpers that cut a view into tasks."""

from __future__ import annotations

import numpy as np

from .._jit import helper

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
def _cl_row_chunks(nr, nc):
    """``(chunks, rows per chunk)`` of a sample's ``(R, C)`` rows in the
    ``_cl`` reductions: tasks of about :data:`CL_CHUNK` values of at most
    :data:`COLUMNS` columns. Every kernel that sums channels-last data
    (two-pass or sample per task) cuts its rows so: the same bits."""
    nrc = _n_chunks(nr, max(1, CL_CHUNK // min(nc, COLUMNS)), min(nr, MAX_CHUNKS))
    return nrc, (nr + nrc - 1) // nrc


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
def _walk_task(t, na, nc, spc, cw):
    """Task ``t`` of a walk (see :func:`_walk_tasks`): its sample chunk
    ``k``, samples ``a0:a1`` and channels ``c0:c1``."""
    ncg = (nc + cw - 1) // cw
    k = t // ncg
    c0 = (t - k * ncg) * cw
    return k, k * spc, min(na, k * spc + spc), c0, min(nc, c0 + cw)


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


@helper(inline=True)
def _gate_of(gate, c):
    """Channel ``c``'s (scale, shift) of ``gate`` (zeros when it is empty:
    then ``0 > lo = -inf`` passes every value, NaN included)."""
    if gate.size:
        return gate[c], gate[gate.size // 2 + c]
    return gate.dtype.type(0), gate.dtype.type(0)
