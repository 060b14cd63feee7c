"""The training passes of batch normalization synchronized over MPI ranks.

Each pass reads the local data twice with a reduction over all ranks in
between: the local per-channel partial results go out in one ``Allgather``
of a (2, C) float64 buffer, and every rank combines them in rank order, so
that every rank gets the same bits. (The fused single-pass kernels of the
local path cannot serve: nothing can be written before the statistics of
all ranks are known.)
"""

from __future__ import annotations

import numpy as np

from . import _collective
from ._layout import Plan
from .kernels import KERNELS


class Sync:
    """What the ranks agreed on in a synchronized forward, kept for its
    backward.

    Attributes
    ----------
    comm : mpi4py.MPI.Comm
    counts : list of int
        Values per channel on each rank.
    """

    __slots__ = ("comm", "counts")

    def __init__(self, comm, counts: list[int]):
        self.comm = comm
        self.counts = counts

    @property
    def count(self) -> int:
        """Values per channel on this rank."""
        return self.counts[self.comm.Get_rank()]


def _gather(comm, part: np.ndarray) -> np.ndarray:
    everyone = np.empty((comm.Get_size(), *part.shape))
    comm.Allgather(part, everyone)
    return everyone


def forward(sync: Sync, plan: Plan | None, xv, channels: int,
            weight, bias, eps, lo, gate, yv) -> tuple[np.ndarray, np.ndarray]:
    """Write this rank's output ``yv`` from its input ``xv`` (kernel views),
    normalized with the statistics of all ranks (``lo``, ``gate``: a fused
    activation, see :func:`fastbn.kernels.affine_cf`); returns them as
    float64 ``(mean, var)``."""
    part = np.zeros((2, channels))
    if sync.count:
        KERNELS["stats"][plan.kind](xv.size, xv, part[0], part[1])
        part[1] *= sync.count
    everyone = _gather(sync.comm, part)
    _, mean, var = _collective.merge_moments(
        [(n, p[0], p[1]) for n, p in zip(sync.counts, everyone)], channels)
    if sync.count:
        KERNELS["affine"][plan.kind](xv.size, xv, mean, var, weight, bias, eps, lo, gate, yv)
    return mean, var


def backward(sync: Sync, dy: np.ndarray, x: np.ndarray, plan: Plan | None, mean, invstd,
             weight, total: int, act: tuple, dxv) -> tuple[np.ndarray, np.ndarray]:
    """Write this rank's ``dxv`` (a kernel view; None: no dx) for the batch
    of all ranks; returns the per-channel ``sum(dy)`` and ``sum(dy * (x - mean))`` of all
    ranks (float64); ``act``: the fused activation's ``(lo, gate)``."""
    lo, gate = act
    part = np.zeros((2, mean.size))
    if sync.count:
        dyv, xv = plan.view(dy), plan.view(x)
        KERNELS["grad_sums"][plan.kind](2 * x.size, dyv, xv, mean, gate, lo, part[0], part[1])
    sums = _collective.sum_in_order(_gather(sync.comm, part))
    if sync.count and dxv is not None:
        KERNELS["grad_input"][plan.kind](2 * x.size, dyv, xv, 1, mean, invstd, weight,
                                         sums[0], sums[1], float(total), gate, lo, dxv)
    return sums[0], sums[1]
