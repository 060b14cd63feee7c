"""Batch normalization inside a homemade NumPy network, on real data.

Two multilayer perceptrons with sigmoid activations learn scikit-learn's
handwritten digits (8x8 images, 10 classes) with plain SGD at a high learning
rate. Both start from the same Linear weights; one has a
:class:`fastbn.BatchNorm` after every hidden Linear layer. This reproduces the
claims of Ioffe & Szegedy (2015): the BN network trains at a learning rate
where the plain network stalls, and reaches a given accuracy in far fewer
epochs. Test accuracy is measured in eval mode, from the running statistics.

The network is the kind of small framework that embeds fastbn: every layer has
``__call__``, ``backward``, ``parameters``, ``gradients``, ``train`` and
``eval``, and ``fastbn.BatchNorm`` is used only through that public API.

Run it with ``python -m fastbn demo`` (needs ``pip install -e ".[demo]"``).
"""

from __future__ import annotations

import importlib
import math
import numbers
import os
import sys
import time
from itertools import pairwise
from typing import IO, Any, Callable, Protocol

import numpy as np

import fastbn

__all__ = [
    "SGD",
    "Linear",
    "Sequential",
    "Sigmoid",
    "build_mlp",
    "evaluate",
    "format_table",
    "load_data",
    "plot_history",
    "run",
    "softmax_cross_entropy",
    "train_epoch",
]

EPOCHS = 30
LR = 5.0
BATCH_SIZE = 64
HIDDEN = (64, 64, 64, 64)
SEED = 0
TEST_SIZE = 0.25
TARGET_ACCURACY = 0.95

_INSTALL_HINT = 'the demo needs scikit-learn and matplotlib: pip install -e ".[demo]"'


class Layer(Protocol):
    """What :class:`Sequential` and :class:`SGD` expect of a layer;
    :class:`fastbn.BatchNorm` has all of it."""

    def __call__(self, x: np.ndarray) -> np.ndarray: ...

    def backward(self, dy: np.ndarray) -> np.ndarray: ...

    def parameters(self) -> dict[str, np.ndarray]: ...

    def gradients(self) -> dict[str, np.ndarray | None]: ...

    def train(self, mode: bool = True) -> Any: ...

    def eval(self) -> Any: ...


class _Stateless:
    """Train/eval switch and empty parameter dicts for layers that need neither."""

    training = True

    def train(self, mode: bool = True) -> _Stateless:
        self.training = mode
        return self

    def eval(self) -> _Stateless:
        return self.train(False)

    def parameters(self) -> dict[str, np.ndarray]:
        return {}

    def gradients(self) -> dict[str, np.ndarray | None]:
        return {}


