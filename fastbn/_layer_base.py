"""``NormLayer``: what every normalization layer shares (modes, parameters,
gradients, PyTorch-keyed state dicts, the checks of its arguments)."""

from __future__ import annotations

import numbers
from collections.abc import Mapping

import numpy as np

from . import _checks
from ._layout import channel_axis

#: The state arrays a layer may hold, in PyTorch's state_dict order.
_ARRAYS = ("weight", "bias", "running_mean", "running_var")


def size(value, name: str) -> int:
    """A count given to a constructor (``num_features``...): an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {_checks.describe(value)}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def dtype(value) -> np.dtype:
    """The dtype of a layer's parameters and running statistics."""
    try:
        value = np.dtype(value)
    except TypeError:
        raise TypeError(f"dtype must be float16, float32 or float64 (a NumPy dtype), "
                        f"got {_checks.describe(value)}") from None
    if value not in _checks.X_DTYPES:
        raise TypeError(f"dtype must be float16, float32 or float64, got {value}")
    return value


class NormLayer:
    """Base of the normalization layers.

    A subclass checks its arguments, calls :meth:`_init_state` to create
    the arrays it holds, and provides ``_forward(x) -> (y, cache)`` and
    ``_backward(dy, cache) -> (dx, dweight, dbias)``; this class keeps the
    cache of the last forward, the gradients, the mode and the state dict.
    """

    #: The constructor argument that sets the state's shape (the channel
    #: count), named by the errors of a wrong input or state dict.
    _SIZE_ARG = "num_features"
    #: The lowest input rank accepted (the highest is 5).
    _MIN_RANK = 2
    #: The constructor arguments that repr shows: positional, then keywords
    #: (``dtype`` comes last).
    _POSITIONAL: tuple = ("num_features",)
    _KEYWORDS: tuple = ()

    def _init_state(self, dtype_: np.dtype, shape: tuple, *, weight: bool, bias: bool,
                    running: bool) -> None:
        """Parameters (weight ones, bias zeros) and running statistics (mean
        zeros, var ones) of ``shape``, each None unless asked for; training mode."""
        self.dtype = dtype_
        self.weight = np.ones(shape, dtype_) if weight else None
        self.bias = np.zeros(shape, dtype_) if bias else None
        self.running_mean = np.zeros(shape, dtype_) if running else None
        self.running_var = np.ones(shape, dtype_) if running else None
        self.num_batches_tracked = 0
        self.training = True
        self.grad_weight = None
        self.grad_bias = None
        self._shape = shape
        self._cache = None

    def _state_source(self) -> str:
        """Where the state shape comes from, as a state dict error names it."""
        return f"{self._SIZE_ARG}={getattr(self, self._SIZE_ARG)}"

    def __repr__(self) -> str:
        args = [repr(getattr(self, k)) for k in self._POSITIONAL]
        args += [f"{k}={getattr(self, k)!r}" for k in self._KEYWORDS]
        return f"{type(self).__name__}({', '.join(args)}, dtype={self.dtype.name})"

    def train(self, mode: bool = True):
        """Set training mode (``mode=False``: eval mode); returns the layer."""
        if not isinstance(mode, bool):
            raise TypeError(f"mode must be a bool, got {_checks.describe(mode)}")
        self.training = mode
        return self

    def eval(self):
        """Set eval mode; returns the layer."""
        return self.train(False)

    def forward(self, x) -> np.ndarray:
        """Normalize ``x`` (in training, update the running statistics the
        layer keeps); the layer keeps what its backward needs."""
        y, self._cache = self._forward(x)
        return y

    __call__ = forward

    def _forward(self, x):
        raise NotImplementedError

    def _ranked(self, x) -> np.ndarray:
        """``x`` as a float ndarray of a rank the layer takes."""
        x = _checks.tensor(x)
        if not self._MIN_RANK <= x.ndim <= 5:
            raise ValueError(f"x: expected an input of rank {self._MIN_RANK} to 5, "
                             f"got rank {x.ndim} (shape {x.shape})")
        return x

    def _check_input(self, x) -> np.ndarray:
        """``x`` checked against the layer (type, rank, channel count) before
        anything else, so that a mismatch is named in the layer's terms."""
        x = self._ranked(x)
        n, layout = getattr(self, self._SIZE_ARG), self.layout
        axis = channel_axis(x.ndim, layout)
        if x.shape[axis] != n:
            raise ValueError(
                f"{type(self).__name__}({self._SIZE_ARG}={n}, layout={layout!r}) expects {n} "
                f"channels on axis {axis} of a rank-{x.ndim} input, got shape {x.shape}"
                f"{_checks._layout_hint(x.shape, layout, n)}"
            )
        return x

    def backward(self, dy) -> np.ndarray:
        """Gradient with respect to the last forward's input.

        Sets ``grad_weight`` and ``grad_bias`` (overwritten, not accumulated).
        """
        return self._gradients(self._backward(dy, self._last_cache()))

    def _backward(self, dy, cache):
        raise NotImplementedError

    def _last_cache(self):
        if self._cache is None:
            raise RuntimeError("backward needs the input of a forward call, got none: "
                               "call the layer on a batch first")
        return self._cache

    def _gradients(self, grads) -> np.ndarray | None:
        """Keep the parameter gradients of ``(dx, dweight, dbias)``; returns dx."""
        dx, dweight, dbias = grads
        if self.weight is not None:
            self.grad_weight = dweight.astype(self.dtype)
        if self.bias is not None:
            self.grad_bias = dbias.astype(self.dtype)
        return dx

    def parameters(self) -> dict[str, np.ndarray]:
        """The live parameter arrays (an optimizer may update them in place)."""
        return {k: getattr(self, k) for k in ("weight", "bias") if getattr(self, k) is not None}

    def gradients(self) -> dict[str, np.ndarray | None]:
        """Gradients of the last backward, keyed like :meth:`parameters`."""
        return {k: getattr(self, "grad_" + k) for k in self.parameters()}

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the state, under PyTorch's keys."""
        state = {k: getattr(self, k).copy() for k in _ARRAYS if getattr(self, k) is not None}
        if self.running_mean is not None:  # PyTorch keeps the count with the statistics
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
        source = self._state_source()
        values = {k: _checks.shaped_array(state[k], f"state[{k!r}]", self._shape, source)
                  for k in _ARRAYS if k in expected}
        if "num_batches_tracked" in expected:
            self.num_batches_tracked = _checks.count(state["num_batches_tracked"],
                                                     "state['num_batches_tracked']")
        for k, v in values.items():
            getattr(self, k)[...] = v
