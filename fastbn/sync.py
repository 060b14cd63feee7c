"""``SyncBatchNorm``: batch normalization over the batch of all MPI ranks."""

from __future__ import annotations

import numpy as np

from . import _collective
from .layer import BatchNorm

__all__ = ["SyncBatchNorm"]


class SyncBatchNorm(BatchNorm):
    """Batch normalization whose training statistics are those of the batch
    formed by every rank of an MPI communicator (data-parallel training).

    Each rank computes its per-channel ``(count, mean, M2)`` with the stable
    kernels; the ranks exchange them and merge them with Chan et al.'s
    pairwise formula, in rank order, so every rank normalizes with the same
    statistics and keeps the same running statistics. The backward pass sums
    the per-channel gradient terms over the ranks the same way. Eval mode
    uses no communication (PyTorch's semantics).

    Forward and backward in training are collective calls: every rank of
    ``comm`` must make them, in the same order. Ranks may hold batches of
    different sizes, or empty ones.

    Parameters
    ----------
    num_features : int
        Number of channels C.
    comm : mpi4py.MPI.Comm, optional
        Communicator; ``MPI.COMM_WORLD`` by default.
    eps, momentum, affine, track_running_stats, layout, dtype, unbiased_running_var, activation
        As for :class:`BatchNorm`.
    virtual_batch_size : int or None
        Ghost batch normalization over each rank's own batch: in training,
        statistics per consecutive chunk of this many samples of the local
        batch (which it must divide; an empty one is fine), so that no chunk
        spans ranks and the forward output needs no communication. The
        running statistics get the mean over the chunks of all ranks, and
        ``grad_weight``/``grad_bias`` are sums over all ranks, as without
        it: the same as :class:`BatchNorm` with ``virtual_batch_size`` over
        the ranks' batches concatenated in rank order.

    Raises
    ------
    ImportError
        If mpi4py is not installed (``pip install 'fastbn[mpi]'``).

    Notes
    -----
    The gradients are those of the batch of all ranks: ``backward(dy)``
    takes this rank's rows of the gradient of the global loss, returns this
    rank's rows of ``dx``, and sets ``grad_weight`` and ``grad_bias`` to the
    sums over all ranks, equal on every rank. In data-parallel training,
    scale each rank's loss gradient by its share of the global batch and
    sum the other layers' gradients with ``Allreduce``; do not reduce the
    SyncBatchNorm gradients again (``examples/mpi_digits.py`` does this).
    """

    def __init__(
        self,
        num_features: int,
        *,
        comm=None,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        layout: str = "NCHW",
        dtype=np.float32,
        unbiased_running_var: bool = True,
        virtual_batch_size: int | None = None,
        activation: str | None = None,
    ):
        comm = _collective.communicator(comm)
        super().__init__(num_features, eps=eps, momentum=momentum, affine=affine,
                         track_running_stats=track_running_stats, layout=layout, dtype=dtype,
                         unbiased_running_var=unbiased_running_var,
                         virtual_batch_size=virtual_batch_size, activation=activation)
        self.comm = comm

    def __repr__(self) -> str:
        return super().__repr__() + f" over {self.comm.Get_size()} ranks"

    def _communicator(self):
        return self.comm if self.training else None
