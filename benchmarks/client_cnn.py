"""One small CNN training step on the CPU: stock nn.BatchNorm2d vs the
fastbn-backed FastBatchNorm2d of examples/torch_batchnorm.py.

The model: conv3x3(3->32)-BN-ReLU, conv3x3(32->64)-BN-ReLU, 4x4 average
pool, linear(4096->10), cross-entropy, SGD with momentum; a batch of
32x3x32x32. Both models start from the same weights; the step is timed in
interleaved rounds (fastbn.benchmark.rounds), the ratio is the median of
per-round ratios; so are the two BN layers alone (forward and backward on
activations of the step's shapes), for their share of the step. PyTorch and Numba each run --threads threads.

    python benchmarks/client_cnn.py [--threads 2] [--rounds 31]
"""

import argparse
import copy
import platform
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import torch
from torch import nn

from fastbn.benchmark import ratio, rounds

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from torch_batchnorm import convert  # noqa: E402


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines()
                    if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def make_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
        nn.AvgPool2d(4), nn.Flatten(), nn.Linear(64 * 8 * 8, 10))


def trainer(model, x, target):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), target)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def bn_pass(bn, a):
    """The forward and backward of one BN layer alone."""
    a = a.detach().requires_grad_(True)
    dy = torch.randn_like(a)

    def run():
        bn(a).backward(dy)

    return run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=31)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    torch.manual_seed(0)
    x, target = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))

    print(f"CPU: {cpu_name()}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"Numba {numba.get_num_threads()} threads; batch 32x3x32x32, float32\n")
    print("| memory format | timed | stock ms | fastbn-backed ms | stock / fastbn-backed |")
    print("|---|---|---:|---:|---:|")
    for fmt, name in ((torch.contiguous_format, "NCHW"), (torch.channels_last, "channels_last")):
        stock = make_model().to(memory_format=fmt)
        fast = convert(copy.deepcopy(stock))
        xf = x.to(memory_format=fmt)
        steps = {"stock": trainer(stock, xf, target), "fast": trainer(fast, xf, target)}
        first = {k: float(fn()) for k, fn in steps.items()}  # same weights: same loss
        if abs(first["stock"] - first["fast"]) > 1e-4 * abs(first["stock"]):
            raise SystemExit(f"losses differ: {first}")
        # the two BN layers alone, on activations of the step's shapes
        a1 = stock[2](stock[1](stock[0](xf)))
        a2 = stock[3](a1)
        cases = {"training step": steps}
        for i, a in ((1, a1), (4, a2)):
            cases[f"BN {tuple(a.shape)} fwd+bwd"] = {"stock": bn_pass(stock[i], a),
                                                     "fast": bn_pass(fast[i], a)}
        for what, fns in cases.items():
            times = rounds(fns, args.rounds)
            ms = {k: 1e3 * float(np.median(t)) for k, t in times.items()}
            print(f"| {name} | {what} | {ms['stock']:.2f} | {ms['fast']:.2f} | "
                  f"{ratio(times, 'stock', 'fast'):.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
