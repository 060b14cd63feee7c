"""Threads and fork (SPEC "Concurrency and processes"), BatchNorm and the
rest of the family."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import fastbn
import reference as ref

SCRIPTS = Path(__file__).resolve().parent / "scripts"


def _make_tasks():
    """Deterministic calls returning tuples of arrays: functional and layer
    calls, serial-size and parallel-size inputs, both layouts and dtypes."""
    rng = np.random.default_rng(4242)
    big = (rng.standard_normal((16, 32, 32, 32)) * 2 + 3).astype(np.float32)
    big_nhwc = (rng.standard_normal((16, 32, 32, 32)) - 1).astype(np.float32)
    mid64 = rng.standard_normal((8, 5, 40, 40)) * 0.5 + 10.0
    small32 = rng.standard_normal((4, 3, 5)).astype(np.float32)
    small64 = rng.standard_normal((6, 7)) + 2.0
    strided = big[:, ::2, 1::2, ::-1]

    shared = fastbn.BatchNorm(32, layout="NHWC")
    shared.running_mean[...] = np.linspace(-1, 1, 32)
    shared.running_var[...] = np.linspace(0.5, 2, 32)
    shared.eval()

    def functional(x, layout):
        def task():
            C = x.shape[1 if layout == "NCHW" else -1]
            rm, rv = np.zeros(C, x.dtype), np.ones(C, x.dtype)
            w = np.linspace(0.5, 2.0, C).astype(x.dtype)
            y, cache = fastbn.batch_norm_forward(x, w, None, running_mean=rm,
                                                 running_var=rv, layout=layout)
            dx, dw, db = fastbn.batch_norm_backward(np.ones_like(x) * 0.5 - y, cache)
            ye, _ = fastbn.batch_norm_forward(x, w, None, training=False,
                                              running_mean=rm, running_var=rv,
                                              layout=layout)
            return (y, dx, dw, db, rm, rv, ye)
        return task

    def stats(x, layout):
        return lambda: fastbn.batch_stats(x, layout=layout)

    def layer(x, layout):
        def task():
            C = x.shape[1 if layout == "NCHW" else -1]
            bn = fastbn.BatchNorm(C, layout=layout, dtype=x.dtype)
            y1 = bn(x)
            dx = bn.backward(y1 * 0.25)
            y2 = bn(x)
            bn.eval()
            y3 = bn(x)
            return (y1, dx, bn.grad_weight, bn.grad_bias, y2, y3, bn.running_mean,
                    bn.running_var)
        return task

    def shared_eval(x):
        return lambda: (shared(x),)

    def family(x, layout):
        def task():
            C = x.shape[1 if layout == "NCHW" else -1]
            rm, rv = np.zeros(C), np.ones(C)
            g = 4 if C % 4 == 0 else 1
            yg, cg = fastbn.group_norm_forward(x, g, layout=layout)
            yi, ci = fastbn.instance_norm_forward(x, running_mean=rm, running_var=rv,
                                                  layout=layout)
            yl, cl = fastbn.layer_norm_forward(x, x.shape[-1])
            return (yg, *fastbn.group_norm_backward(yg * 0.5, cg), yi,
                    *fastbn.instance_norm_backward(yi * 0.5, ci), rm, rv, yl,
                    *fastbn.layer_norm_backward(yl * 0.5, cl))
        return task

    return [
        functional(big, "NCHW"), functional(big_nhwc, "NHWC"),
        functional(mid64, "NCHW"), functional(small32, "NCHW"),
        functional(small64, "NHWC"), functional(strided, "NCHW"),
        stats(big, "NCHW"), stats(big_nhwc, "NHWC"), stats(small64, "NCHW"),
        layer(big, "NCHW"), layer(small32, "NCHW"), layer(mid64, "NCHW"),
        layer(big_nhwc, "NHWC"),
        shared_eval(big_nhwc), shared_eval(big_nhwc[:2]),
        family(big, "NCHW"), family(big_nhwc, "NHWC"), family(small32, "NCHW"),
        family(strided, "NCHW"),
    ], {"big": big, "small64": small64}


def test_threads_bit_identical_to_serial():
    tasks, data = _make_tasks()
    serial = [task() for task in tasks]
    # the serial results themselves are right (spot checks vs the reference)
    mean, var = ref.stats(data["big"])
    np.testing.assert_allclose(serial[6][0], mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(serial[6][1], var, rtol=1e-4)
    np.testing.assert_allclose(serial[8][0], ref.stats(data["small64"])[0], rtol=1e-10)

    n_threads, rounds = 4, 3
    barrier = threading.Barrier(n_threads)

    def worker(seed):
        order = np.random.default_rng(seed).permutation(len(tasks) * rounds) % len(tasks)
        barrier.wait()
        return [(int(i), tasks[i]()) for i in order]

    with ThreadPoolExecutor(n_threads) as pool:
        outcomes = list(pool.map(worker, range(n_threads)))
    calls = 0
    for outcome in outcomes:
        for i, result in outcome:
            calls += 1
            assert len(result) == len(serial[i])
            for got, want in zip(result, serial[i]):
                assert got.dtype == want.dtype and got.shape == want.shape
                assert np.array_equal(got, want), f"task {i} differs from serial"
    assert calls == n_threads * rounds * len(tasks)


def test_threads_share_running_stats_arrays_functional():
    """Eval calls from many threads on the same arrays (read-only use)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((8, 4, 32, 32)).astype(np.float32)
    rm = rng.uniform(-1, 1, 4).astype(np.float32)
    rv = rng.uniform(0.5, 2, 4).astype(np.float32)
    expected, _ = fastbn.batch_norm_forward(x, training=False, running_mean=rm,
                                            running_var=rv)
    np.testing.assert_allclose(expected, ref.forward_eval(x, None, None, rm, rv),
                               rtol=1e-5, atol=1e-5)

    def call(_):
        return fastbn.batch_norm_forward(x, training=False, running_mean=rm,
                                         running_var=rv)[0]

    with ThreadPoolExecutor(4) as pool:
        for y in pool.map(call, range(40)):
            assert np.array_equal(y, expected)


