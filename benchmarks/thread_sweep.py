"""How the kernels scale with threads: the comparison of ``compare.py`` at
several Numba thread counts (PyTorch, if installed, at the same counts).

    python benchmarks/thread_sweep.py --threads 1 2 4 8 16 [--json F]
"""

import argparse
import json
import sys

import numba

from fastbn.benchmark import LARGE, LAYOUTS, OPS, run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--shapes", nargs="+", default=list(LARGE))
    parser.add_argument("--repeat", type=int, default=11)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    peers = () if args.no_torch else ("torch",)
    table = {}
    print("| threads | shape | layout | op | copy ms | fastbn ms | fastbn copies | torch / fastbn |")
    print("|---:|---|---|---|---:|---:|---:|---:|")
    for n in args.threads:
        if n > numba.config.NUMBA_NUM_THREADS:
            print(f"skipping {n} threads: NUMBA_NUM_THREADS is {numba.config.NUMBA_NUM_THREADS}",
                  file=sys.stderr)
            continue
        numba.set_num_threads(n)
        rows = run(args.shapes, LAYOUTS, ("float32",), OPS, args.repeat, peers, progress=False)
        table[n] = [r.as_dict() for r in rows]
        for r in rows:
            vs = "–" if r.torch_over_fastbn is None else f"{r.torch_over_fastbn:.2f}"
            print(f"| {n} | {r.shape} | {r.layout} | {r.op} | {r.copy_ms:.3f} | "
                  f"{r.fastbn_ms:.3f} | {r.fastbn_copies:.2f} | {vs} |", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(table, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
