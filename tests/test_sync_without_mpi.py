"""Without mpi4py, fastbn works and the sync features say what to install."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import fastbn
from helpers import assert_message


@pytest.fixture
def no_mpi4py(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    monkeypatch.setitem(sys.modules, "mpi4py.MPI", None)


def test_sync_layer_needs_mpi4py(no_mpi4py):
    with pytest.raises(ImportError) as excinfo:
        fastbn.SyncBatchNorm(3)
    assert_message(excinfo, ("mpi4py",), ("fastbn[mpi]",))


def test_functional_comm_needs_mpi4py(no_mpi4py):
    x = np.ones((4, 3), np.float32)
    with pytest.raises(ImportError) as excinfo:
        fastbn.batch_norm_forward(x, comm=object())
    assert_message(excinfo, ("fastbn[mpi]",))
    y, _ = fastbn.batch_norm_forward(x, training=False, running_mean=np.zeros(3, np.float32),
                                     running_var=np.ones(3, np.float32), comm=object())
    np.testing.assert_allclose(y, x / np.sqrt(1 + 1e-5), rtol=1e-6)  # eval: no communication


def test_import_does_not_load_mpi4py():
    code = "import sys, fastbn; fastbn.BatchNorm(2); assert 'mpi4py' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
