"""``BatchNorm``: the layer, with PyTorch's semantics and state_dict keys."""

from __future__ import annotations

import numbers
from collections.abc import Mapping

import numpy as np

from . import _checks
from .functional import BatchNormCache, _forward_call, batch_norm_backward

__all__ = ["BatchNorm"]

_VECTORS = ("weight", "bias", "running_mean", "running_var")


class BatchNorm:
    """Batch normalization layer over NCHW or NHWC tensors of rank 2 to 5.

    Parameters
    ----------
    num_features : int
        Number of channels C.
    eps : float
        Added to the variance before the square root.
    momentum : float in [0, 1] or None
        Weight of each batch in the running statistics; None for a
        cumulative average (factor ``1 / num_batches_tracked``).
    affine : bool
        Learnable ``weight`` (ones) and ``bias`` (zeros); else both None.
    track_running_stats : bool
        Keep ``running_mean`` (zeros) and ``running_var`` (ones) and use them
        in eval mode; else both None and eval mode uses batch statistics.
    layout : {"NCHW", "NHWC"}
        Channel axis 1 or last.
    dtype : float16, float32 or float64
        dtype of parameters and running statistics.
    unbiased_running_var : bool
        False stores the biased batch variance in ``running_var`` (Keras,
        Flax, numpy-ml) instead of ``var * m / (m - 1)`` (PyTorch).

    Examples
    --------
    >>> bn = BatchNorm(3)
    >>> y = bn(np.random.rand(8, 3, 4, 4).astype(np.float32))
    >>> dx = bn.backward(np.ones_like(y))
    """

    def __init__(
        self,
        num_features: int,
        *,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        layout: str = "NCHW",
        dtype=np.float32,
        unbiased_running_var: bool = True,
    ):
        if isinstance(num_features, bool) or not isinstance(num_features, numbers.Integral):
            raise TypeError(
                f"num_features must be an int, got {_checks.describe(num_features)}"
            )
        if num_features < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        try:
            dtype = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"dtype must be float16, float32 or float64 (a NumPy dtype), "
                            f"got {_checks.describe(dtype)}") from None
        if dtype not in _checks.X_DTYPES:
            raise TypeError(f"dtype must be float16, float32 or float64, got {dtype}")
        self.num_features = int(num_features)
        self.eps = _checks.eps(eps)
        self.momentum = _checks.momentum(momentum, allow_none=True)
        self.layout = _checks.layout(layout)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        self.unbiased_running_var = _checks.flag(unbiased_running_var, "unbiased_running_var")
        self.dtype = dtype
        c = self.num_features
        self.weight = np.ones(c, dtype) if affine else None
        self.bias = np.zeros(c, dtype) if affine else None
        self.running_mean = np.zeros(c, dtype) if track_running_stats else None
        self.running_var = np.ones(c, dtype) if track_running_stats else None
        self.num_batches_tracked = 0
        self.training = True
        self.grad_weight = None
        self.grad_bias = None
        self._cache: BatchNormCache | None = None

    def __repr__(self) -> str:
        return (
            f"BatchNorm({self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, track_running_stats={self.track_running_stats}, "
            f"layout={self.layout!r}, dtype={self.dtype.name})"
        )

    def train(self, mode: bool = True) -> "BatchNorm":
        """Set training mode (``mode=False``: eval mode); returns the layer."""
        if not isinstance(mode, bool):
            raise TypeError(f"mode must be a bool, got {_checks.describe(mode)}")
        self.training = mode
        return self

    def eval(self) -> "BatchNorm":
        """Set eval mode; returns the layer."""
        return self.train(False)

    def forward(self, x) -> np.ndarray:
        """Normalize ``x``; in training, update the running statistics."""
        use_batch = self.training or self.running_mean is None
        update = self.training and self.running_mean is not None
        momentum = self.momentum
        if update and momentum is None:
            momentum = 1.0 / (self.num_batches_tracked + 1)
        stats = update or not use_batch
        y, cache = _forward_call(
            x, self.weight, self.bias, use_batch, self.running_mean if stats else None,
            self.running_var if stats else None, 0.0 if momentum is None else momentum,
            self.eps, self.layout, None, self._communicator(), self._check_input,
            self.unbiased_running_var)
        if update and cache.stats_finite:
            self.num_batches_tracked += 1
        self._cache = cache
        return y

    __call__ = forward

    def _check_input(self, x) -> np.ndarray:
        """``x`` checked against the layer (type, rank, channel count) before
        anything else, so that a mismatch is named in the layer's terms."""
        return _checks.layer_input(x, self)

    def _communicator(self):
        """The MPI communicator a forward synchronizes over (None: local)."""
        return None

    def backward(self, dy, *, input_grad: bool = True) -> np.ndarray | None:
        """Gradient with respect to the last forward's input (None, and
        nothing of its size written, when not ``input_grad``).

        Sets ``grad_weight`` and ``grad_bias`` (overwritten, not accumulated).
        """
        if self._cache is None:
            raise RuntimeError("backward needs the input of a forward call, got none: "
                               "call the layer on a batch first")
        dx, dweight, dbias = batch_norm_backward(dy, self._cache, input_grad=input_grad)
        if self.affine:
            self.grad_weight = dweight.astype(self.dtype)
            self.grad_bias = dbias.astype(self.dtype)
        return dx

    def parameters(self) -> dict[str, np.ndarray]:
        """The live parameter arrays (an optimizer may update them in place)."""
        return {"weight": self.weight, "bias": self.bias} if self.affine else {}

    def gradients(self) -> dict[str, np.ndarray | None]:
        """Gradients of the last backward, keyed like :meth:`parameters`."""
        return {"weight": self.grad_weight, "bias": self.grad_bias} if self.affine else {}

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the state, under PyTorch's keys."""
        state = {k: getattr(self, k).copy() for k in _VECTORS if getattr(self, k) is not None}
        if self.track_running_stats:
            state["num_batches_tracked"] = np.array(self.num_batches_tracked, dtype=np.int64)
        return state

    def load_state_dict(self, state) -> None:
        """Load a state dict (values array-like, e.g. a PyTorch ``state_dict()``
        converted with ``.numpy()``); keys and shapes are checked first."""
        if not isinstance(state, Mapping):
            raise TypeError(f"state must be a dict of arrays like state_dict() returns, "
                            f"got {type(state).__name__}")
        expected = set(self.state_dict())
        given = set(state)
        if given != expected:
            raise ValueError(
                f"state dict keys: expected {sorted(expected)}, got {sorted(given)} "
                f"(missing {sorted(expected - given)}, unexpected {sorted(given - expected)})"
            )
        values = {
            k: _checks.channel_vector(state[k], f"state[{k!r}]", self.num_features)
            for k in _VECTORS if k in expected
        }
        if "num_batches_tracked" in expected:
            self.num_batches_tracked = _checks.count(state["num_batches_tracked"],
                                                     "state['num_batches_tracked']")
        for k, v in values.items():
            getattr(self, k)[...] = v
