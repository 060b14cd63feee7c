"""The digits network of :mod:`fastbn.demo` trained with mini-batches of 4:
plain BatchNorm, ghost batch normalization and Batch Renormalization side by
side.

With 4 samples per batch, BatchNorm's batch statistics are noisy, and the
network learns to work with them; in eval mode the running statistics take
their place and the network sees inputs normalized differently from what it
was trained on. Test accuracy is measured in eval mode after every epoch.

- ``BatchNorm``: statistics of the 4 samples.
- ``BatchNorm(virtual_batch_size=2)``: ghost BN, statistics of each pair
  (the only chunk size that divides 4 and is not the whole batch; a chunk
  of 1 has no variance): even noisier statistics. Ghost BN is meant for
  large batches, where it brings back the noise of small ones; this run
  shows that direction at its extreme.
- ``BatchRenorm``: the batch statistics corrected towards the running
  ones (``rmax``/``dmax`` relaxed from 1/0 over the first epoch, as the
  paper does), so that training sees what eval mode will compute.

All three start from the same Linear weights, see the same mini-batches,
and use the same SGD learning rate. Run it with
``python -m fastbn demo --small-batch`` (needs ``pip install -e ".[demo]"``).
"""

from __future__ import annotations

import os
import sys
import time
from typing import IO, Any

import numpy as np

import fastbn
from . import demo

__all__ = ["METHODS", "build_mlp", "format_table", "plot_history", "run"]

EPOCHS = 8
LR = 0.3  # the main demo's 5 at batch 64, scaled linearly to batch 4
BATCH_SIZE = 4
VIRTUAL_BATCH_SIZE = 2
RMAX = 3.0
DMAX = 5.0
SEED = 0

#: The normalizations compared: key, label.
METHODS = (
    ("bn", "BatchNorm"),
    ("ghost", "ghost BN (v=2)"),
    ("renorm", "BatchRenorm"),
)


def build_mlp(sizes: tuple[int, ...], method: str, *, seed: int, dtype=np.float64,
              virtual_batch_size: int = VIRTUAL_BATCH_SIZE) -> demo.Sequential:
    """:func:`fastbn.demo.build_mlp` with the normalization ``method``
    (``"bn"``, ``"ghost"`` or ``"renorm"``) after each hidden Linear; the
    same seed gives the same Linear weights whatever the method."""
    kwargs = {"bn": {}, "ghost": {"virtual_batch_size": virtual_batch_size},
              "renorm": {"rmax": 1.0, "dmax": 0.0}}  # BatchRenorm starts as BatchNorm
    if method not in kwargs:
        raise ValueError(f"method must be one of {list(kwargs)}, got {method!r}")
    layer = fastbn.BatchRenorm if method == "renorm" else fastbn.BatchNorm
    return demo.build_mlp(sizes, batch_norm=True, seed=seed, dtype=dtype,
                          norm=lambda width: layer(width, dtype=dtype, **kwargs[method]))


class _Schedule:
    """Batch Renormalization's schedule, called before each step: ``rmax``
    from 1 to RMAX and ``dmax`` from 0 to DMAX, linearly over the first
    ``ramp`` steps, for every BatchRenorm of ``model``."""

    def __init__(self, model: demo.Sequential, ramp: int):
        self.layers = [layer for layer in model.layers if isinstance(layer, fastbn.BatchRenorm)]
        self.ramp = ramp
        self.step = 0

    def __call__(self) -> None:
        t = min(1.0, self.step / self.ramp)
        for layer in self.layers:
            layer.rmax = 1.0 + (RMAX - 1.0) * t
            layer.dmax = DMAX * t
        self.step += 1


_COLUMNS = ("loss", "train acc", "test acc")


