"""Ghost batch normalization against plain BatchNorm, in interleaved rounds
(medians of per-round ratios).

    python benchmarks/ghost.py [--shape 256x64x28x28] [--v 32] [--repeat 21]

For each layout (float32): the training forward of ``BatchNorm(C,
virtual_batch_size=v)`` over that of ``BatchNorm(C)`` on the same batch,
and the same for their backward passes (target <= 1.1). The last column is
the time of a parallel copy of 4 KiB after the rounds (microseconds on a
quiet machine, milliseconds when other processes hold the cores).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fastbn  # noqa: E402
from fastbn.benchmark import launch_ms, ratio, rounds  # noqa: E402


def _calls(shape, layout, v):
    n, c, *spatial = shape
    if layout == "NHWC":
        shape = (n, *spatial, c)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32)
    dy = rng.standard_normal(shape, dtype=np.float32)
    plain = fastbn.BatchNorm(c, layout=layout)
    ghost = fastbn.BatchNorm(c, layout=layout, virtual_batch_size=v)
    for bn in (plain, ghost):
        bn(x)
    return {
        "plain fwd": lambda: plain(x),
        "ghost fwd": lambda: ghost(x),
        "plain bwd": lambda: plain.backward(dy),
        "ghost bwd": lambda: ghost.backward(dy),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="256x64x28x28", help="N x C x spatial... (NCHW order)")
    parser.add_argument("--v", type=int, default=32, help="virtual_batch_size (default 32)")
    parser.add_argument("--repeat", type=int, default=21)
    args = parser.parse_args(argv)
    shape = tuple(int(d) for d in args.shape.split("x"))
    print(f"fastbn {fastbn.__version__}, float32, {args.shape}, virtual_batch_size={args.v} "
          f"({shape[0] // args.v} chunks), median of per-round ratios ({args.repeat} rounds)\n")
    print("| layout | plain fwd ms | ghost fwd / plain fwd | plain bwd ms | ghost bwd / plain bwd "
          "| launch ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for layout in ("NCHW", "NHWC"):
        calls = _calls(shape, layout, args.v)
        for call in calls.values():  # warm
            call()
        t = rounds(calls, args.repeat)
        print(f"| {layout} | {1e3 * np.median(t['plain fwd']):.2f} "
              f"| {ratio(t, 'ghost fwd', 'plain fwd'):.3f} | {1e3 * np.median(t['plain bwd']):.2f} "
              f"| {ratio(t, 'ghost bwd', 'plain bwd'):.3f} | {launch_ms():.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
