"""Accuracy of float32 batch statistics at growing mean offsets; the family's at one.

    python benchmarks/stability.py [--markdown docs/stability-table.md]
                                   [--family-markdown docs/stability-family-table.md]

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

Then LayerNorm, GroupNorm and InstanceNorm at one large offset: float32 data with
``|mean| = 1e4 * std``, shape (8, 32, 16, 16), normalized by LayerNorm
(over (C, H, W), and over C of the NHWC array), GroupNorm (8 groups) and
InstanceNorm, NCHW and NHWC (for PyTorch a ``channels_last`` tensor), with
fastbn (``cache.mean``, ``cache.var``, y) and PyTorch
(``torch.native_layer_norm``, ``torch.native_group_norm``, and for
InstanceNorm ``F.instance_norm``'s y with the statistics of the
``native_batch_norm`` it runs over the ``(1, N*C, H, W)`` view; PyTorch's
variance is ``1 / rstd**2 - eps`` of its float32 ``rstd``), against a
float64 two-pass reference over the same float32 values. Reported: the
largest error over the normalized sets of the mean in units of the data's
magnitude (max |x|), of the variance relative, and the largest absolute
error of y (which has std 1).
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


# ----------------------------------------------------------------------------- the family

#: (N, C, H, W) of the family's cases; float32 ``FAMILY_OFFSET + z``.
FAMILY_SHAPE = (8, 32, 16, 16)
FAMILY_OFFSET = 1e4
FAMILY_GROUPS = 8
FAMILY_EPS = 1e-5


def _nhwc(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def _torch_nchw(a: np.ndarray, layout: str):
    """A float32 NCHW-shaped tensor of ``a``: contiguous, or for an NHWC
    array a ``channels_last`` tensor (the memory of ``a``)."""
    t = torch.from_numpy(a)
    if layout == "NCHW":
        return t
    return t.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)


def _torch_var(rstd) -> np.ndarray:
    """The biased variance behind PyTorch's float32 ``rstd = 1/sqrt(var + eps)``."""
    return 1.0 / rstd.double().numpy().ravel() ** 2 - FAMILY_EPS


class FamilyCase:
    """One normalization of float32 data ``x`` (stored in ``layout``): the
    normalized sets as rows of ``units(a)`` for an array of x's shape, and
    each method's ``(y, mean, var)`` (mean and var flat, one per set)."""

    def __init__(self, label: str, norm: str, layout: str):
        self.label, self.norm, self.layout = label, norm, layout

    def units(self, a: np.ndarray) -> np.ndarray:
        n, c = FAMILY_SHAPE[:2]
        if self.norm == "layer-c":  # the rows of the NHWC array
            return a.reshape(-1, c)
        if self.layout == "NHWC":
            a = a.transpose(0, 3, 1, 2)
        sets = {"layer": n, "group": n * FAMILY_GROUPS, "instance": n * c}[self.norm]
        return a.reshape(sets, -1)

    def run_fastbn(self, x: np.ndarray):
        eps, layout = FAMILY_EPS, self.layout
        if self.norm == "layer":
            y, cache = fastbn.layer_norm_forward(x, x.shape[1:], eps=eps)
        elif self.norm == "layer-c":
            y, cache = fastbn.layer_norm_forward(x, x.shape[-1], eps=eps)
        elif self.norm == "group":
            y, cache = fastbn.group_norm_forward(x, FAMILY_GROUPS, eps=eps, layout=layout)
        else:
            y, cache = fastbn.instance_norm_forward(x, eps=eps, layout=layout)
        return y, cache.mean.ravel(), cache.var.ravel()

    def run_torch(self, x: np.ndarray):
        eps = FAMILY_EPS
        if self.norm in ("layer", "layer-c"):
            shape = x.shape[1:] if self.norm == "layer" else x.shape[-1:]
            y, mean, rstd = torch.native_layer_norm(torch.from_numpy(x), shape, None, None, eps)
            return y.numpy(), mean.double().numpy().ravel(), _torch_var(rstd)
        t = _torch_nchw(x, self.layout)
        n, c, h, w = t.shape
        if self.norm == "group":
            y, mean, rstd = torch.native_group_norm(t, None, None, n, c, h * w,
                                                    FAMILY_GROUPS, eps)
        else:
            # F.instance_norm is batch_norm over the (1, N*C, H, W) view of
            # its input made contiguous: the statistics are those.
            y = F.instance_norm(t, eps=eps)
            _, mean, rstd = torch.native_batch_norm(t.contiguous().view(1, n * c, h, w),
                                                    None, None, None, None, True, 0.0, eps)
        if self.layout == "NHWC":
            y = y.permute(0, 2, 3, 1)
        return y.contiguous().numpy(), mean.double().numpy().ravel(), _torch_var(rstd)


