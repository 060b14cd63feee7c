"""The small-batch demo (``fastbn.demo_small_batch``, ``python -m fastbn demo --small-batch``)."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest

import fastbn
from fastbn import demo, demo_small_batch as sb

KEYS = [key for key, _ in sb.METHODS]


@pytest.fixture(scope="module")
def short_run():
    pytest.importorskip("sklearn")
    out = io.StringIO()
    result = sb.run(epochs=2, hidden=(16, 16), progress=False, file=out)
    return result, out.getvalue()


def _norms(model):
    return [layer for layer in model.layers if isinstance(layer, fastbn.BatchNorm)]


def test_histories_and_models(short_run):
    result, _ = short_run
    assert set(KEYS) <= set(result)
    for key in KEYS:
        h = result[key]
        for name in ("train_loss", "train_acc", "test_loss", "test_acc", "seconds"):
            assert len(h[name]) == 2, (key, name)
        assert all(np.isfinite(h["train_loss"])) and all(0 <= a <= 1 for a in h["test_acc"])
    models = result["models"]
    plain, ghost, renorm = (_norms(models[k]) for k in KEYS)
    assert len(plain) == len(ghost) == len(renorm) == 2
    assert all(layer.virtual_batch_size is None and type(layer) is fastbn.BatchNorm
               for layer in plain)
    assert all(layer.virtual_batch_size == sb.VIRTUAL_BATCH_SIZE for layer in ghost)
    assert all(isinstance(layer, fastbn.BatchRenorm) for layer in renorm)
    # relaxed to their final values after the first epoch's ramp
    assert all(layer.rmax == sb.RMAX and layer.dmax == sb.DMAX for layer in renorm)
    steps = (len(demo.load_data(sb.SEED)[0]) // sb.BATCH_SIZE) * 2
    for layer in plain + ghost + renorm:
        assert layer.num_batches_tracked == steps
    assert result["config"]["batch_size"] == 4 and result["config"]["sizes"] == (64, 16, 16, 10)


def test_test_accuracy_is_eval_mode(short_run):
    result, _ = short_run
    _, x_test, _, y_test = demo.load_data(sb.SEED)
    for key in KEYS:
        model = result["models"][key]
        _, acc = demo.evaluate(model, x_test, y_test)
        assert acc == result[key]["test_acc"][-1]
        assert model.training


def test_table_is_printed(short_run):
    _, text = short_run
    assert "| epoch | BatchNorm loss |" in text and "BatchRenorm test acc" in text
    assert "|     2 |" in text and "ghost BN (v=2)" in text and "wall time" in text
    table = sb.format_table(short_run[0]).splitlines()
    assert len(table) == 4 and table[0].count("|") == 11


def test_same_initial_weights_and_deterministic():
    pytest.importorskip("sklearn")
    models = [sb.build_mlp((64, 8, 10), key, seed=2) for key in KEYS]
    weights = [[layer.weight for layer in m.layers if isinstance(layer, demo.Linear)]
               for m in models]
    for other in weights[1:]:
        for a, b in zip(weights[0], other):
            np.testing.assert_array_equal(a, b)
    kw = {"epochs": 1, "hidden": (8,), "progress": False}
    first = sb.run(seed=1, file=io.StringIO(), **kw)
    second = sb.run(seed=1, file=io.StringIO(), **kw)
    for key in KEYS:
        assert first[key]["test_acc"] == second[key]["test_acc"]
        assert first[key]["train_loss"] == second[key]["train_loss"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="virtual_batch_size=3 must divide"):
        sb.run(epochs=1, virtual_batch_size=3, progress=False, file=io.StringIO())
    with pytest.raises(ValueError, match="epochs"):
        sb.run(epochs=0, progress=False, file=io.StringIO())
    with pytest.raises(ValueError, match="method"):
        sb.build_mlp((4, 4, 2), "group", seed=0)


def test_cli(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    png = tmp_path / "small.png"
    proc = subprocess.run([sys.executable, "-m", "fastbn", "demo", "--small-batch", "--epochs",
                           "1", "--plot", str(png), "--no-progress"], capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "small-batch demo" in proc.stdout and "lr=0.3, batch 4" in proc.stdout
    assert "|     1 |" in proc.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    helped = subprocess.run([sys.executable, "-m", "fastbn", "demo", "--help"],
                            capture_output=True, text=True, timeout=600, check=False)
    assert "--small-batch" in helped.stdout