class Linear(_Stateless):
    """Fully connected layer ``y = x @ weight + bias``.

    Parameters
    ----------
    in_features, out_features : int
        Input and output widths.
    rng : numpy.random.Generator
        Source of the initial weights.
    init : {"xavier", "he"}
        Glorot normal (variance ``2 / (in + out)``, suits sigmoid) or He
        normal (variance ``2 / in``, suits ReLU). The bias starts at zero.
    dtype : float32 or float64
        dtype of the parameters.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rng: np.random.Generator,
        *,
        init: str = "xavier",
        dtype=np.float64,
    ):
        if init == "xavier":
            std = math.sqrt(2.0 / (in_features + out_features))
        elif init == "he":
            std = math.sqrt(2.0 / in_features)
        else:
            raise ValueError(f"init must be 'xavier' or 'he', got {init!r}")
        self.weight = (std * rng.standard_normal((in_features, out_features))).astype(dtype)
        self.bias = np.zeros(out_features, dtype)
        self.grad_weight: np.ndarray | None = None
        self.grad_bias: np.ndarray | None = None
        self._x: np.ndarray | None = None

    def __repr__(self) -> str:
        return f"Linear({self.weight.shape[0]}, {self.weight.shape[1]})"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self._x = x
        return x @ self.weight + self.bias

    def backward(self, dy: np.ndarray) -> np.ndarray:
        self.grad_weight = self._x.T @ dy
        self.grad_bias = dy.sum(axis=0)
        return dy @ self.weight.T

    def parameters(self) -> dict[str, np.ndarray]:
        return {"weight": self.weight, "bias": self.bias}

    def gradients(self) -> dict[str, np.ndarray | None]:
        return {"weight": self.grad_weight, "bias": self.grad_bias}


class Sigmoid(_Stateless):
    """Logistic activation ``1 / (1 + exp(-x))``, computed as
    ``(1 + tanh(x / 2)) / 2`` so that no exponential overflows."""

    def __init__(self):
        self._y: np.ndarray | None = None

    def __repr__(self) -> str:
        return "Sigmoid()"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self._y = 0.5 * (1.0 + np.tanh(0.5 * x))
        return self._y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        return dy * self._y * (1.0 - self._y)


class Sequential:
    """Layers applied in order; backward runs them in reverse.

    Parameters
    ----------
    *layers : Layer
        Anything with the :class:`Layer` methods, ``fastbn.BatchNorm``
        included.
    """

    def __init__(self, *layers: Layer):
        self.layers = list(layers)
        self.training = True

    def __repr__(self) -> str:
        return "Sequential(" + ", ".join(map(repr, self.layers)) + ")"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        for layer in self.layers:
            x = layer(x)
        return x

    def backward(self, dy: np.ndarray) -> np.ndarray:
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
        return dy

    def train(self, mode: bool = True) -> Sequential:
        """Set every layer's mode (``mode=False``: eval); returns the model."""
        for layer in self.layers:
            layer.train(mode)
        self.training = mode
        return self

    def eval(self) -> Sequential:
        """Set eval mode; returns the model."""
        return self.train(False)


