"""``LayerNorm``, ``GroupNorm`` and ``InstanceNorm``: layers over the
functions of :mod:`fastbn.family`, with PyTorch's semantics and state_dict
keys and :class:`fastbn.BatchNorm`'s methods."""

from __future__ import annotations

import numbers

import numpy as np

from . import _checks, _layer_base
from .family import (
    group_norm_backward,
    group_norm_forward,
    instance_norm_backward,
    instance_norm_forward,
    layer_norm_backward,
    layer_norm_forward,
)

__all__ = ["GroupNorm", "InstanceNorm", "LayerNorm"]


def _normalized_shape(value) -> tuple[int, ...]:
    """``normalized_shape`` as a tuple of 1 to 4 ints >= 1 (an input has
    rank 5 at most, with at least one leading axis not normalized)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (value,)
    if not (isinstance(value, (tuple, list)) and all(
            isinstance(d, numbers.Integral) and not isinstance(d, bool) for d in value)):
        raise TypeError(f"normalized_shape must be an int or a tuple of ints, "
                        f"got {_checks.describe(value)}")
    shape = tuple(int(d) for d in value)
    if not 1 <= len(shape) <= 4 or min(shape) < 1:
        raise ValueError(f"normalized_shape must have 1 to 4 axes of length >= 1 (an input "
                         f"has rank 5 at most, one axis not normalized), got {shape}")
    return shape


class LayerNorm(_layer_base.NormLayer):
    """Layer normalization (Ba et al., 2016) over the trailing axes of an
    input of rank 2 to 5: each sample's values along ``normalized_shape``
    are normalized with their own mean and biased variance, the same in
    training and eval mode.

    Parameters
    ----------
    normalized_shape : int or tuple of int
        Shape of the trailing axes normalized together (1 to 4 axes).
    eps : float
        Added to the variance before the square root.
    elementwise_affine : bool
        Learnable ``weight`` (ones) and ``bias`` (zeros) of shape
        ``normalized_shape``; else both None.
    bias : bool
        With ``elementwise_affine``: False leaves ``bias`` None.
    dtype : float16, float32 or float64
        dtype of the parameters.

    Examples
    --------
    >>> ln = LayerNorm((4, 4))
    >>> y = ln(np.random.rand(8, 3, 4, 4).astype(np.float32))
    >>> dx = ln.backward(np.ones_like(y))
    """

    _SIZE_ARG = "normalized_shape"
    _POSITIONAL = ("normalized_shape",)
    _KEYWORDS = ("eps", "elementwise_affine")
    _backward = staticmethod(layer_norm_backward)

    def __init__(self, normalized_shape, *, eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True, dtype=np.float32):
        self.normalized_shape = _normalized_shape(normalized_shape)
        dtype = _layer_base.dtype(dtype)
        self.eps = _checks.eps(eps)
        self.elementwise_affine = _checks.flag(elementwise_affine, "elementwise_affine")
        bias = _checks.flag(bias, "bias")
        self._init_state(dtype, self.normalized_shape, weight=self.elementwise_affine,
                         bias=self.elementwise_affine and bias, running=False)

    def _check_input(self, x) -> np.ndarray:
        x = self._ranked(x)
        shape = self.normalized_shape
        if x.ndim <= len(shape) or x.shape[x.ndim - len(shape):] != shape:
            raise ValueError(
                f"LayerNorm(normalized_shape={shape}) expects an input whose last "
                f"{len(shape)} ax{'is has' if len(shape) == 1 else 'es have'} shape {shape}, "
                f"with at least one axis before, got shape {x.shape}")
        return x

    def _forward(self, x):
        return layer_norm_forward(self._check_input(x), self.normalized_shape, self.weight,
                                  self.bias, eps=self.eps)


class GroupNorm(_layer_base.NormLayer):
    """Group normalization (Wu and He, 2018) over NCHW or NHWC tensors of
    rank 2 to 5: the channels are split into ``num_groups`` groups of
    consecutive channels, and each (sample, group) is normalized with the
    mean and biased variance of its values, the same in training and eval
    mode.

    Parameters
    ----------
    num_groups : int
        Number of groups G; must divide ``num_channels``.
    num_channels : int
        Number of channels C.
    eps : float
        Added to the variance before the square root.
    affine : bool
        Learnable per-channel ``weight`` (ones) and ``bias`` (zeros); else
        both None.
    layout : {"NCHW", "NHWC"}
        Channel axis 1 or last.
    dtype : float16, float32 or float64
        dtype of the parameters.

    Examples
    --------
    >>> gn = GroupNorm(2, 6)
    >>> y = gn(np.random.rand(8, 6, 4, 4).astype(np.float32))
    >>> dx = gn.backward(np.ones_like(y))
    """

    _SIZE_ARG = "num_channels"
    _POSITIONAL = ("num_groups", "num_channels")
    _KEYWORDS = ("eps", "affine", "layout")
    _backward = staticmethod(group_norm_backward)

    def __init__(self, num_groups: int, num_channels: int, *, eps: float = 1e-5,
                 affine: bool = True, layout: str = "NCHW", dtype=np.float32):
        self.num_groups = _layer_base.size(num_groups, "num_groups")
        self.num_channels = _layer_base.size(num_channels, "num_channels")
        if self.num_channels % self.num_groups:
            raise ValueError(f"num_channels must be divisible by num_groups, got "
                             f"num_channels={self.num_channels} and num_groups={self.num_groups}")
        dtype = _layer_base.dtype(dtype)
        self.eps = _checks.eps(eps)
        self.affine = _checks.flag(affine, "affine")
        self.layout = _checks.layout(layout)
        self._init_state(dtype, (self.num_channels,), weight=self.affine, bias=self.affine,
                         running=False)

    def _forward(self, x):
        return group_norm_forward(self._check_input(x), self.num_groups, self.weight, self.bias,
                                  eps=self.eps, layout=self.layout)


class InstanceNorm(_layer_base.NormLayer):
    """Instance normalization (Ulyanov et al., 2016) over NCHW or NHWC
    tensors of rank 3 to 5 (PyTorch's ``InstanceNorm1d``, ``2d`` and ``3d``
    in one): each (sample, channel) is normalized with the mean and biased
    variance of its spatial values.

    With ``track_running_stats``, training updates ``running_mean`` and
    ``running_var`` with the mean over the samples of each instance's mean
    and unbiased variance, and eval mode normalizes with them; without, both
    modes use the instance statistics. ``num_batches_tracked`` is kept in
    the state dict but not counted (as in PyTorch).

    Parameters
    ----------
    num_features : int
        Number of channels C.
    momentum : float in [0, 1] or None
        Weight of each batch in the running statistics (None: 0, as in
        PyTorch).
    eps, affine, track_running_stats, layout, dtype
        As for :class:`fastbn.BatchNorm`; ``affine`` and
        ``track_running_stats`` default to False, as in PyTorch.

    Examples
    --------
    >>> inorm = InstanceNorm(3, affine=True)
    >>> y = inorm(np.random.rand(8, 3, 4, 4).astype(np.float32))
    >>> dx = inorm.backward(np.ones_like(y))
    """

    _MIN_RANK = 3
    _KEYWORDS = ("eps", "momentum", "affine", "track_running_stats", "layout")
    _backward = staticmethod(instance_norm_backward)

    def __init__(self, num_features: int, *, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = False, track_running_stats: bool = False, layout: str = "NCHW",
                 dtype=np.float32):
        self.num_features = _layer_base.size(num_features, "num_features")
        dtype = _layer_base.dtype(dtype)
        self.eps = _checks.eps(eps)
        self.momentum = _checks.momentum(momentum, allow_none=True)
        self.affine = _checks.flag(affine, "affine")
        self.track_running_stats = _checks.flag(track_running_stats, "track_running_stats")
        self.layout = _checks.layout(layout)
        self._init_state(dtype, (self.num_features,), weight=self.affine, bias=self.affine,
                         running=self.track_running_stats)

    def _forward(self, x):
        x = self._check_input(x)
        use_input_stats = self.training or self.running_mean is None
        if use_input_stats and x.size < 2 * x.shape[0] * self.num_features:
            raise ValueError(
                f"InstanceNorm(num_features={self.num_features}) expects more than 1 spatial "
                f"value per channel when it normalizes with the instance statistics, got "
                f"input of shape {x.shape}")
        return instance_norm_forward(
            x, self.weight, self.bias, use_input_stats=use_input_stats,
            running_mean=self.running_mean, running_var=self.running_var,
            momentum=0.0 if self.momentum is None else self.momentum, eps=self.eps,
            layout=self.layout)
