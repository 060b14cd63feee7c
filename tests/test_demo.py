"""The training demo (``fastbn.demo``, ``python -m fastbn demo``)."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest

import fastbn
from fastbn import demo

EPOCHS = 2


def _run_cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "fastbn", "demo", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def traced():
    """A short run, with every ``BatchNorm`` call logged as (layer, training, batch size)."""
    pytest.importorskip("sklearn")
    calls = []
    forward = fastbn.BatchNorm.forward

    def spy(self, x):
        calls.append((self, self.training, len(x)))
        return forward(self, x)

    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fastbn.BatchNorm, "__call__", spy)
        result = demo.run(epochs=EPOCHS, progress=False, file=out)
    return result, calls, out.getvalue()


def _bn_layers(model):
    return [layer for layer in model.layers if isinstance(layer, fastbn.BatchNorm)]


def test_bn_trains_faster_than_plain(traced):
    result, _, _ = traced
    bn, plain = result["bn"], result["plain"]
    for h in (bn, plain):
        assert all(len(h[k]) == EPOCHS for k in ("train_loss", "train_acc", "test_loss", "test_acc", "seconds"))
        assert all(np.isfinite(h["train_loss"]))
    assert bn["train_loss"][-1] < plain["train_loss"][-1]
    assert bn["test_acc"][-1] > plain["test_acc"][-1]


def test_test_accuracy_comes_from_running_statistics(traced):
    result, calls, _ = traced
    model = result["models"]["bn"]
    layers = _bn_layers(model)
    assert len(layers) == len(demo.HIDDEN)
    calls = [c for c in calls if any(c[0] is layer for layer in layers)]
    n_test = len(demo.load_data(demo.SEED)[1])
    eval_calls = [c for c in calls if not c[1]]
    train_calls = [c for c in calls if c[1]]
    assert len(eval_calls) == EPOCHS * len(layers)
    assert all(size == n_test for _, _, size in eval_calls)
    assert train_calls and all(size == demo.BATCH_SIZE for _, _, size in train_calls)
    steps = len(train_calls) // len(layers)
    for layer in layers:
        assert layer.training
        assert layer.num_batches_tracked == steps
        assert not np.allclose(layer.running_mean, 0)

    _, x_test, _, y_test = demo.load_data(demo.SEED)
    loss, acc = demo.evaluate(model, x_test, y_test)
    assert model.training and all(layer.training for layer in layers)
    assert acc == result["bn"]["test_acc"][-1]
    assert loss == pytest.approx(result["bn"]["test_loss"][-1])
    model.eval()
    try:
        whole, first = model(x_test), model(x_test[:2])
    finally:
        model.train()
    np.testing.assert_allclose(first, whole[:2], rtol=1e-12, atol=1e-12)


def test_table_is_printed(traced):
    _, _, text = traced
    assert "| epoch | BN loss |" in text and "plain test acc" in text
    assert "|     2 |" in text and "wall time" in text


def test_same_initial_linear_weights_and_deterministic():
    pytest.importorskip("sklearn")
    sizes = (64, 32, 32, 10)
    bn = demo.build_mlp(sizes, batch_norm=True, seed=3)
    plain = demo.build_mlp(sizes, batch_norm=False, seed=3)
    linear = [[layer for layer in m.layers if isinstance(layer, demo.Linear)] for m in (bn, plain)]
    assert len(linear[0]) == len(linear[1]) == 3
    for a, b in zip(*linear):
        np.testing.assert_array_equal(a.weight, b.weight)
    assert len(_bn_layers(bn)) == 2 and not _bn_layers(plain)

    kw = {"epochs": 1, "hidden": (16, 16), "progress": False, "file": io.StringIO()}
    first, second = demo.run(seed=1, **kw), demo.run(seed=1, **kw)
    for name in ("bn", "plain"):
        for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
            assert first[name][key] == second[name][key]


def test_softmax_cross_entropy_matches_finite_differences():
    rng = np.random.default_rng(0)
    logits = 50 * rng.standard_normal((5, 4))
    labels = np.array([0, 3, 1, 2, 3])
    loss, grad = demo.softmax_cross_entropy(logits, labels)
    assert np.isfinite(loss)
    h = 1e-6
    for i, j in [(0, 0), (1, 3), (2, 2), (4, 1)]:
        up, down = logits.copy(), logits.copy()
        up[i, j] += h
        down[i, j] -= h
        numeric = (demo.softmax_cross_entropy(up, labels)[0] - demo.softmax_cross_entropy(down, labels)[0]) / (2 * h)
        assert grad[i, j] == pytest.approx(numeric, abs=1e-6)


def test_missing_sklearn_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r'pip install -e "\.\[demo\]"'):
        demo.run(epochs=1, progress=False, file=io.StringIO())


def test_runs_without_tqdm(monkeypatch):
    pytest.importorskip("sklearn")
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    out = io.StringIO()
    result = demo.run(epochs=1, hidden=(16,), progress=True, file=out)
    assert "|     1 |" in out.getvalue()
    assert result["config"]["sizes"] == (64, 16, 10) and "MLP 64-16-10," in out.getvalue()


def test_plot_title_names_the_whole_network(tmp_path, monkeypatch):
    """The title gives every layer width, as the printed header does, not
    the hidden widths alone."""
    figure = pytest.importorskip("matplotlib.figure")
    titles = []
    suptitle = figure.Figure.suptitle
    monkeypatch.setattr(figure.Figure, "suptitle",
                        lambda self, t, **kw: titles.append(t) or suptitle(self, t, **kw))
    history = {"train_loss": [1.0, 0.5], "train_acc": [0.5, 0.8], "test_acc": [0.6, 0.9]}
    result = {"config": {"sizes": (64, 64, 64, 64, 64, 10), "hidden": (64, 64, 64, 64),
                         "lr": 5.0, "batch_size": 64},
              "bn": history, "plain": history}
    demo.plot_history(result, tmp_path / "curves.png")
    assert titles == ["digits, sigmoid MLP 64-64-64-64-64-10, SGD lr=5, batch 64"]


def test_bad_run_arguments():
    for kw in ({"epochs": 0}, {"epochs": -1}, {"lr": 0.0}, {"lr": float("nan")}):
        with pytest.raises(ValueError):
            demo.run(progress=False, file=io.StringIO(), **kw)


def test_cli_writes_table_and_plot(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    png = tmp_path / "curves.png"
    proc = _run_cli("--epochs", "1", "--lr", "2", "--seed", "1", "--plot", str(png), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "| epoch | BN loss |" in proc.stdout and "|     1 |" in proc.stdout
    assert "lr=2," in proc.stdout and "seed 1" in proc.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args, message", [
    (("--epochs", "0"), "expected an integer >= 1, got 0"),
    (("--epochs", "-2"), "expected an integer >= 1, got -2"),
    (("--epochs", "x"), "expected an integer >= 1, got x"),
    (("--lr", "0"), "expected a finite number > 0, got 0"),
    (("--lr", "fast"), "expected a number > 0, got 'fast'"),
    (("--seed", "-1"), "expected an integer >= 0, got -1"),
])
def test_bad_cli_arguments_are_usage_errors(args, message):
    proc = _run_cli(*args)
    assert proc.returncode == 2
    assert message in proc.stderr


def test_help():
    proc = _run_cli("--help")
    assert proc.returncode == 0, proc.stderr
    for option in ("--epochs", "--lr", "--seed", "--plot", "--no-progress"):
        assert option in proc.stdout