class SGD:
    """Plain stochastic gradient descent, in place on the live parameter arrays.

    Parameters
    ----------
    model : Sequential
        Its layers' ``parameters()`` and ``gradients()`` are read at each step.
    lr : float
        Learning rate.
    """

    def __init__(self, model: Sequential, lr: float):
        self.model = model
        self.lr = lr

    def step(self) -> None:
        """``p -= lr * grad`` for every parameter of every layer."""
        for layer in self.model.layers:
            grads = layer.gradients()
            for name, param in layer.parameters().items():
                param -= self.lr * grads[name]


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean softmax cross-entropy over the batch, and its gradient.

    Parameters
    ----------
    logits : ndarray, shape (N, K)
        Unnormalised class scores.
    labels : ndarray of int, shape (N,)
        True classes.

    Returns
    -------
    loss : float
        ``-mean(log softmax(logits)[i, labels[i]])``, computed with the
        log-sum-exp shift so that large logits do not overflow.
    dlogits : ndarray, shape (N, K)
        Gradient of ``loss`` with respect to ``logits``.
    """
    n = len(labels)
    rows = np.arange(n)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = float(-log_p[rows, labels].mean())
    dlogits = np.exp(log_p)
    dlogits[rows, labels] -= 1.0
    dlogits /= n
    return loss, dlogits


def build_mlp(
    sizes: tuple[int, ...],
    *,
    batch_norm: bool,
    seed: int,
    dtype=np.float64,
    norm: Callable[[int], Layer] | None = None,
) -> Sequential:
    """Linear-[BatchNorm]-Sigmoid blocks, then a final Linear.

    Parameters
    ----------
    sizes : tuple of int
        Input width, hidden widths, number of classes.
    batch_norm : bool
        Put a ``fastbn.BatchNorm`` between each hidden Linear and its sigmoid.
    seed : int
        Seed of the Linear weights: two models built with the same seed and
        sizes start from the same Linear weights, with or without BN.
    dtype : float32 or float64
        dtype of every parameter.
    norm : callable, optional
        ``norm(width)`` makes the layer put there instead of a BatchNorm
        (e.g. a ``fastbn.BatchRenorm``).

    Returns
    -------
    Sequential
    """
    rng = np.random.default_rng(seed)
    layers: list[Layer] = []
    for i, (n_in, n_out) in enumerate(pairwise(sizes)):
        layers.append(Linear(n_in, n_out, rng, init="xavier", dtype=dtype))
        if i < len(sizes) - 2:
            if batch_norm:
                layers.append(fastbn.BatchNorm(n_out, layout="NCHW", dtype=dtype)
                              if norm is None else norm(n_out))
            layers.append(Sigmoid())
    return Sequential(*layers)


def load_data(
    seed: int = SEED,
    *,
    test_size: float = TEST_SIZE,
    dtype=np.float64,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's digits, split (stratified) and standardised with the
    training set's per-pixel mean and standard deviation.

    Returns
    -------
    x_train, x_test : ndarray, shape (N, 64)
    y_train, y_test : ndarray of int, shape (N,)
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_size, random_state=seed, stratify=y)
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std == 0] = 1.0
    return (((x_train - mean) / std).astype(dtype), ((x_test - mean) / std).astype(dtype),
            y_train.astype(np.intp), y_test.astype(np.intp))


def train_epoch(
    model: Sequential,
    optimizer: SGD,
    x: np.ndarray,
    y: np.ndarray,
    order: np.ndarray,
    batch_size: int,
    before_step: Callable[[], None] | None = None,
) -> tuple[float, float]:
    """One pass over the full mini-batches of ``x[order]`` in training mode
    (``before_step()``, if given, is called before each step).

    Returns
    -------
    loss, accuracy : float
        Means over the samples seen, from the training-mode outputs.
    """
    model.train()
    total_loss = correct = seen = 0
    for start in range(0, len(order) - batch_size + 1, batch_size):
        if before_step is not None:
            before_step()
        idx = order[start:start + batch_size]
        logits = model(x[idx])
        loss, dlogits = softmax_cross_entropy(logits, y[idx])
        model.backward(dlogits)
        optimizer.step()
        total_loss += loss * len(idx)
        correct += int((logits.argmax(axis=1) == y[idx]).sum())
        seen += len(idx)
    return total_loss / seen, correct / seen


def evaluate(model: Sequential, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Loss and accuracy in eval mode (BN uses its running statistics); the
    model's previous mode is restored afterwards.

    Returns
    -------
    loss, accuracy : float
    """
    was_training = model.training
    model.eval()
    try:
        logits = model(x)
    finally:
        model.train(was_training)
    loss, _ = softmax_cross_entropy(logits, y)
    return loss, float((logits.argmax(axis=1) == y).mean())


def _warm_up(dtype) -> None:
    """Load (or compile) the BN kernels before any epoch is timed."""
    bn = fastbn.BatchNorm(4, dtype=dtype)
    x = np.linspace(0.0, 1.0, 32, dtype=dtype).reshape(8, 4)
    bn.backward(bn(x))
    bn.eval()(x)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool):
    if enabled:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            pass
        else:
            return tqdm(total=total, unit="epoch", file=sys.stderr, leave=False)
    return _NoBar()


def _write(bar, line: str, file: IO[str]) -> None:
    if isinstance(bar, _NoBar):
        print(line, file=file, flush=True)
    else:
        bar.write(line, file=file)


_HEADER = ("| epoch | BN loss | BN train acc | BN test acc | BN s "
           "| plain loss | plain train acc | plain test acc | plain s |")
_RULE = "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"


def _row(epoch: int, bn: dict[str, list[float]], plain: dict[str, list[float]]) -> str:
    i = epoch - 1
    cells = [f"{epoch:5d}"]
    for h in (bn, plain):
        cells += [f"{h['train_loss'][i]:7.4f}", f"{100 * h['train_acc'][i]:6.2f}%",
                  f"{100 * h['test_acc'][i]:6.2f}%", f"{h['seconds'][i]:5.3f}"]
    return "| " + " | ".join(cells) + " |"


def format_table(history: dict[str, Any]) -> str:
    """The per-epoch Markdown table of a :func:`run` result."""
    bn, plain = history["bn"], history["plain"]
    rows = [_row(e, bn, plain) for e in range(1, len(bn["train_loss"]) + 1)]
    return "\n".join([_HEADER, _RULE, *rows])


