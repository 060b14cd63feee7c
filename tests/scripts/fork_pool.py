"""Fork after use: the parent runs fastbn's parallel path, then a fork-based
multiprocessing pool's workers call fastbn on large and small inputs.

Prints FORK-OK when every child result matches the parent's; exits non-zero
(or hangs, caught by the caller's timeout) otherwise.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys

import numpy as np

import fastbn

_rng = np.random.default_rng(99)
DATA = {
    "big_nchw": ((_rng.standard_normal((16, 32, 32, 32)) * 3 + 2).astype(np.float32), "NCHW"),
    "big_nhwc": ((_rng.standard_normal((16, 32, 32, 32)) - 1).astype(np.float32), "NHWC"),
    "big_f64": (_rng.standard_normal((8, 3, 64, 64)), "NCHW"),
    "small": ((_rng.standard_normal((4, 3, 5)) + 4).astype(np.float64), "NCHW"),
}


def compute(which):
    x, layout = DATA[which]
    C = x.shape[1 if layout == "NCHW" else -1]
    rm, rv = np.zeros(C, x.dtype), np.ones(C, x.dtype)
    y, cache = fastbn.batch_norm_forward(x, running_mean=rm, running_var=rv,
                                         layout=layout)
    dx, dw, db = fastbn.batch_norm_backward(np.ones_like(x) - x / 10, cache)
    mean, var = fastbn.batch_stats(x, layout=layout)
    bn = fastbn.BatchNorm(C, layout=layout, dtype=x.dtype)
    yl = bn(x)
    yg, gcache = fastbn.group_norm_forward(x, C, layout=layout)  # InstanceNorm's kernels too
    dxg, _, _ = fastbn.group_norm_backward(np.ones_like(x) - x / 10, gcache)
    yn, _ = fastbn.layer_norm_forward(x, x.shape[-1])
    return which, os.getpid(), dict(y=y, dx=dx, dw=dw, db=db, mean=mean, var=var,
                                    rm=rm, rv=rv, yl=yl, lrm=bn.running_mean, yg=yg, dxg=dxg,
                                    yn=yn)


def main():
    parent = {k: compute(k)[2] for k in DATA}
    # sanity of the parent's statistics against plain float64 NumPy
    for k, (x, layout) in DATA.items():
        axes = tuple(i for i in range(x.ndim) if i != (1 if layout == "NCHW" else x.ndim - 1))
        np.testing.assert_allclose(parent[k]["mean"], x.astype(np.float64).mean(axis=axes),
                                   rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(parent[k]["var"], x.astype(np.float64).var(axis=axes),
                                   rtol=1e-4)
    ctx = mp.get_context("fork")
    with ctx.Pool(2) as pool:
        jobs = list(DATA) * 3
        children = pool.map_async(compute, jobs, chunksize=1).get(timeout=60)
    pids = set()
    for which, pid, res in children:
        pids.add(pid)
        assert pid != os.getpid()
        for key, value in res.items():
            expected = parent[which][key]
            if which == "small":
                np.testing.assert_array_equal(value, expected, err_msg=f"{which} {key}")
            else:
                np.testing.assert_allclose(value, expected, rtol=2e-6, atol=2e-6,
                                           err_msg=f"{which} {key}")
    # the parent still works after forking
    again = compute("big_nchw")[2]
    np.testing.assert_array_equal(again["y"], parent["big_nchw"]["y"])
    print("FORK-OK", len(children), "results from", len(pids), "workers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
