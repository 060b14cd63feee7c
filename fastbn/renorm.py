"""Batch Renormalization (Ioffe, 2017) on BatchNorm's kernels.

In training, with the batch statistics ``mu_B``, ``s_B = sqrt(var_B + eps)``
and the running ones ``s = sqrt(running_var + eps)``::

    r = clip(s_B / s, 1 / rmax, rmax)
    d = clip((mu_B - running_mean) / s, -dmax, dmax)
    y = ((x - mu_B) / s_B * r + d) * weight + bias

which is BatchNorm's affine map with the batch statistics, the weight
``r * weight`` and the bias ``d * weight + bias``: one statistics pass, one
affine pass. r and d are constants for the gradient, so backward is
BatchNorm's training backward with the weight ``r * weight``.
"""

from __future__ import annotations

import warnings

import numpy as np

from . import _checks, _engine, functional
from ._layout import Plan
from .functional import BatchNormCache, batch_norm_backward
from .layer import BatchNorm

__all__ = ["batch_renorm_forward", "batch_renorm_backward", "BatchRenormCache", "BatchRenorm"]


class BatchRenormCache:
    """What :func:`batch_renorm_backward` needs from a forward call: a
    reference to ``x`` and O(C) float64 vectors; treat it as opaque.

    Attributes
    ----------
    training : bool
        Whether the forward renormalized the batch (else: BatchNorm's eval).
    stats_finite : bool
        Whether the batch statistics were finite (the running statistics
        were updated only then).
    """

    __slots__ = ("_bn", "_r", "_d")

    def __init__(self, bn: BatchNormCache, r: np.ndarray, d: np.ndarray):
        self._bn, self._r, self._d = bn, r, d

    training = property(lambda self: self._bn.training)
    stats_finite = property(lambda self: self._bn.stats_finite)

    @property
    def mean(self) -> np.ndarray:
        """Per-channel mean the forward normalized with (the batch's in
        training, the running one in eval): float64, shape (C,), read-only."""
        return self._bn.mean

    @property
    def var(self) -> np.ndarray:
        """Per-channel biased variance the forward normalized with (as
        :attr:`mean`): float64, shape (C,), read-only."""
        return self._bn.var

    @property
    def r(self) -> np.ndarray:
        """Per-channel r (ones in eval): float64, shape (C,), read-only."""
        return _engine.read_only(self._r)

    @property
    def d(self) -> np.ndarray:
        """Per-channel d (zeros in eval): float64, shape (C,), read-only."""
        return _engine.read_only(self._d)

    def __repr__(self) -> str:
        mode = "training" if self.training else "eval"
        x = self._bn.x
        return f"BatchRenormCache({mode}, x shape {x.shape}, dtype {x.dtype})"


def _limit(value, name: str, low: float) -> float:
    """``rmax`` (>= 1) or ``dmax`` (>= 0); infinity means no clipping."""
    if not _checks._is_real(value):
        raise TypeError(f"{name} must be a real number >= {low:g}, got {_checks.describe(value)}")
    if not value >= low:
        raise ValueError(f"{name} must be >= {low:g}, got {value!r}")
    return float(value)


def batch_renorm_forward(x, weight, bias, running_mean, running_var, *, training: bool = True,
                         rmax: float = 3.0, dmax: float = 5.0, momentum: float = 0.1,
                         eps: float = 1e-5, layout: str = "NCHW", out: np.ndarray | None = None
                         ) -> tuple[np.ndarray, BatchRenormCache]:
    """Batch Renormalization forward pass (Ioffe, 2017).

    Parameters
    ----------
    x : array_like, float16, float32 or float64, rank 2 to 5
        Input batch, any strides; never written (float16: computed in float32).
    weight, bias : array_like, shape (C,), or None
        Per-channel scale (None: ones) and shift (None: zeros).
    running_mean, running_var : ndarray, shape (C,)
        Running statistics, required. In training they set r and d, then
        are updated in place as by :func:`batch_norm_forward` (unbiased
        batch variance ``var * m / (m - 1)``).
    training : bool
        Renormalize the batch; else BatchNorm's eval (the running statistics).
    rmax : float >= 1
        r is clipped to ``[1 / rmax, rmax]``.
    dmax : float >= 0
        d is clipped to ``[-dmax, dmax]``.
    momentum, eps, layout, out
        As for :func:`batch_norm_forward`; ``eps`` is added to both
        variances, the batch's and the running one.

    Returns
    -------
    y : ndarray
        ``((x - mu_B) / s_B * r + d) * weight + bias``, with ``s_B =
        sqrt(var_B + eps)``, ``s = sqrt(running_var + eps)``, ``r =
        clip(s_B / s, 1 / rmax, rmax)``, ``d = clip((mu_B - running_mean) / s,
        -dmax, dmax)``; dtype of ``x``.
    cache : BatchRenormCache
        Input to :func:`batch_renorm_backward`.

    Warns
    -----
    RuntimeWarning
        As :func:`batch_norm_forward`: the batch statistics are not finite,
        and the running statistics are left unchanged.
    """
    return _forward_call(x, weight, bias, running_mean, running_var, training, rmax, dmax,
                         momentum, eps, layout, out)