def _epochs_to(accuracies: list[float], target: float) -> int | None:
    return next((i + 1 for i, a in enumerate(accuracies) if a >= target), None)


def _summary(result: dict[str, Any]) -> str:
    target = result["config"]["target_accuracy"]
    lines = []
    for name in ("bn", "plain"):
        h = result[name]
        reached = h["epochs_to_target"]
        when = f"epoch {reached}" if reached else f"not within {len(h['test_acc'])} epochs"
        lines.append(
            f"{'BN' if name == 'bn' else 'plain':>5}: final train loss {h['train_loss'][-1]:.4f}, "
            f"best test accuracy {100 * max(h['test_acc']):.2f}%, "
            f"{100 * target:.0f}% test accuracy: {when}, "
            f"training time {sum(h['seconds']):.2f} s")
    return "\n".join(lines)


def plot_history(result: dict[str, Any], path: str | os.PathLike) -> None:
    """Learning curves of a :func:`run` result as a PNG: training loss (log
    scale) and train/test accuracy per epoch, BN next to plain.

    Draws on a bare ``matplotlib.figure.Figure`` (Agg canvas), so pyplot's
    backend and state are left alone.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc

    cfg = result["config"]
    fig = Figure(figsize=(11, 4.2), layout="tight")
    ax_loss, ax_acc = fig.subplots(1, 2)
    for name, label, color in (("bn", "with fastbn.BatchNorm", "C0"), ("plain", "plain", "C3")):
        h = result[name]
        epochs = np.arange(1, len(h["train_loss"]) + 1)
        ax_loss.plot(epochs, h["train_loss"], color=color, marker=".", label=label)
        ax_acc.plot(epochs, 100 * np.asarray(h["test_acc"]), color=color, marker=".",
                    label=f"{label}, test (eval mode)")
        ax_acc.plot(epochs, 100 * np.asarray(h["train_acc"]), color=color, linestyle="--",
                    alpha=0.6, label=f"{label}, train")
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training loss (cross-entropy)")
    ax_loss.legend()
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.set_ylim(0, 100)
    ax_acc.legend(loc="center right", fontsize=8)
    sizes = "-".join(map(str, cfg["sizes"]))
    fig.suptitle(f"digits, sigmoid MLP {sizes}, SGD lr={cfg['lr']:g}, batch {cfg['batch_size']}")
    fig.savefig(path, dpi=110)


def _check_run(epochs, lr, plot) -> None:
    """The checks of :func:`run`'s arguments made before loading the data."""
    if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if plot is not None:
        try:
            importlib.import_module("matplotlib.figure")
        except ImportError as exc:
            raise ImportError(_INSTALL_HINT) from exc


def _check_batch_size(batch_size, n: int) -> None:
    if (isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral)
            or not 2 <= batch_size <= n):
        raise ValueError(f"batch_size must be an int in [2, {n}], got {batch_size!r}")