def test_kernels_release_the_gil():
    """SPEC: kernels release the GIL (nogil=True on every dispatcher)."""
    dispatchers = list(fastbn.kernels.dispatchers())
    assert dispatchers
    for d in dispatchers:
        assert d.targetoptions.get("nogil") is True, d


def _env():
    env = dict(os.environ)
    root = str(Path(fastbn.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(
        [root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


@pytest.mark.skipif(sys.platform == "win32" or "fork" not in
                    __import__("multiprocessing").get_all_start_methods(),
                    reason="needs fork")
def test_fork_pool_after_parallel_use():
    proc = subprocess.run([sys.executable, str(SCRIPTS / "fork_pool.py")],
                          env=_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, (proc.returncode, proc.stdout[-2000:], proc.stderr[-4000:])
    assert "FORK-OK 12 results from" in proc.stdout, proc.stdout


_FORK_STATES = r"""
import os, sys
import numpy as np
import fastbn
from fastbn import _jit

def child_state():
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        x = np.random.default_rng(0).standard_normal((16, 32, 32, 32)).astype(np.float32)
        mean, _ = fastbn.batch_stats(x)
        ok = np.allclose(mean, x.astype(np.float64).mean(axis=(0, 2, 3)), atol=1e-6)
        os.write(w, b"%d %d" % (_jit._serial_only, ok))
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    return os.read(r, 16).decode()

before = child_state()
fastbn.batch_stats(np.ones((64, 64, 32, 32), np.float32))  # parallel path
after = child_state()
print(before, after)
"""


def test_fork_goes_serial_only_after_parallel_use():
    """A child forked before any parallel region may keep the thread pool
    (fork servers of benchmark runners); one forked after must go serial.
    Both compute correctly."""
    proc = subprocess.run([sys.executable, "-c", _FORK_STATES], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    before, after = proc.stdout.split()[0:2], proc.stdout.split()[2:4]
    assert before == ["0", "1"], proc.stdout
    assert after == ["1", "1"], proc.stdout