def _forward_call(x, weight, bias, running_mean, running_var, training, rmax, dmax, momentum,
                  eps, layout, out, check=None) -> tuple[np.ndarray, BatchRenormCache]:
    """:func:`batch_renorm_forward`, after ``check(x)`` when given (a
    layer's check of its input, which names the layer's terms)."""
    if check is not None:
        x = check(x)
    training = _checks.flag(training, "training")
    rmax, dmax = _limit(rmax, "rmax", 1.0), _limit(dmax, "dmax", 0.0)
    if running_mean is None or running_var is None:
        raise ValueError(
            "running_mean and running_var: expected both (Batch Renormalization corrects the "
            f"batch statistics with them), got running_mean="
            f"{'None' if running_mean is None else 'an array'}, running_var="
            f"{'None' if running_var is None else 'an array'}")
    a = functional._forward_args(x, weight, bias, training, running_mean, running_var,
                                 momentum, eps, layout, out, False)
    if not training:
        y, bn = functional._forward(a, False)
        ones = np.ones(a.channels)
        return y, BatchRenormCache(bn, ones, ones - 1.0)
    wide = a.x.astype(np.float32) if a.x.dtype is _engine.HALF else a.x
    mean, var = _engine.moments(wide, Plan(wide, a.axis))
    r, d = _r_d(mean, var, a.running_mean, a.running_var, a.eps, rmax, dmax)
    w = np.ones(a.channels) if a.weight is None else a.weight.astype(np.float64)
    b = 0.0 if a.bias is None else a.bias.astype(np.float64)
    # BatchNorm's affine map, with the batch statistics as the "running" ones
    y, bn = functional._forward(a._replace(weight=r * w, bias=d * w + b, running_mean=mean,
                                           running_var=var), False)
    factor = a.count / (a.count - 1.0)
    finite = _engine.update_running_stats(a.running_mean, a.running_var, mean, var, factor,
                                        a.momentum)
    if not finite:
        warnings.warn("batch statistics are not finite (NaN or Inf in the input); running "
                      "statistics were not updated", RuntimeWarning,
                      stacklevel=_engine.user_stacklevel())
    bn = BatchNormCache(bn.x, bn.plan, True, mean, var, a.eps, bn.weight, a.count, finite)
    return y, BatchRenormCache(bn, r, d)


def _r_d(mean, var, running_mean, running_var, eps, rmax, dmax):
    """r and d per channel, float64. A running variance of 0 with ``eps=0``
    gives the clip bounds (r = 1 and d = 0 where the batch agrees)."""
    s_b = np.sqrt(var + eps)
    s = np.sqrt(running_var.astype(np.float64) + eps)
    shift = mean - running_mean.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(s_b == s, 1.0, np.clip(s_b / s, 1.0 / rmax, rmax))
        d = np.where(shift == 0.0, 0.0, np.clip(shift / s, -dmax, dmax))
    return r, d


