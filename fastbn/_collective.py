"""How synchronized batch normalization agrees across MPI ranks.

Every rank makes the same collective calls in the same order, whatever its
input. A synchronized forward or backward starts with one ``allgather`` in
which each rank sends its shape and, if its local checks failed, its error;
then every rank raises, or none does, and none waits for ever. The numbers
themselves follow in buffer collectives (:mod:`fastbn._synced`).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ._checks import describe

_MPI_HINT = (
    "install mpi4py with an MPI library: pip install 'fastbn[mpi]' "
    "(or mpi4py built against your cluster's MPI)"
)

_ERRORS = {"TypeError": TypeError, "ValueError": ValueError}


def mpi():
    """The ``mpi4py.MPI`` module, or an ImportError that says what to install."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ImportError(f"synchronized batch normalization needs mpi4py: {_MPI_HINT}") from exc
    return MPI


def communicator(comm):
    """``comm`` checked to be an mpi4py communicator; None means ``COMM_WORLD``."""
    MPI = mpi()
    if comm is None:
        return MPI.COMM_WORLD
    if not isinstance(comm, MPI.Comm) or comm == MPI.COMM_NULL:
        given = "MPI.COMM_NULL" if isinstance(comm, MPI.Comm) else describe(comm)
        raise TypeError(f"comm must be an mpi4py communicator, got {given}")
    return comm


def exchange(comm, error: Exception | None, header: Any, payload: Any) -> list:
    """Gather every rank's ``payload``; raise on every rank if any rank failed
    or if the ranks' headers differ.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm
    error : Exception or None
        This rank's failure, raised here after the exchange.
    header : object
        What must be equal across ranks, e.g. ``(channels, dtype, layout)``;
        None on a rank that failed.
    payload : object
        This rank's contribution, small (pickled by mpi4py).

    Returns
    -------
    list
        The payloads, in rank order (identical on every rank).
    """
    message = None if error is None else (type(error).__name__, str(error))
    gathered = comm.allgather((message, header, payload))
    if error is not None:
        raise error
    for rank, (msg, _, _) in enumerate(gathered):
        if msg is not None:
            kind, text = msg
            raise _ERRORS.get(kind, RuntimeError)(f"rank {rank} of the communicator failed: {text}")
    headers = [h for _, h, _ in gathered]
    if any(h != headers[0] for h in headers):
        raise ValueError("ranks disagree on (channels, dtype, layout): expected the same on "
                         f"every rank, got {headers} in rank order")
    return [p for _, _, p in gathered]


def merge_moments(parts: Sequence[tuple[int, np.ndarray, np.ndarray]], channels: int):
    """Chan et al.'s pairwise merge of per-rank ``(count, mean, M2)``, in rank
    order so that every rank gets the same bits.

    Returns
    -------
    count : int
    mean, var : ndarray, float64, shape (C,)
        Global mean and biased variance (NaN where ``count`` is 0).
    """
    n = 0
    mean = np.zeros(channels)
    m2 = np.zeros(channels)
    for nb, mb, m2b in parts:
        if nb == 0:
            continue
        total = n + nb
        delta = mb - mean
        mean = mean + delta * (nb / total)
        m2 = m2 + m2b + delta * delta * (n * nb / total)
        n = total
    with np.errstate(invalid="ignore", divide="ignore"):
        return n, mean, m2 / n


def sum_in_order(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Element-wise sum of the ranks' arrays, in rank order."""
    total = parts[0].copy()
    for p in parts[1:]:
        total += p
    return total
