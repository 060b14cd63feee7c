"""Launch tests/mpi under ``mpiexec -n 2`` and ``-n 3``; skipped when mpi4py
or ``mpiexec`` is missing (``pip install -e ".[mpi]"`` provides both)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mpi4py")
MPIEXEC = shutil.which("mpiexec")
pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not found")

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("ranks", [2, 3])
def test_sync_batchnorm_under_mpiexec(ranks):
    env = dict(os.environ, NUMBA_NUM_THREADS="1")
    cmd = [MPIEXEC, "-n", str(ranks), sys.executable, "-m", "pytest", "-q",
           "-p", "no:cacheprovider", str(ROOT / "tests" / "mpi")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert out.count(" passed") == ranks and "skipped" not in out, out[-3000:]