def batch_renorm_backward(dy, cache: BatchRenormCache, *, input_grad: bool = True, out=None
                          ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Gradients of ``sum(dy * y)`` for the forward call that gave ``cache``,
    with r and d held constant (as the paper prescribes).

    Parameters
    ----------
    dy : array_like
        Gradient of the loss with respect to ``y`` (shape and dtype of ``x``).
    cache : BatchRenormCache
        From :func:`batch_renorm_forward` (training or eval mode).
    input_grad : bool
        Whether to compute ``dx`` (False: None, nothing of x's size written).
    out : ndarray, optional
        Receives ``dx`` (shape and dtype of ``x``, overlapping neither ``x``
        nor ``dy``).

    Returns
    -------
    dx : ndarray or None
        ``r * weight / s_B * (dy - mean(dy) - xhat * mean(dy * xhat))`` with
        ``xhat = (x - mu_B) / s_B``, dtype of ``x``.
    dweight, dbias : ndarray, shape (C,)
        ``r * sum(dy * xhat) + d * sum(dy)`` and ``sum(dy)``, dtype of ``x``.
    """
    if not isinstance(cache, BatchRenormCache):
        raise TypeError("cache must be the BatchRenormCache returned by batch_renorm_forward, "
                        f"got {type(cache).__name__}")
    input_grad = _checks.flag(input_grad, "input_grad")
    bn, x = cache._bn, cache._bn.x
    half = x.dtype is _engine.HALF
    if half:  # in float32, each result rounded once
        dy = _checks.grad_output(dy, x)
        out = _checks.out_array(out, x, "dx", (("dy", dy),)) if input_grad else None
        dy = dy.astype(np.float32)
        bn = BatchNormCache(x.astype(np.float32), bn.plan, bn.training, bn._mean, bn._var,
                            bn.eps, bn.weight, bn.count, bn.stats_finite)
    dx, sum_dy_xhat, sum_dy = batch_norm_backward(dy, bn, input_grad=input_grad,
                                                  out=None if half else out)
    if half and dx is not None:
        target = np.empty_like(x) if out is None else out
        target[...] = dx
        dx = target
    dweight = cache._r * sum_dy_xhat + cache._d * sum_dy if bn.training else sum_dy_xhat
    return dx, dweight.astype(x.dtype), sum_dy.astype(x.dtype)


class BatchRenorm(BatchNorm):
    """Batch Renormalization layer (Ioffe, 2017): in training, the batch
    statistics corrected towards the running ones by r and d (see
    :func:`batch_renorm_forward`); in eval mode, BatchNorm's eval.

    Parameters
    ----------
    num_features : int
        Number of channels C.
    rmax : float >= 1
        r is clipped to ``[1 / rmax, rmax]``; may be changed between calls
        (the paper raises it from 1 during training).
    dmax : float >= 0
        d is clipped to ``[-dmax, dmax]``; may be changed as ``rmax``
        (the paper raises it from 0).
    momentum : float in [0, 1] or None
        Weight of each batch in the running statistics; None for a
        cumulative average.
    eps : float
        Added to the variances before the square root.
    layout : {"NCHW", "NHWC"}
        Channel axis 1 or last.
    dtype : float16, float32 or float64
        dtype of parameters and running statistics.
    affine : bool
        Learnable ``weight`` and ``bias``; else both None.

    The running statistics are always kept (they are part of the method);
    ``state_dict()`` has BatchNorm's keys.

    Examples
    --------
    >>> brn = BatchRenorm(3, rmax=1.5, dmax=0.5)
    >>> y = brn(np.random.rand(4, 3, 8, 8).astype(np.float32))
    >>> dx = brn.backward(np.ones_like(y))
    """

    _KEYWORDS = ("rmax", "dmax", "momentum", "eps", "affine", "layout")

    def __init__(self, num_features: int, *, rmax: float = 3.0, dmax: float = 5.0,
                 momentum: float | None = 0.1, eps: float = 1e-5, layout: str = "NCHW",
                 dtype=np.float32, affine: bool = True):
        self.rmax, self.dmax = _limit(rmax, "rmax", 1.0), _limit(dmax, "dmax", 0.0)
        super().__init__(num_features, eps=eps, momentum=momentum, affine=affine,
                         layout=layout, dtype=dtype)

    def _forward(self, x) -> tuple[np.ndarray, BatchRenormCache]:
        momentum = self.momentum
        if momentum is None:
            momentum = 1.0 / (self.num_batches_tracked + 1)
        y, cache = _forward_call(x, self.weight, self.bias, self.running_mean, self.running_var,
                                 self.training, self.rmax, self.dmax, momentum, self.eps,
                                 self.layout, None, self._check_input)
        if self.training and cache.stats_finite:
            self.num_batches_tracked += 1
        return y, cache

    def backward(self, dy, *, input_grad: bool = True) -> np.ndarray | None:
        """Gradient with respect to the last forward's input, r and d held
        constant (None when not ``input_grad``).

        Sets ``grad_weight`` and ``grad_bias`` (overwritten, not accumulated).
        """
        return self._gradients(batch_renorm_backward(dy, self._last_cache(),
                                                     input_grad=input_grad))
