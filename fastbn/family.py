"""LayerNorm, GroupNorm and InstanceNorm on BatchNorm's kernels.

Each norm is a mapping of its axes onto the kernels' views (see
:mod:`fastbn.kernels`), not a kernel of its own:

* GroupNorm, channels first: the statistics of a (sample, group) run over
  the ``Cg*S`` consecutive values of its channels, one "channel" of an
  ``(1, N*G, Cg*S)`` view; the normalization is BatchNorm's per-channel map
  over the ``(1, N*C, S)`` view, each (sample, channel) with its group's
  statistics and its channel's weight and bias.
* GroupNorm, channels last: per sample, the column statistics of its
  ``(S, C)`` rows, merged over each group's columns (Chan et al.), then the
  per-column map.
* InstanceNorm is GroupNorm with a group per channel, plus running
  statistics; with those (``use_input_stats=False``) it is BatchNorm's eval.
* LayerNorm: the rows of an ``(R, D)`` view, statistics per row, weight and
  bias along the row: the row kernels (:mod:`fastbn.kernels.rows`).

Backward passes take the per-(sample, channel) sums of BatchNorm's
gradient kernels, combine them per group in float64 (O(N*C)), and apply
the resulting coefficients in one element-wise pass.

This module holds the public functions and their checks; the views, the
outputs and :class:`NormCache` are in :mod:`fastbn._family_views`, the
GroupNorm/InstanceNorm passes in :mod:`fastbn._grouped`.
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np

from . import _checks
from ._family_views import NormCache, Rows, check_cache, deliver, groups, output, widened
from ._grouped import grouped_backward, grouped_forward
from ._engine import NONE, channel_params, kernel_param, update_running_stats, user_stacklevel
from .functional import batch_norm_backward, batch_norm_forward
from .kernels import KERNELS

__all__ = [
    "NormCache",
    "group_norm_backward",
    "group_norm_forward",
    "instance_norm_backward",
    "instance_norm_forward",
    "layer_norm_backward",
    "layer_norm_forward",
]


# ----------------------------------------------------------------------------- checks


def _normalized_shape(value, x: np.ndarray) -> tuple[int, ...]:
    """``normalized_shape`` as a tuple, checked against x's trailing axes."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        shape = (int(value),)
    elif (isinstance(value, (tuple, list)) and value
          and all(isinstance(d, numbers.Integral) and not isinstance(d, bool) for d in value)):
        shape = tuple(int(d) for d in value)
    else:
        raise TypeError(f"normalized_shape must be an int or a non-empty tuple of ints, "
                        f"got {_checks.describe(value)}")
    if len(shape) >= x.ndim or x.shape[x.ndim - len(shape):] != shape:
        raise ValueError(
            f"normalized_shape {shape}: expected the trailing axes of x with at least one "
            f"leading axis left, got x of shape {x.shape}")
    return shape


def _shaped_param(value, name: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """A LayerNorm weight or bias: a float array of exactly ``shape``."""
    return None if value is None else _checks.shaped_array(value, name, shape, f"normalized_shape={shape}")


def _num_groups(value, c: int) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"num_groups must be an int, got {_checks.describe(value)}")
    if value < 1 or c % value:
        raise ValueError(f"num_groups must be a positive divisor of the channel count "
                         f"(C = {c}), got {value}")
    return int(value)


def group_norm_forward(x, num_groups: int, weight=None, bias=None, *, eps: float = 1e-5,
                       layout: str = "NCHW", out: np.ndarray | None = None
                       ) -> tuple[np.ndarray, NormCache]:
    """Group normalization forward pass (Wu & He, 2018).

    Parameters
    ----------
    x : array_like, float16, float32 or float64, rank 2 to 5
        Input batch, any strides; never written.
    num_groups : int
        Number of groups G; the C channels split into G groups of C/G
        consecutive channels.
    weight, bias : array_like, shape (C,), optional
        Per-channel scale (default ones) and shift (default zeros); shapes
        that broadcast along the channel axis only are accepted too.
    eps : float >= 0
        Added to the variance before the square root.
    layout : {"NCHW", "NHWC"}
        Channel axis 1 or last; channels-last input is normalized in place
        of its memory order (no transposed copy).
    out : ndarray, optional
        Receives the output (shape and dtype of ``x``, not overlapping it).

    Returns
    -------
    y : ndarray
        ``(x - mean_g) / sqrt(var_g + eps) * weight + bias``, the statistics
        of each (sample, group) over its channels and positions; dtype of x.
    cache : NormCache
        Input to :func:`group_norm_backward`.
    """
    x = _checks.tensor(x)
    axis, c = _checks.channels(x, layout)
    g = _num_groups(num_groups, c)
    eps = _checks.eps(eps)
    weight = _checks.channel_vector(weight, "weight", c, x=x, axis=axis)
    bias = _checks.channel_vector(bias, "bias", c, x=x, axis=axis)
    out = _checks.out_array(out, x)
    return grouped_forward("group", x, groups(x, axis, g), weight, bias, eps, out)


