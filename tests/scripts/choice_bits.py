"""Run by test_choices.py in a fresh process on the test session's warm
compile cache: every kernel choice must give the same bits. Every kernel is
loaded from the cache (the process reports what it compiled, which must be
nothing): a process that loads some kernels and compiles others can differ
in the last bit, a known and separate issue (docs/threads.md).

Prints one JSON line: {layout: {...}, "compiled": {dispatcher: count}}.
"""

import json

import numpy as np

import fastbn
from fastbn import _choices, _engine, _jit, _layout
from fastbn._choices import Choices

rng = np.random.default_rng(20261123)
out = {}
for layout in ("NCHW", "NHWC"):
    x = rng.standard_normal((8, 32, 32, 40)).astype(np.float32) * 3 + 7  # 5 KiB runs
    if layout == "NHWC":
        x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    dy = rng.standard_normal(x.shape).astype(np.float32)
    w = rng.standard_normal(32).astype(np.float32)
    results, fused = [], []
    for fused_bytes, parallel_min in ((0, 1 << 30), (1 << 30, 1), (1 << 30, 1 << 30), (0, 1)):
        _choices.CHOICES = Choices(parallel_min, fused_bytes, "test")
        _jit.PARALLEL_MIN_SIZE = parallel_min
        axis = 1 if layout == "NCHW" else 3
        fused.append(_engine.channel_per_task(_layout.Plan(x, axis), x, 2))
        y, cache = fastbn.batch_norm_forward(x, w, layout=layout)
        results.append((y, cache.mean, cache.var, *fastbn.batch_norm_backward(dy, cache)))
    names = ("y", "mean", "var", "dx", "dweight", "dbias")
    out[layout] = {"fused": fused, "equal": [[n, bool(np.array_equal(a, b))] for other in results[1:]
                                             for n, a, b in zip(names, results[0], other)]}
    results = []  # GroupNorm: a (sample, group) or a sample per task, or two passes
    for fused_bytes, parallel_min in ((0, 1 << 30), (1 << 30, 1), (1 << 30, 1 << 30), (0, 1)):
        _choices.CHOICES = Choices(parallel_min, fused_bytes, "test")
        _jit.PARALLEL_MIN_SIZE = parallel_min
        y, cache = fastbn.group_norm_forward(x, 8, w, layout=layout)
        results.append((y, cache.mean, cache.var, *fastbn.group_norm_backward(dy, cache)))
    out[f"group {layout}"] = {"equal": [[n, bool(np.array_equal(a, b))] for other in results[1:]
                                        for n, a, b in zip(names, results[0], other)]}
out["compiled"] = {d.py_func.__name__: n for d in fastbn.kernels.dispatchers()
                   if (n := sum(d.stats.cache_misses.values()))}
print(json.dumps(out))