def family_cases() -> list:
    return [
        FamilyCase("LayerNorm over (C, H, W)", "layer", "NCHW"),
        FamilyCase("LayerNorm over C of NHWC", "layer-c", "NHWC"),
        FamilyCase(f"GroupNorm (G = {FAMILY_GROUPS}), NCHW", "group", "NCHW"),
        FamilyCase(f"GroupNorm (G = {FAMILY_GROUPS}), NHWC", "group", "NHWC"),
        FamilyCase("InstanceNorm, NCHW", "instance", "NCHW"),
        FamilyCase("InstanceNorm, NHWC", "instance", "NHWC"),
    ]


def family_errors(case: FamilyCase, x: np.ndarray) -> dict:
    """Per method: (max mean error / max|x|, max relative variance error,
    max |y error|) against the float64 two-pass reference."""
    if case.layout == "NHWC":
        x = _nhwc(x)
    u = case.units(x).astype(np.float64)
    ref_mean = u.mean(axis=1)
    ref_var = np.mean((u - ref_mean[:, None]) ** 2, axis=1)
    ref_y = (u - ref_mean[:, None]) / np.sqrt(ref_var[:, None] + FAMILY_EPS)
    scale = float(np.max(np.abs(u)))
    methods = {"fastbn": case.run_fastbn}
    if torch is not None:
        methods["PyTorch"] = case.run_torch
    result = {}
    for name, fn in methods.items():
        y, mean, var = fn(x)
        y = case.units(np.asarray(y)).astype(np.float64)
        result[name] = (
            float(np.max(np.abs(mean - ref_mean)) / scale),
            float(np.max(np.abs(var - ref_var) / ref_var)),
            float(np.max(np.abs(y - ref_y))),
        )
    result["reference rounded to float32"] = (
        float(np.max(np.abs(ref_mean.astype(np.float32) - ref_mean)) / scale),
        float(np.max(np.abs(ref_var.astype(np.float32) - ref_var) / ref_var)),
        float(np.max(np.abs(ref_y.astype(np.float32) - ref_y))),
    )
    return result


def family_tables(rows: list) -> str:
    names = list(rows[0][1])
    lines = []
    for title, idx in (("Mean: largest error, in units of the data's magnitude (max |x|)", 0),
                       ("Variance: largest relative error", 1),
                       ("Output y: largest absolute error (y has std 1)", 2)):
        lines += [f"**{title}**", ""]
        lines.append("| norm, layout | " + " | ".join(names) + " |")
        lines.append("|---|" + "---:|" * len(names))
        for label, res in rows:
            lines.append(f"| {label} | " + " | ".join(fmt(res[n][idx]) for n in names) + " |")
        lines.append("")
    lines.append(
        f"Data: float32 `offset + z`, offset {_offset(FAMILY_OFFSET)}, z standard normal "
        f"(std 1), seed 0; (N, C, H, W) = {FAMILY_SHAPE}, "
        f"eps = 1e{round(math.log10(FAMILY_EPS))}, no weight or bias. "
        "Errors over every normalized set (sample, group or channel, or row) against a "
        "float64 two-pass reference over the same float32 values."
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
    parser.add_argument("--family-markdown", metavar="FILE",
                        help="also write the LayerNorm/GroupNorm/InstanceNorm tables to FILE")
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
    x = make(FAMILY_SHAPE, FAMILY_OFFSET)
    family = [(case.label, family_errors(case, x)) for case in family_cases()]
    text = family_tables(family)
    print(text)
    if args.family_markdown:
        with open(args.family_markdown, "w") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
