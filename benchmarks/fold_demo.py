"""The demo network with each BatchNorm folded into the Linear before it.

Trains the BN network of ``fastbn.demo`` (digits, sigmoid MLP, SGD) for a
few epochs, folds every BatchNorm into the preceding Linear with
``fastbn.fold_batch_norm`` (the demo's weights are (in, out): out_axis=-1),
and prints test accuracy and loss unfolded vs folded, the largest logit
difference, and eval-mode inference time on the test set and on a larger
batch: interleaved rounds (fastbn.benchmark.rounds), medians, and the
median of per-round ratios.

    python benchmarks/fold_demo.py [--epochs 5] [--rounds 31] [--dtype float64]
"""

from __future__ import annotations

import argparse
import copy
import sys

import numba
import numpy as np

import fastbn
from fastbn import demo
from fastbn._machine import cpu_model
from fastbn.benchmark import ratio, rounds


def fold(model: demo.Sequential) -> demo.Sequential:
    """A copy of ``model`` with every BatchNorm folded into the Linear before
    it and removed; the other layers are copied as they are."""
    layers = []
    for layer in model.layers:
        if isinstance(layer, fastbn.BatchNorm):
            linear = layers[-1]
            if not isinstance(linear, demo.Linear):
                raise ValueError(f"a BatchNorm follows {linear!r}, not a Linear")
            linear.weight, linear.bias = fastbn.fold_batch_norm(
                linear.weight, linear.bias, layer, out_axis=-1)  # (in, out)
        else:
            layers.append(copy.deepcopy(layer))
    return demo.Sequential(*layers).eval()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    parser.add_argument("--large", type=int, default=8192, help="rows of the larger batch")
    args = parser.parse_args(argv)
    dtype = np.dtype(args.dtype)

    x_train, x_test, y_train, y_test = demo.load_data(demo.SEED, dtype=dtype)
    sizes = (x_train.shape[1], *demo.HIDDEN, int(y_train.max()) + 1)
    model = demo.build_mlp(sizes, batch_norm=True, seed=demo.SEED, dtype=dtype)
    optimizer = demo.SGD(model, demo.LR)
    shuffle = np.random.default_rng([demo.SEED, 1])
    for _ in range(args.epochs):
        demo.train_epoch(model, optimizer, x_train, y_train,
                         shuffle.permutation(len(x_train)), demo.BATCH_SIZE)
    model.eval()
    folded = fold(model)

    x_large = np.resize(x_test, (args.large, x_test.shape[1]))
    models = {"unfolded": model, "folded": folded}
    results = {name: demo.evaluate(m, x_test, y_test) for name, m in models.items()}
    diff = float(np.max(np.abs(model(x_test) - folded(x_test))))
    timings = {}
    for what, x in (("test set", x_test), ("large", x_large)):
        times = rounds({name: (lambda m=m, x=x: m(x)) for name, m in models.items()}, args.rounds)
        timings[what] = ({k: 1e3 * float(np.median(t)) for k, t in times.items()},
                         ratio(times, "unfolded", "folded"))

    n_bn = sum(isinstance(layer, fastbn.BatchNorm) for layer in model.layers)
    print(f"CPU: {cpu_model()}; Numba {numba.get_num_threads()} threads; fastbn "
          f"{fastbn.__version__}; digits, sigmoid MLP {'-'.join(map(str, sizes))}, "
          f"{n_bn} BatchNorm layers, {args.epochs} epochs of SGD lr={demo.LR:g}, "
          f"batch {demo.BATCH_SIZE}, {dtype.name}; {args.rounds} interleaved rounds\n")
    print(f"| model | test accuracy | test loss | inference, {len(x_test)} rows (ms) "
          f"| inference, {args.large} rows (ms) |")
    print("|---|---:|---:|---:|---:|")
    for name in models:
        loss, acc = results[name]
        print(f"| {name} | {100 * acc:.2f}% | {loss:.6f} | {timings['test set'][0][name]:.3f} "
              f"| {timings['large'][0][name]:.3f} |")
    print(f"| unfolded / folded | | | {timings['test set'][1]:.2f}x "
          f"| {timings['large'][1]:.2f}x |")
    print(f"\nlargest |logit difference| on the test set: {diff:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
