"""Data-parallel training of the demo's NumPy network with SyncBatchNorm.

Launch with ``mpiexec -n 2 python examples/mpi_digits.py`` (any number of
ranks; needs ``pip install -e ".[mpi,demo]"``). Every global mini-batch is
split across the ranks (unevenly when the rank count does not divide it);
each rank runs forward and backward on its share and the ranks combine
their gradients with ``Allreduce``. SyncBatchNorm normalizes with the
statistics of the whole mini-batch, so the run computes the same updates as
one process training on the whole mini-batch: ``--check`` verifies that.
"""

from __future__ import annotations

import argparse

import numpy as np
from mpi4py import MPI

import fastbn
from fastbn.demo import SGD, Sequential, build_mlp, evaluate, load_data, softmax_cross_entropy


def sync_model(model: Sequential, comm: MPI.Comm) -> Sequential:
    """``model`` with each BatchNorm replaced by a SyncBatchNorm over ``comm``."""
    for i, layer in enumerate(model.layers):
        if isinstance(layer, fastbn.BatchNorm):
            sync = fastbn.SyncBatchNorm(layer.num_features, comm=comm, dtype=layer.dtype)
            sync.load_state_dict(layer.state_dict())
            model.layers[i] = sync
    return model


def allreduce_gradients(model: Sequential, comm: MPI.Comm) -> None:
    """Sum the ranks' gradients of every layer but SyncBatchNorm, whose
    gradients are already those of the whole mini-batch."""
    for layer in model.layers:
        if isinstance(layer, fastbn.SyncBatchNorm):
            continue
        for grad in layer.gradients().values():
            comm.Allreduce(MPI.IN_PLACE, grad, op=MPI.SUM)


def share(batch: np.ndarray, comm: MPI.Comm) -> np.ndarray:
    """This rank's consecutive share of a global mini-batch of indices."""
    bounds = np.linspace(0, len(batch), comm.Get_size() + 1).round().astype(int)
    rank = comm.Get_rank()
    return batch[bounds[rank]:bounds[rank + 1]]


def train(comm: MPI.Comm, *, epochs: int = 5, lr: float = 5.0, batch_size: int = 64,
          seed: int = 0, hidden=(64, 64, 64, 64)) -> tuple[Sequential, list[tuple]]:
    """Train on scikit-learn's digits; returns the model and per-epoch
    ``(train loss, test accuracy)`` (the same on every rank)."""
    x_train, x_test, y_train, y_test = load_data(seed)
    model = sync_model(build_mlp((64, *hidden, 10), batch_norm=True, seed=seed), comm)
    optimizer = SGD(model, lr)
    rng = np.random.default_rng(seed)
    history = []
    for _ in range(epochs):
        order = rng.permutation(len(x_train))
        model.train()
        losses = []
        for start in range(0, len(order) - batch_size + 1, batch_size):
            mine = share(order[start:start + batch_size], comm)
            logits = model(x_train[mine])
            loss, dlogits = softmax_cross_entropy(logits, y_train[mine])
            # The gradient of the mini-batch's mean loss, restricted to this
            # rank's rows: each rank's mean weighted by its share.
            weight = len(mine) / batch_size
            model.backward(dlogits * weight)
            allreduce_gradients(model, comm)
            optimizer.step()
            losses.append(comm.allreduce(loss * weight))
        _, accuracy = evaluate(model, x_test, y_test)  # eval mode: running statistics
        history.append((float(np.mean(losses)), accuracy))
    return model, history


def _state(layer) -> dict:
    """Parameters, and running statistics for BN layers."""
    return layer.state_dict() if isinstance(layer, fastbn.BatchNorm) else layer.parameters()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=5.0)
    parser.add_argument("--check", action="store_true",
                        help="also train in one process and compare the parameters")
    args = parser.parse_args()
    comm = MPI.COMM_WORLD
    model, history = train(comm, epochs=args.epochs, lr=args.lr)
    if comm.Get_rank() == 0:
        print(f"{comm.Get_size()} ranks")
        for epoch, (loss, accuracy) in enumerate(history, 1):
            print(f"epoch {epoch}: train loss {loss:.4f}, test accuracy {accuracy:.2%}")
    if args.check:
        single, _ = train(MPI.COMM_SELF, epochs=args.epochs, lr=args.lr)
        worst = max(float(np.max(np.abs(p - q)))
                    for a, b in zip(model.layers, single.layers)
                    for p, q in zip(_state(a).values(), _state(b).values()))
        worst = comm.allreduce(worst, op=MPI.MAX)
        if comm.Get_rank() == 0:
            print(f"largest difference to one process: {worst:.3g}")


if __name__ == "__main__":
    main()
