"""A fixed fastbn workload, run in a fresh process by test_processes.py.

Usage: python workload.py OUTDIR {tiny,small,medium,full}

Writes OUTDIR/result.json: where fastbn and the numba cache were found, the
numba cache statistics of every dispatcher of the package, and for every case
the O(C) results plus a strided sample of each large result (enough to check
correctness against the reference and identity between processes).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np


def _variant(x, kind, layout):
    if kind == "contiguous":
        return np.ascontiguousarray(x)
    if kind == "stepped":
        big = np.zeros(tuple(2 * s for s in x.shape), x.dtype)
        sl = tuple(slice(None, None, 2) for _ in x.shape)
        big[sl] = x
        return big[sl]
    if kind == "readonly":
        x = x.copy()
        x.setflags(write=False)
        return x
    if kind == "other_physical":
        ax = 1 if layout == "NCHW" else x.ndim - 1
        other = x.ndim - 1 if ax == 1 else 1
        return np.moveaxis(np.ascontiguousarray(np.moveaxis(x, ax, other)), other, ax)
    raise ValueError(kind)


def cases(kind):
    """[(name, x, layout)], deterministic."""
    rng = np.random.default_rng(20240611)
    out = []
    if kind == "tiny":  # serial kernels of one layout and dtype
        specs = [(np.float32, "NCHW", (4, 3, 5, 6), "contiguous")]
    elif kind in ("small", "medium"):
        specs = [(np.float32, "NCHW", (4, 3, 5, 6), "contiguous"),
                 (np.float32, "NCHW", (8, 3, 64, 64), "contiguous")]
        if kind == "medium":
            specs += [(np.float64, "NHWC", (4, 5, 6, 3), "contiguous"),
                      (np.float64, "NHWC", (8, 64, 64, 3), "contiguous")]
    else:
        specs = []
        for dtype in (np.float32, np.float64):
            for layout in ("NCHW", "NHWC"):
                small = (4, 3, 5, 6) if layout == "NCHW" else (4, 5, 6, 3)
                large = (8, 3, 48, 48) if layout == "NCHW" else (8, 48, 48, 3)
                for shape in (small, large, (6, 3), (9000, 5)):
                    for variant in ("contiguous", "stepped", "readonly", "other_physical"):
                        specs.append((dtype, layout, shape, variant))
    for dtype, layout, shape, variant in specs:
        x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
        name = f"{np.dtype(dtype).name}-{layout}-{'x'.join(map(str, shape))}-{variant}"
        out.append((name, _variant(x, variant, layout), layout))
    return out


def dy_for(x):
    return np.cos(np.arange(x.size, dtype=np.float64)).reshape(x.shape).astype(x.dtype)


def params_for(C, dtype):
    w = np.linspace(0.5, 1.5, C).astype(dtype)
    b = np.linspace(-0.5, 0.5, C).astype(dtype)
    return w, b


def sample(a):
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    return a[::37].tolist()


def run_case(fastbn, x, layout):
    C = x.shape[1 if layout == "NCHW" else -1]
    w, b = params_for(C, x.dtype)
    rm, rv = np.zeros(C, x.dtype), np.ones(C, x.dtype)
    dy = dy_for(x)
    res = {}
    mean, var = fastbn.batch_stats(x, layout=layout)
    y, cache = fastbn.batch_norm_forward(x, w, b, running_mean=rm, running_var=rv,
                                         layout=layout)
    dx, dw, db = fastbn.batch_norm_backward(dy, cache)
    ye, ce = fastbn.batch_norm_forward(x, w, b, training=False, running_mean=rm,
                                       running_var=rv, layout=layout)
    dxe, dwe, dbe = fastbn.batch_norm_backward(dy, ce)
    bn = fastbn.BatchNorm(C, layout=layout, dtype=x.dtype)
    yl = bn(x)
    dxl = bn.backward(dy)
    for k, v in dict(mean=mean, var=var, dw=dw, db=db, rm=rm, rv=rv, dwe=dwe,
                     dbe=dbe, gw=bn.grad_weight, gb=bn.grad_bias).items():
        res[k] = np.asarray(v, np.float64).tolist()
    for k, v in dict(y=y, dx=dx, ye=ye, dxe=dxe, yl=yl, dxl=dxl).items():
        res[k] = sample(v)
    return res


def main():
    outdir, kind = sys.argv[1], sys.argv[2]
    import numba

    import fastbn

    results = {name: run_case(fastbn, x, layout) for name, x, layout in cases(kind)}
    disp = []
    for d in fastbn.kernels.dispatchers():
        disp.append({
            "name": getattr(d.py_func, "__qualname__", repr(d)),
            "misses": int(sum(d.stats.cache_misses.values())),
            "hits": int(sum(d.stats.cache_hits.values())),
            "nogil": bool(d.targetoptions.get("nogil", False)),
        })
    info = {
        "fastbn_file": fastbn.__file__,
        "numba_cache_dir": numba.config.CACHE_DIR,
        "dispatchers": disp,
        "results": results,
        "pid": os.getpid(),
    }
    with open(os.path.join(outdir, "result.json"), "w") as f:
        json.dump(info, f)


if __name__ == "__main__":
    main()
