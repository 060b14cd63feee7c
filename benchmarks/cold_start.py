"""How long a first training step waits for the compiler, and where it goes.

Each run is a fresh interpreter with an empty compile cache (a temporary
NUMBA_CACHE_DIR, removed afterwards) that trains one step (forward, backward,
eval forward) per layout/dtype in turn, NCHW float32 first: the first line is
a new user's first step, the others what each further layout/dtype adds.
Per kernel: Numba's compile time, nested helpers included (the "numba:compile"
events). ``--warm`` runs each configuration twice on the same cache and
reports the second run (a warm first call).

Usage: python benchmarks/cold_start.py [--shape 8x16x8x8] [--warm] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

CHILD = r"""
import json, sys, time
t = time.perf_counter()
import numpy as np
import fastbn
steps = [("import", time.perf_counter() - t, {})]
from numba.core import event
KERNELS = {d.py_func.__name__ for d in fastbn.kernels.dispatchers()}
compiles = {}

class Listener(event.Listener):
    def on_start(self, ev):
        ev.data["start"] = time.perf_counter()
    def on_end(self, ev):
        name = ev.data["dispatcher"].py_func.__name__
        if name in KERNELS:  # not the helpers they compile
            compiles[name] = compiles.get(name, 0.0) + time.perf_counter() - ev.data["start"]

event.register("numba:compile", Listener())
shape = tuple(json.loads(sys.argv[1]))
for layout, dtype in json.loads(sys.argv[2]):
    s = shape if layout == "NCHW" else (shape[0], *shape[2:], shape[1])
    x = np.random.default_rng(0).standard_normal(s).astype(dtype)
    bn = fastbn.BatchNorm(shape[1], layout=layout, dtype=np.dtype(dtype))
    compiles.clear()
    t = time.perf_counter()
    y = bn.forward(x)
    bn.backward(np.ones_like(y))
    bn.eval()
    bn.forward(x)
    steps.append((f"{layout} {dtype}", time.perf_counter() - t, dict(compiles)))
print(json.dumps(steps))
"""

COMBOS = [("NCHW", "float32"), ("NHWC", "float32"), ("NCHW", "float64"), ("NHWC", "float64")]


def run(shape: tuple, warm: bool) -> list:
    """The steps of one fresh process (the second one on the same cache with
    ``warm``): ``[(label, seconds, {kernel: compile seconds})]``."""
    cache = tempfile.mkdtemp(prefix="fastbn-cold-")
    env = dict(os.environ, NUMBA_CACHE_DIR=cache)
    try:
        for _ in range(2 if warm else 1):
            out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(shape),
                                  json.dumps(COMBOS)], env=env, capture_output=True,
                                 text=True, check=True)
        return json.loads(out.stdout)
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="8x16x8x8", help="NCHW shape (default 8x16x8x8)")
    parser.add_argument("--warm", action="store_true", help="a second process on the same cache")
    parser.add_argument("--markdown", action="store_true", help="a markdown table")
    args = parser.parse_args(argv)
    shape = tuple(int(s) for s in args.shape.split("x"))
    steps = run(shape, args.warm)
    if args.markdown:
        print("| step | seconds | kernels compiled (seconds, helpers included) |")
        print("|---|---:|---|")
    for label, secs, kernels in steps:
        detail = ", ".join(f"{k} {v:.2f}" for k, v in sorted(kernels.items(), key=lambda kv: -kv[1]))
        if args.markdown:
            print(f"| {label} | {secs:.2f} | {detail} |")
        else:
            print(f"{label:<16} {secs:6.2f} s  {detail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
