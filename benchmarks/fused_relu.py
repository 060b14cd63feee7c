"""Fused BatchNorm + ReLU and ghost batch normalization against plain
BatchNorm, in interleaved rounds (medians of per-round ratios).

    python benchmarks/fused_relu.py [--shapes 32x64x56x56 ...] [--repeat 21] [--markdown F]

Rows, per shape and layout (float32):

* ``relu fwd / plain fwd``: ``batch_norm_forward(..., activation="relu")``
  over the plain training forward (target <= 1.05);
* ``bn+relu / relu fwd``: the plain forward followed by
  ``np.maximum(y, 0, out=y)`` over the fused one (target >= 1.5);
* ``relu bwd / plain bwd``: the backward of a ReLU cache over a plain one
  (target <= 1.15);
* ``ghost / plain``: a ``BatchNorm(virtual_batch_size=N // 4)`` training
  step (forward and backward) over a plain one (target <= 1.1).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fastbn  # noqa: E402
from fastbn.bench_cases import LARGE, SHAPES, make_input  # noqa: E402
from fastbn.benchmark import ratio, rounds  # noqa: E402


def _calls(shape, layout):
    x = make_input(SHAPES[shape], layout, np.float32)
    c = x.shape[1 if layout == "NCHW" else -1]
    rng = np.random.default_rng(1)
    w = (1 + 0.1 * rng.standard_normal(c)).astype(np.float32)
    b = (0.1 * rng.standard_normal(c)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    fwd = dict(layout=layout)

    def bn_then_relu():
        y, _ = fastbn.batch_norm_forward(x, w, b, **fwd)
        np.maximum(y, 0, out=y)

    _, plain = fastbn.batch_norm_forward(x, w, b, **fwd)
    _, relu = fastbn.batch_norm_forward(x, w, b, activation="relu", **fwd)
    layers = {v: fastbn.BatchNorm(c, layout=layout, virtual_batch_size=v)
              for v in (None, x.shape[0] // 4)}

    def step(layer):
        return lambda: (layer(x), layer.backward(dy))

    return {
        "plain fwd": lambda: fastbn.batch_norm_forward(x, w, b, **fwd),
        "relu fwd": lambda: fastbn.batch_norm_forward(x, w, b, activation="relu", **fwd),
        "bn+relu": bn_then_relu,
        "plain bwd": lambda: fastbn.batch_norm_backward(dy, plain),
        "relu bwd": lambda: fastbn.batch_norm_backward(dy, relu),
        "plain step": step(layers[None]),
        "ghost step": step(layers[x.shape[0] // 4]),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=list(LARGE), choices=list(SHAPES))
    parser.add_argument("--repeat", type=int, default=21)
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args(argv)
    lines = [f"fastbn {fastbn.__version__}, float32, median of per-round ratios "
             f"({args.repeat} rounds)", "",
             "| shape | layout | plain fwd ms | relu fwd / plain fwd | bn+relu / relu fwd "
             "| plain bwd ms | relu bwd / plain bwd | ghost step / plain step |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for shape in args.shapes:
        for layout in ("NCHW", "NHWC"):
            calls = _calls(shape, layout)
            for call in calls.values():  # compile and warm
                call()
            t = rounds(calls, args.repeat)
            lines.append(
                f"| {shape} | {layout} | {1e3 * np.median(t['plain fwd']):.3f} "
                f"| {ratio(t, 'relu fwd', 'plain fwd'):.3f} | {ratio(t, 'bn+relu', 'relu fwd'):.2f} "
                f"| {1e3 * np.median(t['plain bwd']):.3f} | {ratio(t, 'relu bwd', 'plain bwd'):.3f} "
                f"| {ratio(t, 'ghost step', 'plain step'):.3f} |")
            print(lines[-1], flush=True)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n".join(lines) + "\n")
        print(f"wrote the table to {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