def group_norm_backward(dy, cache: NormCache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of ``sum(dy * y)`` for the :func:`group_norm_forward` call
    that gave ``cache``.

    Returns
    -------
    dx : ndarray
        Shape and dtype of ``x``.
    dweight, dbias : ndarray, shape (C,)
        dtype of ``x``, also when the forward had no weight or bias.
    """
    check_cache(cache, "group")
    return grouped_backward(dy, cache)


def instance_norm_forward(x, weight=None, bias=None, *, use_input_stats: bool = True,
                          running_mean=None, running_var=None, momentum: float = 0.1,
                          eps: float = 1e-5, layout: str = "NCHW",
                          out: np.ndarray | None = None) -> tuple[np.ndarray, NormCache]:
    """Instance normalization forward pass (Ulyanov et al., 2016).

    Parameters
    ----------
    x : array_like, float16, float32 or float64, rank 3 to 5
        Input batch (N, C, ...) or (N, ..., C), any strides; never written.
    weight, bias : array_like, shape (C,), optional
        Per-channel scale and shift.
    use_input_stats : bool
        Normalize each (sample, channel) with its own statistics over the
        spatial positions; False: with ``running_mean``/``running_var``.
    running_mean, running_var : ndarray, shape (C,), optional
        With ``use_input_stats``, updated in place with the mean over the
        samples of each instance's mean and unbiased variance:
        ``r = (1 - momentum) * r + momentum * s``. Required otherwise.
    momentum : float in [0, 1]
    eps : float >= 0
    layout : {"NCHW", "NHWC"}
    out : ndarray, optional
        Receives the output (shape and dtype of ``x``, not overlapping it).

    Returns
    -------
    y : ndarray
    cache : NormCache
        Input to :func:`instance_norm_backward`.

    Warns
    -----
    RuntimeWarning
        When the statistics are not finite; the running statistics are then
        left unchanged.
    """
    x = _checks.tensor(x)
    axis, c = _checks.channels(x, layout)
    if x.ndim < 3:
        raise ValueError(f"x: expected an input of rank 3 to 5 (N, C, ...) for instance "
                         f"normalization, got rank {x.ndim} (shape {x.shape})")
    use_input_stats = _checks.flag(use_input_stats, "use_input_stats")
    s = x.size // (x.shape[0] * c)
    if use_input_stats and s < 2:
        raise ValueError(f"x: expected more than 1 spatial value per channel with "
                         f"use_input_stats, got input of shape {x.shape}")
    eps = _checks.eps(eps)
    momentum = _checks.momentum(momentum)
    weight, bias, rmean, rvar = channel_params(x, axis, weight, bias, running_mean,
                                                running_var, use_input_stats,
                                                "use_input_stats=False")
    out = _checks.out_array(out, x)
    if not use_input_stats:
        y, bn = batch_norm_forward(x, weight, bias, training=False, running_mean=rmean,
                                   running_var=rvar, eps=eps, layout=layout, out=out)
        n = x.shape[0]
        mean = np.broadcast_to(bn._mean, (n, c))
        var = np.broadcast_to(bn._var, (n, c))
        return y, NormCache("instance", x, None, mean, var, eps, None, (c,), False, bn)
    y, cache = grouped_forward("instance", x, groups(x, axis, c), weight, bias, eps, out)
    if rmean is not None:
        finite = update_running_stats(rmean, rvar, cache._mean.mean(0), cache._var.mean(0),
                                 s / (s - 1.0), momentum)
        if not finite:
            warnings.warn("instance statistics are not finite (NaN or Inf in the input); "
                          "running statistics were not updated", RuntimeWarning,
                          stacklevel=user_stacklevel())
    return y, cache


def instance_norm_backward(dy, cache: NormCache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of ``sum(dy * y)`` for the :func:`instance_norm_forward`
    call that gave ``cache`` (with ``use_input_stats=False`` the statistics
    are constants).

    Returns
    -------
    dx : ndarray
    dweight, dbias : ndarray, shape (C,)
    """
    check_cache(cache, "instance")
    if cache.eval_cache is not None:
        return batch_norm_backward(dy, cache.eval_cache)
    return grouped_backward(dy, cache)


# ----------------------------------------------------------------------------- layer


def layer_norm_forward(x, normalized_shape, weight=None, bias=None, *, eps: float = 1e-5,
                       out: np.ndarray | None = None) -> tuple[np.ndarray, NormCache]:
    """Layer normalization forward pass (Ba et al., 2016).

    Parameters
    ----------
    x : array_like, float16, float32 or float64, rank 2 to 5
        Input, any strides; never written.
    normalized_shape : int or tuple of int
        The trailing axes normalized together (at least one leading axis
        must remain).
    weight, bias : array_like, shape ``normalized_shape``, optional
        Element-wise scale (default ones) and shift (default zeros).
    eps : float >= 0
    out : ndarray, optional
        Receives the output (shape and dtype of ``x``, not overlapping it).

    Returns
    -------
    y : ndarray
        ``(x - mean) / sqrt(var + eps) * weight + bias``, statistics per
        leading index over the normalized axes; dtype of x.
    cache : NormCache
        Input to :func:`layer_norm_backward`.
    """
    x = _checks.tensor(x)
    _checks.rank(x)
    if x.size == 0:
        raise ValueError(f"x: expected a non-empty input, got shape {x.shape}")
    shape = _normalized_shape(normalized_shape, x)
    weight = _shaped_param(weight, "weight", shape)
    bias = _shaped_param(bias, "bias", shape)
    eps = _checks.eps(eps)
    out = _checks.out_array(out, x)
    x32 = widened(x)
    dt = x32.dtype
    d = int(np.prod(shape))
    rows = Rows(x.size // d, d, x.shape)
    w = np.ones(d, dt) if weight is None else kernel_param(weight.reshape(d), dt)
    b = np.zeros(d, dt) if bias is None else kernel_param(bias.reshape(d), dt)
    mean, var = np.empty(rows.r), np.empty(rows.r)
    yv, y = output(rows, out if dt == x.dtype else None, dt)
    KERNELS["rows_forward"]["any"](x.size, rows.view(x32), w, b, eps, mean, var, yv)
    y = deliver(y, x, out)
    lead = x.shape[:x.ndim - len(shape)]
    return y, NormCache("layer", x, rows, mean.reshape(lead), var.reshape(lead), eps,
                        w if weight is not None else NONE[dt], shape)


def layer_norm_backward(dy, cache: NormCache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of ``sum(dy * y)`` for the :func:`layer_norm_forward` call
    that gave ``cache``.

    Returns
    -------
    dx : ndarray
        Shape and dtype of ``x``.
    dweight, dbias : ndarray, shape ``normalized_shape``
        dtype of ``x``, also when the forward had no weight or bias.
    """
    check_cache(cache, "layer")
    x = cache.x
    dy = _checks.grad_output(dy, x)
    rows = cache.geometry
    x32, dy32 = widened(x), widened(dy)
    dt = x32.dtype
    w = cache.weight if cache.weight.size else np.ones(rows.d, dt)
    dxv, dx = output(rows, None, dt)
    dweight, dbias = np.empty(rows.d), np.empty(rows.d)
    KERNELS["rows_backward"]["any"](2 * x.size, rows.view(dy32), rows.view(x32),
                                    cache._mean.reshape(-1), cache._var.reshape(-1), cache.eps, w,
                                    dxv, dweight, dbias)
    return (deliver(dx, x, None), dweight.reshape(cache.shape).astype(x.dtype),
            dbias.reshape(cache.shape).astype(x.dtype))


