"""``python -m fastbn warmup`` and ``python -m fastbn cache``.

The end-to-end test runs two warmups at once on an empty cache (they must not
corrupt it), then a workload in a fresh process that must compile nothing.
One layout and one dtype keep it to a few seconds of compiling.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastbn
from fastbn import _jit, _warmup, kernels

PKG_ROOT = Path(fastbn.__file__).resolve().parent.parent
WORKLOAD = Path(__file__).resolve().parent / "scripts" / "workload.py"


def _env(cache: Path) -> dict:
    """A user's environment (the helper process allowed) with its own cache."""
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "PYTHONPATH")}
    return {**env, "NUMBA_CACHE_DIR": str(cache), "PYTHONPATH": str(PKG_ROOT),
            "FASTBN_BACKGROUND_COMPILE": "1"}


def _fastbn(args, env, timeout=600):
    proc = subprocess.run([sys.executable, "-m", "fastbn", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, (args, proc.stdout[-2000:], proc.stderr[-4000:])
    return proc.stdout


def test_signatures_reach_every_kernel():
    """The dry run over both layouts and dtypes calls every kernel of the
    package, each twin, in both dtypes."""
    sigs = _warmup.signatures()
    every = {(k.__name__, twin) for group in kernels.KERNELS.values() for k in group.values()
             for twin in (("serial",) if k.parallel is None else ("serial", "parallel"))}
    assert set(sigs) == every
    for (name, _), types in sigs.items():
        dtypes = {str(t.dtype) for t in types[0] if hasattr(t, "ndim") and t.ndim > 1}
        assert dtypes <= {"float32", "float64"}
        float64_only = name in ("update_running", "merge_groups")  # statistics in, out
        assert {str(t[0].dtype) for t in types} >= ({"float64"} if float64_only
                                                    else {"float32", "float64"}), name


def test_recording_runs_nothing():
    x = np.ones((4, 3, 2, 2))
    with _jit.recording() as calls:
        y, _ = fastbn.batch_norm_forward(x)
    assert [k.__name__ for k, _ in calls] == ["stats_walk", "affine_cf"]
    assert _jit._recorded is None
    y, _ = fastbn.batch_norm_forward(x)  # and runs again afterwards
    np.testing.assert_array_equal(y, np.zeros_like(x))


def test_readonly_input_takes_the_writable_inputs_kernels(rng):
    """Kernels see inputs through read-only views: a read-only x compiles no
    variant of its own."""
    x = rng.standard_normal((4, 3, 5))
    frozen = x.copy()
    frozen.flags.writeable = False
    with _jit.recording() as calls:
        fastbn.batch_norm_forward(x, np.ones(3), np.zeros(3))
    with _jit.recording() as frozen_calls:
        fastbn.batch_norm_forward(frozen, np.ones(3), np.zeros(3))
    assert [t for _, t in calls] == [t for _, t in frozen_calls]


@pytest.mark.skipif(os.name != "posix", reason="POSIX processes")
def test_warmup_then_nothing_compiles(tmp_path):
    cache = tmp_path / "cache"
    env = _env(cache)
    args = ["--layout", "NHWC", "--dtype", "float64"]
    out = _fastbn(["cache", *args], env)
    assert "0 of" in out and "cold" in out and "warm (" not in out
    # two warmups at once on the same empty cache
    procs = [subprocess.Popen([sys.executable, "-m", "fastbn", "warmup", *args, "--jobs", "1"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for p in procs:
        stdout, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, stderr[-4000:]
    assert "signatures compiled" in stdout
    out = _fastbn(["cache", *args], env)
    assert "cold" not in out
    total = sum(len(t) for t in _warmup.signatures(["NHWC"], ["float64"]).values())
    assert f"{total} of {total} signatures" in out

    # a fresh process running NHWC float64 loads every kernel, compiles none
    probe = ("import json, numpy as np, fastbn\n"
             "from fastbn import kernels\n"
             "for shape in [(4, 5, 6, 3), (8, 64, 64, 3), (9000, 5)]:\n"
             "    x = np.random.default_rng(0).standard_normal(shape)\n"
             "    bn = fastbn.BatchNorm(shape[-1], layout='NHWC', dtype=np.float64)\n"
             "    y = bn.forward(x); bn.backward(np.ones_like(y)); bn.eval(); bn.forward(x)\n"
             "print(json.dumps({d.py_func.__name__: [sum(d.stats.cache_hits.values()),\n"
             "      sum(d.stats.cache_misses.values())] for d in kernels.dispatchers()}))\n")
    proc = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    import json

    counts = json.loads(proc.stdout)
    assert not {k: v for k, v in counts.items() if v[1]}, "compiled after warmup"
    assert sum(v[0] for v in counts.values()) >= 5

    out = _fastbn(["cache", "--clear"], env)
    assert "removed" in out
    assert not [p for p in cache.rglob("*") if p.suffix in (".nbi", ".nbc")]
    out = _fastbn(["cache", *args], env)
    assert "0 of" in out


@pytest.mark.skipif(os.name != "posix", reason="POSIX processes")
def test_parallel_twin_compiled_in_the_background(tmp_path):
    """With an empty cache, a large input's first call runs the serial twin
    while the helper process compiles the parallel one into the cache; a
    later call loads it from there (nothing compiled in place) and agrees
    with the first to the last bit or so (a freshly compiled kernel and a
    cache-loaded one have been seen to differ by an ulp: docs/threads.md)."""
    probe = ("import json, time, numpy as np, fastbn\n"
             "from fastbn import kernels, _background\n"
             "x = np.random.default_rng(1).standard_normal((64, 3, 1, 2048))\n"
             "first = fastbn.batch_stats(x)\n"
             "k = kernels.stats_cf\n"
             "pending = len(k.jobs)\n"
             "deadline = time.time() + 300\n"
             "while k.jobs and time.time() < deadline:\n"
             "    time.sleep(0.2)\n"
             "    k._load_finished()\n"
             "later = fastbn.batch_stats(x)\n"
             "print(json.dumps(dict(pending=pending, left=len(k.jobs),\n"
             "    same=all(np.allclose(a, b, rtol=1e-15, atol=0) for a, b in zip(first, later)),\n"
             "    hits=sum(k.parallel.stats.cache_hits.values()),\n"
             "    misses=sum(k.parallel.stats.cache_misses.values()),\n"
             "    serial=sum(k.serial.stats.cache_misses.values()))))\n")
    env = _env(tmp_path / "cache")
    proc = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    import json

    r = json.loads(proc.stdout)
    if os.cpu_count() < 2:
        pytest.skip("one core: the parallel twin compiles in place")
    assert r == dict(pending=1, left=0, same=True, hits=1, misses=0, serial=1), r
