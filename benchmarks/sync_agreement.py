"""How closely SyncBatchNorm across MPI ranks agrees with one process.

Run ``mpiexec -n 3 python benchmarks/sync_agreement.py``. Every rank builds
the same global batch and keeps an uneven share (the last rank none); one
training step of ``SyncBatchNorm`` on the shares is compared with
``BatchNorm`` on the whole batch in one process. Printed: the largest error
over all ranks of y, dx, grad_weight, grad_bias and the running statistics,
relative to the largest magnitude of each reference.
"""

from __future__ import annotations

import argparse

import numpy as np
from mpi4py import MPI

import fastbn

FIELDS = ("y", "dx", "grad_weight", "grad_bias", "running_mean", "running_var")


def _relative(got, want) -> float:
    want = np.asarray(want, np.float64)
    scale = max(float(np.max(np.abs(want))), 1e-300) if want.size else 1.0
    return float(np.max(np.abs(np.asarray(got, np.float64) - want), initial=0.0)) / scale


def compare(comm, shape, layout, dtype, offset) -> dict[str, float]:
    """Largest relative error, over all ranks, of each field."""
    rank, size = comm.Get_rank(), comm.Get_size()
    rng = np.random.default_rng(0)
    c = shape[1] if layout == "NCHW" else shape[-1]
    x = (rng.standard_normal(shape) + offset).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    weights = np.arange(1, size + 1) * (np.arange(size) < size - 1)  # last rank: no samples
    bounds = np.concatenate([[0], np.cumsum(weights)]) * shape[0] // weights.sum()
    mine = slice(bounds[rank], bounds[rank + 1])
    sync = fastbn.SyncBatchNorm(c, comm=comm, layout=layout, dtype=dtype)
    single = fastbn.BatchNorm(c, layout=layout, dtype=dtype)
    got = {"y": sync(x[mine]), "dx": sync.backward(dy[mine])}
    want = {"y": single(x)[mine], "dx": single.backward(dy)[mine]}
    for name in FIELDS[2:]:
        got[name], want[name] = getattr(sync, name), getattr(single, name)
    return {k: comm.allreduce(_relative(got[k], want[k]), op=MPI.MAX) for k in FIELDS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="64x32x16x16")
    args = parser.parse_args()
    comm = MPI.COMM_WORLD
    nchw = tuple(int(d) for d in args.shape.split("x"))
    rows = []
    for dtype in (np.float64, np.float32):
        for layout in ("NCHW", "NHWC"):
            shape = nchw if layout == "NCHW" else (nchw[0], *nchw[2:], nchw[1])
            for offset in (0.0, 1e4):
                errors = compare(comm, shape, layout, dtype, offset)
                rows.append((np.dtype(dtype).name, layout, offset, errors))
    if comm.Get_rank() == 0:
        print(f"{comm.Get_size()} ranks, global batch {args.shape} (NCHW order), "
              "largest error relative to the reference's largest magnitude\n")
        print("| dtype | layout | mean offset (x std) | " + " | ".join(FIELDS) + " |")
        print("|---|---|---:|" + "---:|" * len(FIELDS))
        for name, layout, offset, errors in rows:
            print(f"| {name} | {layout} | {offset:g} | "
                  + " | ".join(f"{errors[k]:.1e}" for k in FIELDS) + " |")


if __name__ == "__main__":
    main()
