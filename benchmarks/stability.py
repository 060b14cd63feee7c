"""Accuracy of float32 batch statistics at growing mean offsets.

    python benchmarks/stability.py [--markdown docs/stability-table.md]

For float32 data ``offset + std * z`` (z standard normal, std = 1) with
``offset`` = 0, 1e2, 1e3, 1e4 and 1e5 times std, and one channel holding more
than 2**24 values, compares the per-channel mean and biased variance of

* NumPy, naive: ``E[x**2] - E[x]**2`` in float32;
* NumPy, two-pass float32: ``x.mean()``, ``x.var()``;
* PyTorch CPU (if installed): ``torch.var_mean(x, correction=0)`` and the
  statistics ``F.batch_norm`` trains with (read back from the running
  statistics with momentum 1, unbiased variance scaled back by (m-1)/m);
* fastbn: ``fastbn.batch_stats``, NCHW and NHWC,

with a float64 two-pass reference over the same float32 values. Reported:
the largest relative error of the variance over the channels, and the
largest error of the mean in units of the standard deviation. The mean of
every float32 method is rounded to float32, so it cannot do better than the
"reference rounded to float32" column.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys

import numpy as np

import fastbn

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the PyTorch columns are skipped
    torch = None

OFFSETS = (0.0, 1e2, 1e3, 1e4, 1e5)
#: (N, C, H, W): 131072 values per channel.
SHAPE = (32, 4, 64, 64)
#: 17,301,504 values per channel (> 2**24 = 16,777,216).
HUGE_SHAPE = (16, 2, 1024, 1056)
HUGE_OFFSET = 1e3
AXES = (0, 2, 3)


def reference(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 two-pass mean and biased variance per channel of NCHW ``x``."""
    c = x.shape[1]
    mean = np.empty(c)
    var = np.empty(c)
    for k in range(c):
        v = x[:, k].astype(np.float64).ravel()
        mean[k] = v.mean()
        var[k] = np.mean((v - mean[k]) ** 2)
    return mean, var


def numpy_naive(x):
    ex = x.mean(axis=AXES, dtype=np.float32)
    ex2 = (x * x).mean(axis=AXES, dtype=np.float32)
    return ex, ex2 - ex * ex


def numpy_two_pass(x):
    return x.mean(axis=AXES, dtype=np.float32), x.var(axis=AXES, dtype=np.float32)


def torch_var_mean(x):
    var, mean = torch.var_mean(torch.from_numpy(x), dim=AXES, correction=0)
    return mean.numpy(), var.numpy()


def torch_batch_norm(x):
    c = x.shape[1]
    m = x.size // c
    rmean = torch.zeros(c)
    rvar = torch.ones(c)
    F.batch_norm(torch.from_numpy(x), rmean, rvar, training=True, momentum=1.0, eps=1e-5)
    return rmean.numpy(), rvar.numpy().astype(np.float64) * ((m - 1) / m)


def fastbn_nchw(x):
    return fastbn.batch_stats(x, layout="NCHW")


def fastbn_nhwc(x):
    return fastbn.batch_stats(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), layout="NHWC")


def methods() -> dict:
    out = {"NumPy naive E[x²]−E[x]²": numpy_naive, "NumPy two-pass": numpy_two_pass}
    if torch is not None:
        out["torch.var_mean"] = torch_var_mean
        out["torch F.batch_norm"] = torch_batch_norm
    out["fastbn NCHW"] = fastbn_nchw
    out["fastbn NHWC"] = fastbn_nhwc
    return out


def make(shape, offset: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape, dtype=np.float32)
    x += np.float32(offset)
    return x


def errors(x: np.ndarray) -> dict:
    """Per method: (max relative variance error, max mean error / std,
    whether some variance came out negative)."""
    ref_mean, ref_var = reference(x)
    std = np.sqrt(ref_var)
    result = {}
    for name, fn in methods().items():
        mean, var = fn(x)
        mean = np.asarray(mean, np.float64)
        var = np.asarray(var, np.float64)
        result[name] = (
            float(np.max(np.abs(var - ref_var) / ref_var)),
            float(np.max(np.abs(mean - ref_mean) / std)),
            bool(np.any(var < 0)),
        )
    result["reference rounded to float32"] = (
        float(np.max(np.abs(ref_var.astype(np.float32) - ref_var) / ref_var)),
        float(np.max(np.abs(ref_mean.astype(np.float32) - ref_mean) / std)),
        False,
    )
    return result


def fmt(value: float, negative: bool = False) -> str:
    s = "0" if value == 0 else f"{value:.1e}"
    return s + (" †" if negative else "")


def _offset(off: float) -> str:
    return "0" if off == 0 else f"1e{round(math.log10(off))} × std"


def cases(huge: bool):
    m = SHAPE[0] * SHAPE[2] * SHAPE[3]
    for off in OFFSETS:
        yield f"{_offset(off)}, m = {m:,}", SHAPE, off
    if huge:
        m = HUGE_SHAPE[0] * HUGE_SHAPE[2] * HUGE_SHAPE[3]
        yield f"{_offset(HUGE_OFFSET)}, m = {m:,} (> 2²⁴)", HUGE_SHAPE, HUGE_OFFSET


def tables(rows: list) -> str:
    names = list(rows[0][1])
    lines = []
    for title, idx in (("Variance: largest relative error over the channels", 0),
                       ("Mean: largest error over the channels, in units of std", 1)):
        lines += [f"**{title}**", ""]
        lines.append("| mean offset, values per channel | " + " | ".join(names) + " |")
        lines.append("|---|" + "---:|" * len(names))
        for label, res in rows:
            cells = [fmt(res[n][idx], idx == 0 and res[n][2]) for n in names]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append(
        "† some channel's variance came out negative. Data: float32 "
        "`offset + z`, z standard normal (std 1), seed 0; "
        f"shape {SHAPE} NCHW (C = {SHAPE[1]}), the last row {HUGE_SHAPE} "
        f"(C = {HUGE_SHAPE[1]}). Reference: float64 two-pass over the same float32 values."
    )
    versions = [f"NumPy {np.__version__}", f"fastbn {fastbn.__version__}"]
    if torch is not None:
        versions.append(f"PyTorch {torch.__version__}")
    lines.append(f"Python {platform.python_version()}, " + ", ".join(versions) + ".")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", metavar="FILE", help="also write the tables to FILE")
    parser.add_argument("--no-huge", action="store_true",
                        help="skip the case with more than 2**24 values per channel")
    args = parser.parse_args(argv)
    rows = []
    for label, shape, off in cases(not args.no_huge):
        print(f"{label} ...", file=sys.stderr, flush=True)
        rows.append((label, errors(make(shape, off))))
    text = tables(rows)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
