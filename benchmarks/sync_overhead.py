"""Cost of synchronizing batch normalization across MPI ranks.

Run ``NUMBA_NUM_THREADS=1 mpiexec -n 2 python benchmarks/sync_overhead.py``.
Every rank holds a local batch of the given shape and times one training
step (forward + backward) of ``BatchNorm`` (local statistics) and of
``SyncBatchNorm`` (statistics of all ranks), alternating, all ranks starting
each call together. The ratio of the medians is the synchronization
overhead; both run while the other ranks do the same work, as in
data-parallel training. A third layer, ``SyncBatchNorm`` over
``COMM_SELF``, runs the synchronized code path without other ranks: it
separates the cost of the two-pass kernels (the local layer fuses the two
passes where a channel fits in cache) from that of the exchange.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from mpi4py import MPI

import fastbn
from fastbn.benchmark import LARGE


def _step(bn, x, dy) -> None:
    bn(x)
    bn.backward(dy)


def measure(comm, shape, layout, dtype, repeat: int) -> dict[str, float]:
    """Median seconds of a local, a self-synchronized and a synchronized step
    on this rank."""
    rng = np.random.default_rng(comm.Get_rank())
    x = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
    dy = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
    if layout == "NHWC":
        x, dy = np.ascontiguousarray(np.moveaxis(x, 1, -1)), np.ascontiguousarray(np.moveaxis(dy, 1, -1))
    c = shape[1]
    layers = {"local": fastbn.BatchNorm(c, layout=layout, dtype=dtype),
              "self": fastbn.SyncBatchNorm(c, comm=MPI.COMM_SELF, layout=layout, dtype=dtype),
              "sync": fastbn.SyncBatchNorm(c, comm=comm, layout=layout, dtype=dtype)}
    times = {k: [] for k in layers}
    for bn in layers.values():  # compile and touch the pages first
        _step(bn, x, dy)
    for _ in range(repeat):
        for name, bn in layers.items():
            comm.Barrier()
            t0 = time.perf_counter()
            _step(bn, x, dy)
            times[name].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=list(LARGE))
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--repeat", type=int, default=21)
    args = parser.parse_args()
    comm = MPI.COMM_WORLD
    rows = []
    for text in args.shapes:
        shape = tuple(int(d) for d in text.split("x"))
        for layout in ("NCHW", "NHWC"):
            medians = measure(comm, shape, layout, np.dtype(args.dtype), args.repeat)
            # The slowest rank sets the pace of a synchronized step.
            rows.append((text, layout, *(comm.allreduce(medians[k], op=MPI.MAX)
                                         for k in ("local", "self", "sync"))))
    if comm.Get_rank() == 0:
        import numba

        threads = numba.get_num_threads()
        print(f"{comm.Get_size()} ranks x {threads} thread{'s' if threads > 1 else ''}, {args.dtype}, "
              f"forward-train + backward per rank, median of {args.repeat}, slowest rank")
        print("\n| local batch per rank | layout | BatchNorm ms | Sync over COMM_SELF ms "
              "| SyncBatchNorm ms | overhead | of which exchange |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for text, layout, local, own, sync in rows:
            print(f"| {text} | {layout} | {local * 1e3:.2f} | {own * 1e3:.2f} | {sync * 1e3:.2f} "
                  f"| {(sync / local - 1) * 100:+.1f}% | {(sync - own) / local * 100:+.1f}% |")


if __name__ == "__main__":
    main()
