"""``BatchNorm``: the layer, with PyTorch's semantics and state_dict keys."""

from __future__ import annotations

import numpy as np

from . import _checks, _ghost, _layer_base
from .functional import BatchNormCache, _forward_call, batch_norm_backward

__all__ = ["BatchNorm"]


class BatchNorm(_layer_base.NormLayer):
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
    virtual_batch_size : int or None
        Ghost batch normalization: in training, statistics per consecutive
        chunk of this many samples along N (which it must divide), each
        chunk normalized with its own; the running statistics are updated
        once per call with the mean over the chunks of their mean and
        unbiased variance. Eval mode is unchanged. None: the whole batch.
    activation : {None, "relu"}
        ``"relu"``: the layer returns ``max(bn(x), 0)`` from the same pass
        and its backward the gradients of the composition (no mask kept).

    Examples
    --------
    >>> bn = BatchNorm(3)
    >>> y = bn(np.random.rand(8, 3, 4, 4).astype(np.float32))
    >>> dx = bn.backward(np.ones_like(y))
    """

    _KEYWORDS = ("eps", "momentum", "affine", "track_running_stats", "layout",
                 "virtual_batch_size", "activation")

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
        virtual_batch_size: int | None = None,
        activation: str | None = None,
    ):
        self.activation = "relu" if _checks.activation(activation) else None
        self.virtual_batch_size = (None if virtual_batch_size is None else
                                   _layer_base.size(virtual_batch_size, "virtual_batch_size"))
        self.num_features = _layer_base.size(num_features, "num_features")
        dtype = _layer_base.dtype(dtype)
        self.eps = _checks.eps(eps)
        self.momentum = _checks.momentum(momentum, allow_none=True)
        self.layout = _checks.layout(layout)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        self.unbiased_running_var = _checks.flag(unbiased_running_var, "unbiased_running_var")
        self._init_state(dtype, (self.num_features,), weight=self.affine, bias=self.affine,
                         running=self.track_running_stats)

    def _forward(self, x) -> tuple[np.ndarray, BatchNormCache]:
        use_batch = self.training or self.running_mean is None
        update = self.training and self.running_mean is not None
        momentum = self.momentum
        if update and momentum is None:
            momentum = 1.0 / (self.num_batches_tracked + 1)
        if self.training and self.virtual_batch_size is not None:
            y, cache = _ghost.forward(
                x, self.virtual_batch_size, self.weight, self.bias, self.running_mean,
                self.running_var, momentum, self.eps, self.layout, self._check_input,
                self.unbiased_running_var, self._communicator(), self.activation is not None)
            if update and cache.stats_finite:
                self.num_batches_tracked += 1
            return y, cache
        stats = update or not use_batch
        y, cache = _forward_call(
            x, self.weight, self.bias, use_batch, self.running_mean if stats else None,
            self.running_var if stats else None, 0.0 if momentum is None else momentum,
            self.eps, self.layout, None, self._communicator(), self._check_input,
            self.unbiased_running_var, self.activation is not None)
        if update and cache.stats_finite:
            self.num_batches_tracked += 1
        return y, cache

    def _communicator(self):
        """The MPI communicator a forward synchronizes over (None: local)."""
        return None

    def backward(self, dy, *, input_grad: bool = True) -> np.ndarray | None:
        """Gradient with respect to the last forward's input (None, and
        nothing of its size written, when not ``input_grad``).

        Sets ``grad_weight`` and ``grad_bias`` (overwritten, not accumulated).
        """
        cache = self._last_cache()
        if isinstance(cache, _ghost.GhostCache):
            return self._gradients(_ghost.backward(dy, cache, input_grad))
        return self._gradients(batch_norm_backward(dy, cache, input_grad=input_grad))
