"""Shared fixtures. Helpers live in helpers.py, the reference in reference.py."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

# Parallel twins compile in this process, as they always do without a
# compile helper: tests that compare thread counts run what they name.
# (tests/test_warmup.py tests the helper.)
os.environ["FASTBN_BACKGROUND_COMPILE"] = "0"

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:  # also under --import-mode=importlib
    sys.path.insert(0, str(TESTS_DIR))

try:  # keep hypothesis runs short and free of deadline flakiness
    from hypothesis import HealthCheck, settings

    settings.register_profile(
        "fastbn",
        deadline=None,
        max_examples=25,
        suppress_health_check=[HealthCheck.too_slow],
        derandomize=os.environ.get("FASTBN_HYPOTHESIS_RANDOM") is None,
    )
    settings.load_profile("fastbn")
except ImportError:  # pragma: no cover
    pass


@pytest.fixture
def rng(request):
    """A generator seeded from the test's id: reproducible, yet different
    data for every test."""
    seed = sum(ord(c) * (i + 1) for i, c in enumerate(request.node.nodeid))
    return np.random.default_rng(seed % (2**32))

# tests/mpi runs under mpiexec (launched by test_mpi.py), not in this process.
if not any(k in os.environ for k in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK")):
    collect_ignore = ["mpi"]


@pytest.fixture(autouse=True, scope="session")
def _warm_compile_cache():
    """Compile every kernel signature the tests reach once, in parallel
    worker processes, into the compile cache that this process and the
    test subprocesses share (``python -m fastbn warmup --strided``); a warm
    cache makes this a load. Tests of the cache itself use caches of their
    own."""
    from fastbn import _warmup

    _warmup.warmup(strided=True, quiet=True)


@pytest.fixture(autouse=True, scope="session")
def _default_kernel_choices(_warm_compile_cache):
    """Every test process sees the machine-derived defaults (not a local
    ``python -m fastbn tune`` result), with the parallel twins taking inputs
    from 32K elements, so that helpers.LARGE_DIMS exercise them."""
    from fastbn import _choices, _jit

    saved = _choices.CHOICES, _jit.PARALLEL_MIN_SIZE
    _choices.CHOICES = _choices.derive(_choices.MACHINE)
    _jit.PARALLEL_MIN_SIZE = 1 << 15
    yield
    _choices.CHOICES, _jit.PARALLEL_MIN_SIZE = saved