def run(
    epochs: int = EPOCHS,
    lr: float = LR,
    seed: int = SEED,
    *,
    batch_size: int = BATCH_SIZE,
    hidden: tuple[int, ...] = HIDDEN,
    dtype=np.float64,
    plot: str | os.PathLike | None = None,
    progress: bool = True,
    file: IO[str] | None = None,
) -> dict[str, Any]:
    """Train the BN and the plain network side by side and print a table.

    Both networks see the same mini-batches in the same order and start from
    the same Linear weights. After each epoch, test accuracy is measured in
    eval mode.

    Parameters
    ----------
    epochs : int
        Passes over the training set (>= 1).
    lr : float
        SGD learning rate of both networks.
    seed : int
        Seed of the split, the weights and the shuffling.
    batch_size : int
        Mini-batch size (>= 2: BN needs two values per channel); the last,
        incomplete batch of each epoch is dropped.
    hidden : tuple of int
        Hidden layer widths.
    dtype : float32 or float64
        dtype of data and parameters.
    plot : path or None
        Where to write a PNG of the learning curves.
    progress : bool
        Show a tqdm progress bar on stderr (if tqdm is installed).
    file : text stream or None
        Where the table and the summary go (default ``sys.stdout``).

    Returns
    -------
    dict
        ``config`` (the arguments, and ``sizes``: the layer widths from the
        input to the classes, e.g. 64-64-64-64-64-10), ``bn`` and
        ``plain`` (per-epoch lists ``train_loss``, ``train_acc``,
        ``test_loss``, ``test_acc``, ``seconds``, plus
        ``epochs_to_target``), ``models`` (the trained ``Sequential`` of
        each) and ``wall_s``.

    Raises
    ------
    ImportError
        scikit-learn (or matplotlib, with ``plot``) is missing.
    ValueError
        ``epochs < 1``, ``lr <= 0``, ``batch_size`` outside 2..N.
    """
    if file is None:
        file = sys.stdout
    _check_run(epochs, lr, plot)
    start = time.perf_counter()
    x_train, x_test, y_train, y_test = load_data(seed, dtype=dtype)
    _check_batch_size(batch_size, len(x_train))
    sizes = (x_train.shape[1], *hidden, int(y_train.max()) + 1)
    models = {"bn": build_mlp(sizes, batch_norm=True, seed=seed, dtype=dtype),
              "plain": build_mlp(sizes, batch_norm=False, seed=seed, dtype=dtype)}
    optimizers = {name: SGD(model, lr) for name, model in models.items()}
    histories = {name: {"train_loss": [], "train_acc": [], "test_loss": [], "test_acc": [], "seconds": []}
                 for name in models}
    shuffle = np.random.default_rng([seed, 1])
    _warm_up(dtype)

    print(f"fastbn {fastbn.__version__} demo: digits ({len(x_train)} train / {len(x_test)} test), "
          f"sigmoid MLP {'-'.join(map(str, sizes))}, SGD lr={lr:g}, batch {batch_size}, "
          f"{np.dtype(dtype).name}, seed {seed}", file=file)
    print("loss and train acc: training mode, mean over the epoch; test acc: eval mode "
          "(BN: running statistics); s: seconds to train the epoch\n", file=file)
    print(_HEADER, file=file)
    print(_RULE, file=file, flush=True)
    bar = _progress(epochs, progress)
    try:
        for epoch in range(1, epochs + 1):
            order = shuffle.permutation(len(x_train))
            for name, model in models.items():
                t0 = time.perf_counter()
                loss, acc = train_epoch(model, optimizers[name], x_train, y_train, order, batch_size)
                seconds = time.perf_counter() - t0
                test_loss, test_acc = evaluate(model, x_test, y_test)
                h = histories[name]
                h["train_loss"].append(loss)
                h["train_acc"].append(acc)
                h["test_loss"].append(test_loss)
                h["test_acc"].append(test_acc)
                h["seconds"].append(seconds)
            _write(bar, _row(epoch, histories["bn"], histories["plain"]), file)
            bar.set_postfix_str(f"loss BN {histories['bn']['train_loss'][-1]:.3f} "
                                f"plain {histories['plain']['train_loss'][-1]:.3f}")
            bar.update()
    finally:
        bar.close()
    for h in histories.values():
        h["epochs_to_target"] = _epochs_to(h["test_acc"], TARGET_ACCURACY)
    result = {
        "config": {"epochs": epochs, "lr": lr, "seed": seed, "batch_size": batch_size,
                   "hidden": tuple(hidden), "sizes": sizes, "dtype": np.dtype(dtype).name,
                   "target_accuracy": TARGET_ACCURACY},
        **histories,
        "models": models,
    }
    print("\n" + _summary(result), file=file)
    if plot is not None:
        plot_history(result, plot)
        print(f"learning curves written to {plot}", file=file)
    result["wall_s"] = time.perf_counter() - start
    print(f"wall time {result['wall_s']:.1f} s", file=file, flush=True)
    return result