def format_table(result: dict[str, Any]) -> str:
    """The per-epoch Markdown table of a :func:`run` result: for each
    method, the training loss and accuracy (training mode, mean over the
    epoch) and the test accuracy (eval mode)."""
    header = ["epoch"] + [f"{label} {col}" for _, label in METHODS for col in _COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    n = len(result[METHODS[0][0]]["test_acc"])
    for i in range(n):
        cells = [f"{i + 1:5d}"]
        for key, _ in METHODS:
            h = result[key]
            cells += [f"{h['train_loss'][i]:.4f}", f"{100 * h['train_acc'][i]:.2f}%",
                      f"{100 * h['test_acc'][i]:.2f}%"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_history(result: dict[str, Any], path: str | os.PathLike) -> None:
    """Test accuracy (eval mode) and training accuracy (training mode) per
    epoch of each method, as a PNG (a bare matplotlib Figure)."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(demo._INSTALL_HINT) from exc
    cfg = result["config"]
    fig = Figure(figsize=(10, 4.5), layout="tight")
    ax = fig.subplots()
    for (key, label), color in zip(METHODS, ("C0", "C3", "C2")):
        h = result[key]
        epochs = np.arange(1, len(h["test_acc"]) + 1)
        ax.plot(epochs, 100 * np.asarray(h["test_acc"]), color=color, marker="o",
                label=f"{label}, test (eval mode)")
        ax.plot(epochs, 100 * np.asarray(h["train_acc"]), color=color, linestyle="--",
                alpha=0.6, label=f"{label}, train (training mode)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    sizes = "-".join(map(str, cfg["sizes"]))
    fig.suptitle(f"digits, sigmoid MLP {sizes}, SGD lr={cfg['lr']:g}, "
                 f"batch {cfg['batch_size']}", fontsize=10)
    fig.savefig(path, dpi=110)


def run(
    epochs: int = EPOCHS,
    lr: float = LR,
    seed: int = SEED,
    *,
    batch_size: int = BATCH_SIZE,
    virtual_batch_size: int = VIRTUAL_BATCH_SIZE,
    hidden: tuple[int, ...] = demo.HIDDEN,
    dtype=np.float64,
    plot: str | os.PathLike | None = None,
    progress: bool = True,
    file: IO[str] | None = None,
) -> dict[str, Any]:
    """Train the network with each of :data:`METHODS` and print a table.

    Parameters are those of :func:`fastbn.demo.run` (here with small-batch
    defaults), plus ``virtual_batch_size``, the ghost BN chunk size (it must
    divide ``batch_size``). BatchRenorm's ``rmax`` and ``dmax`` grow from 1
    and 0 to 3 and 5 over the first epoch.

    Returns
    -------
    dict
        ``config``; per method key (``bn``, ``ghost``, ``renorm``) the
        per-epoch lists ``train_loss``, ``train_acc``, ``test_loss``,
        ``test_acc``, ``seconds``; ``models``; ``wall_s``.
    """
    if file is None:
        file = sys.stdout
    demo._check_run(epochs, lr, plot)
    start = time.perf_counter()
    x_train, x_test, y_train, y_test = demo.load_data(seed, dtype=dtype)
    demo._check_batch_size(batch_size, len(x_train))
    if batch_size % virtual_batch_size:
        raise ValueError(f"virtual_batch_size={virtual_batch_size} must divide "
                         f"batch_size={batch_size}")
    sizes = (x_train.shape[1], *hidden, int(y_train.max()) + 1)
    models = {key: build_mlp(sizes, key, seed=seed, dtype=dtype,
                             virtual_batch_size=virtual_batch_size) for key, _ in METHODS}
    optimizers = {key: demo.SGD(model, lr) for key, model in models.items()}
    histories = {key: {"train_loss": [], "train_acc": [], "test_loss": [], "test_acc": [],
                       "seconds": []} for key in models}
    schedules = {key: _Schedule(model, len(x_train) // batch_size)  # ramp: one epoch
                 for key, model in models.items()}
    shuffle = np.random.default_rng([seed, 1])
    demo._warm_up(dtype)

    print(f"fastbn {fastbn.__version__} small-batch demo: digits ({len(x_train)} train / "
          f"{len(x_test)} test), sigmoid MLP {'-'.join(map(str, sizes))}, SGD lr={lr:g}, "
          f"batch {batch_size}, {np.dtype(dtype).name}, seed {seed}", file=file)
    print(f"ghost BN: virtual_batch_size={virtual_batch_size}; BatchRenorm: rmax 1 -> {RMAX:g}, "
          f"dmax 0 -> {DMAX:g} over the first epoch", file=file)
    print("loss and train acc: training mode, mean over the epoch; test acc: eval mode "
          "(running statistics)\n", file=file)
    table = format_table({**histories, "config": None}).splitlines()
    print("\n".join(table[:2]), file=file, flush=True)
    bar = demo._progress(epochs, progress)
    try:
        for epoch in range(1, epochs + 1):
            order = shuffle.permutation(len(x_train))
            for key, model in models.items():
                t0 = time.perf_counter()
                loss, acc = demo.train_epoch(model, optimizers[key], x_train, y_train, order,
                                             batch_size, schedules[key])
                seconds = time.perf_counter() - t0
                test_loss, test_acc = demo.evaluate(model, x_test, y_test)
                h = histories[key]
                for name, value in (("train_loss", loss), ("train_acc", acc),
                                    ("test_loss", test_loss), ("test_acc", test_acc),
                                    ("seconds", seconds)):
                    h[name].append(value)
            demo._write(bar, format_table(histories).splitlines()[-1], file)
            bar.update()
    finally:
        bar.close()
    result = {
        "config": {"epochs": epochs, "lr": lr, "seed": seed, "batch_size": batch_size,
                   "virtual_batch_size": virtual_batch_size, "hidden": tuple(hidden),
                   "sizes": sizes, "dtype": np.dtype(dtype).name},
        **histories,
        "models": models,
    }
    print("", file=file)
    for key, label in METHODS:
        h = histories[key]
        print(f"{label:>15}: final test accuracy {100 * h['test_acc'][-1]:.2f}% "
              f"(best {100 * max(h['test_acc']):.2f}%), final train accuracy "
              f"{100 * h['train_acc'][-1]:.2f}%, training time {sum(h['seconds']):.2f} s",
              file=file)
    if plot is not None:
        plot_history(result, plot)
        print(f"plot written to {plot}", file=file)
    result["wall_s"] = time.perf_counter() - start
    print(f"wall time {result['wall_s']:.1f} s", file=file, flush=True)
    return result
