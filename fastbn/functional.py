"""Functional batch normalization: statistics, forward, backward."""

from __future__ import annotations

import warnings
from typing import Callable, NamedTuple

import numpy as np

from . import _checks, _collective, _synced
from ._engine import (HALF, NONE, act_args, channel_params, channel_per_task, kernel_param,
                      moments, read_only, run_kernel, update_running_stats, user_stacklevel)
from ._layout import Plan

__all__ = ["batch_stats", "batch_norm_forward", "batch_norm_backward", "BatchNormCache"]


class BatchNormCache:
    """What :func:`batch_norm_backward` needs from a forward call.

    Holds a reference to ``x`` and O(C) float64 vectors; treat it as opaque.

    Attributes
    ----------
    training : bool
        Whether the forward normalized with batch statistics.
    stats_finite : bool
        Whether those statistics were finite (running statistics were
        updated only then).
    """

    __slots__ = ("x", "plan", "training", "_mean", "_var", "eps", "weight", "count",
                 "stats_finite", "sync", "gate")

    def __init__(self, x, plan, training, mean, var, eps, weight, count, stats_finite,
                 sync=None, gate=None):
        self.x = x
        self.plan = plan
        self.training = training
        self._mean = mean
        self._var = var
        self.eps = eps
        self.weight = weight
        self.count = count
        self.stats_finite = stats_finite
        self.sync = sync
        #: A fused ReLU's gate: the forward's per-channel scale and shift
        #: (see :mod:`fastbn.kernels.grad_sums`); None without activation.
        self.gate = gate

    @property
    def mean(self) -> np.ndarray:
        """Per-channel mean the forward normalized with (the batch's in
        training, the running one in eval): float64, shape (C,), read-only."""
        return read_only(self._mean)

    @property
    def var(self) -> np.ndarray:
        """Per-channel biased variance the forward normalized with (as
        :attr:`mean`): float64, shape (C,), read-only."""
        return read_only(self._var)

    def __repr__(self) -> str:
        mode = "training" if self.training else "eval"
        return f"BatchNormCache({mode}, x shape {self.x.shape}, dtype {self.x.dtype})"


def batch_stats(x, *, layout: str = "NCHW") -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and biased variance.

    Parameters
    ----------
    x : array_like, float16, float32 or float64, rank 2 to 5
        Input batch, any strides (float16: computed in float32).
    layout : {"NCHW", "NHWC"}
        Channel axis 1 (``"NCHW"``) or last (``"NHWC"``).

    Returns
    -------
    mean, var : ndarray, shape (C,), dtype of ``x``
        Blocks of shifted sums in the input dtype, merged in float64 with
        Chan et al.'s formula. Against a float64 two-pass reference: within
        1e-10 relative for float64 x; for float32 x, the variance within
        1e-4 relative and the mean within 1e-6 of the data's magnitude, also
        when ``|mean| = 1e4 * std`` (measurements: the numerical stability page).
    """
    x = _checks.tensor(x)
    axis, _ = _checks.channels(x, layout)
    wide = x.astype(np.float32) if x.dtype is HALF else x
    mean, var = moments(wide, Plan(wide, axis))
    return mean.astype(x.dtype), var.astype(x.dtype)


class _Forward(NamedTuple):
    """Checked arguments of :func:`batch_norm_forward`."""

    x: np.ndarray
    axis: int
    channels: int
    count: int
    eps: float
    momentum: float
    weight: np.ndarray
    bias: np.ndarray
    running_mean: np.ndarray | None
    running_var: np.ndarray | None
    out: np.ndarray | None


def _forward_args(x, weight, bias, training, running_mean, running_var, momentum, eps,
                  layout, out, synced) -> _Forward:
    """Every check of :func:`batch_norm_forward`, before anything changes.

    A synchronized training call (``synced``) may hold zero or one value per
    channel on this rank; the batch of all ranks is checked once merged."""
    x = _checks.tensor(x)
    axis, c = _checks.channels(x, layout, allow_empty=synced)
    m = _checks.values_per_channel(x, c, training and not synced)
    eps = _checks.eps(eps)
    momentum = _checks.momentum(momentum)
    weight, bias, rmean, rvar = channel_params(x, axis, weight, bias, running_mean,
                                                running_var, training, "eval mode")
    out = _checks.out_array(out, x)
    return _Forward(x, axis, c, m, eps, momentum, weight, bias, rmean, rvar, out)


def _common_args(x, weight, bias, training, running_mean, running_var, momentum, eps, layout,
                 out) -> _Forward | None:
    """:func:`_forward_args` for the common case, in a few cheap tests: a
    float32/float64 ndarray, (C,) float vectors, float or int eps and
    momentum, no ``out``; None whenever anything is otherwise (then the full
    checks run, and raise if they must). Small calls cost mostly this."""
    if not (type(x) is np.ndarray and x.dtype in _checks.FLOAT_DTYPES and out is None
            and 2 <= x.ndim <= 5 and x.size and (layout == "NCHW" or layout == "NHWC")
            and type(eps) in (float, int) and 0 <= eps < float("inf")
            and type(momentum) in (float, int) and 0 <= momentum <= 1):
        return None
    axis = 1 if layout == "NCHW" else x.ndim - 1
    c = x.shape[axis]
    m = x.size // c
    if training and m < 2:
        return None
    stats_given = running_mean is not None
    if stats_given != (running_var is not None) or not (training or stats_given):
        return None
    vec = _checks.channel_vector  # its own fast path; raises as the full checks would
    return _Forward(x, axis, c, m, float(eps), float(momentum),
                    vec(weight, "weight", c, x=x, axis=axis), vec(bias, "bias", c, x=x, axis=axis),
                    vec(running_mean, "running_mean", c, in_place=training, x=x, axis=axis),
                    vec(running_var, "running_var", c, in_place=training, x=x, axis=axis), None)


def batch_norm_forward(
    x,
    weight=None,
    bias=None,
    *,
    training: bool = True,
    running_mean: np.ndarray | None = None,
    running_var: np.ndarray | None = None,
    momentum: float = 0.1,
    eps: float = 1e-5,
    layout: str = "NCHW",
    out: np.ndarray | None = None,
    comm=None,
    unbiased_running_var: bool = True,
    activation: str | None = None,
) -> tuple[np.ndarray, BatchNormCache]:
    """Batch normalization forward pass.

    Parameters
    ----------
    x : array_like, float16, float32 or float64, rank 2 to 5
        Input batch, any strides; never written. float16 is a storage
        format: computed in float32, rounded once.
    weight, bias : array_like, shape (C,), optional
        Per-channel scale (default ones) and shift (default zeros).
    training : bool
        Normalize with the batch statistics (and update the running
        statistics, if given), else with ``running_mean``/``running_var``.
    running_mean, running_var : ndarray, shape (C,), optional
        Running statistics. In training they are updated in place:
        ``r = (1 - momentum) * r + momentum * s``, with the unbiased batch
        variance ``var * m / (m - 1)``, ``m`` values per channel (the
        biased ``var`` with ``unbiased_running_var=False``). Required in
        eval mode.
    momentum : float in [0, 1]
        Weight of the current batch in the running statistics.
    eps : float >= 0
        Added to the variance before the square root.
    layout : {"NCHW", "NHWC"}
        Channel axis 1 or last.
    out : ndarray, optional
        Receives the output (shape and dtype of ``x``, not overlapping it).
    unbiased_running_var : bool
        False stores the biased batch variance in ``running_var`` (the
        Keras, Flax and numpy-ml convention) instead of ``var * m / (m - 1)``.
    comm : mpi4py.MPI.Comm, optional
        In training, normalize with the statistics of the batch formed by
        every rank's ``x``: a collective call, which every rank of ``comm``
        must make. A rank may hold an empty batch. Ignored in eval mode.
    activation : {None, "relu"}
        ``"relu"`` returns ``max(y, 0)`` from the same pass; the backward
        then gives the gradients of the composition. The cache keeps no
        mask: the backward repeats the forward's arithmetic on x to find
        where ``y > 0`` (so y may be overwritten after the forward).

    Returns
    -------
    y : ndarray
        ``(x - mean) / sqrt(var + eps) * weight + bias``, dtype of ``x``.
    cache : BatchNormCache
        Input to :func:`batch_norm_backward`.

    Warns
    -----
    RuntimeWarning
        When the batch statistics are not finite; the running statistics
        are then left unchanged.
    """
    unbiased = _checks.flag(unbiased_running_var, "unbiased_running_var")
    relu = _checks.activation(activation)
    return _forward_call(x, weight, bias, training, running_mean, running_var, momentum, eps,
                         layout, out, comm, unbiased=unbiased, relu=relu)


def _forward_call(x, weight, bias, training, running_mean, running_var, momentum, eps, layout,
                  out, comm, check: Callable[[object], np.ndarray] | None = None,
                  unbiased: bool = True, relu: bool = False
                  ) -> tuple[np.ndarray, BatchNormCache]:
    """:func:`batch_norm_forward`, after ``check(x)`` when given: a layer's
    own check of its input (which returns it as an ndarray), run before any
    other, and in a synchronized call before the ranks exchange their
    errors."""
    if not (training and comm is not None):
        if check is not None:
            x = check(x)
        a = _common_args(x, weight, bias, training, running_mean, running_var, momentum, eps,
                         layout, out)
        if a is None:
            a = _forward_args(x, weight, bias, training, running_mean, running_var, momentum,
                              eps, layout, out, False)
        return _forward(a, bool(training), None, unbiased, relu)
    comm = _collective.communicator(comm)
    a, error = None, None
    try:
        if check is not None:
            x = check(x)
        a = _forward_args(x, weight, bias, True, running_mean, running_var, momentum, eps,
                          layout, out, True)
    except (TypeError, ValueError) as exc:
        error = exc
    header, count = (None, None) if a is None else ((a.channels, a.x.dtype.str, layout), a.count)
    sync = _synced.Sync(comm, _collective.exchange(comm, error, header, count))
    total = sum(sync.counts)
    if total < 2:
        raise ValueError(
            "expected more than 1 value per channel in the batch of all ranks when "
            f"training, got {total} (per rank: {sync.counts})"
        )
    return _forward(a._replace(count=total), True, sync, unbiased, relu)


def _forward(a: _Forward, training: bool, sync=None, unbiased: bool = True, relu: bool = False
             ) -> tuple[np.ndarray, BatchNormCache]:
    """The forward pass over checked arguments, synchronized over the ranks
    of ``sync`` when given (then ``a.count`` is the count of all ranks);
    ``unbiased``: the running variance gets ``var * m / (m - 1)``, else
    ``var``; ``relu``: a ReLU fused into the same pass."""
    if a.x.dtype is HALF:
        return _half_forward(a, training, sync, unbiased, relu)
    x, c = a.x, a.channels
    lo, gate = act_args(np.empty(2 * c, x.dtype) if relu else None, x.dtype)
    plan = Plan(x, a.axis) if x.size else None
    if plan is None:
        xv, yv, scratch = None, None, None
        y = np.empty_like(x) if a.out is None else a.out
    else:
        xv = plan.view(x)
        yv, y, scratch = plan.output(a.out, x.dtype)
    weight, bias = kernel_param(a.weight, x.dtype), kernel_param(a.bias, x.dtype)
    if sync is not None:
        mean, var = _synced.forward(sync, plan, xv, c, weight, bias, a.eps, lo, gate, yv)
    elif training:
        mean, var = np.empty(c), np.empty(c)
        if channel_per_task(plan, x, 1):
            run_kernel("fused_forward", plan, x.size, xv, 1, weight, bias, a.eps, lo, mean, var, gate,
                 yv)
        else:
            run_kernel("stats", plan, x.size, xv, mean, var)
            run_kernel("affine", plan, x.size, xv, mean, var, weight, bias, a.eps, lo, gate, yv)
    else:
        mean, var = a.running_mean.astype(np.float64), a.running_var.astype(np.float64)
        run_kernel("affine", plan, x.size, xv, mean, var, weight, bias, a.eps, lo, gate, yv)
    if scratch is not None:
        y[...] = scratch

    finite = True
    if training and a.running_mean is not None:
        factor = a.count / (a.count - 1.0) if unbiased else 1.0
        finite = update_running_stats(a.running_mean, a.running_var, mean, var, factor, a.momentum)
        if not finite:
            warnings.warn(
                "batch statistics are not finite (NaN or Inf in the input); "
                "running statistics were not updated",
                RuntimeWarning,
                stacklevel=user_stacklevel(),
            )
    return y, BatchNormCache(x, plan, training, mean, var, a.eps, weight, a.count, finite, sync,
                             gate if relu else None)


def _half_forward(a: _Forward, training: bool, sync, unbiased: bool, relu: bool
                  ) -> tuple[np.ndarray, BatchNormCache]:
    """float16 is a storage format: widened to float32, computed there,
    rounded once. The cache keeps the float16 input (O(C) beyond it, as
    always); backward widens it again."""
    y32, cache = _forward(a._replace(x=a.x.astype(np.float32), out=None), training, sync,
                          unbiased, relu)
    if a.out is None:
        y = y32.astype(np.float16)
    else:
        y = a.out
        y[...] = y32
    cache.x = a.x
    return y, cache


def _half_backward(dy, cache: BatchNormCache, input_grad: bool, out, comm):
    """:func:`batch_norm_backward` of a float16 forward, in float32. In a
    synchronized call, a dy or out that is not what it must be is passed on
    unconverted, so that the collective checks raise on every rank."""
    x = cache.x
    wide = BatchNormCache(x.astype(np.float32), cache.plan, cache.training, cache._mean,
                          cache._var, cache.eps, cache.weight, cache.count, cache.stats_finite,
                          cache.sync, cache.gate)
    if cache.sync is None:
        dy = _checks.grad_output(dy, x)
        out = _checks.out_array(out, x, "dx", (("dy", dy),)) if input_grad else None
    elif not (isinstance(dy, np.ndarray) and dy.dtype == np.float16 and dy.shape == x.shape
              and (out is None or isinstance(out, np.ndarray) and out.dtype == np.float16
                   and out.shape == x.shape)):
        # the collective checks of the float32 call raise on every rank
        return batch_norm_backward(dy, wide, input_grad=input_grad, out=out, comm=comm)
    dx, dweight, dbias = batch_norm_backward(dy.astype(np.float32), wide, input_grad=input_grad,
                                             comm=comm)
    if dx is not None:
        if out is None:
            dx = dx.astype(np.float16)
        else:
            out[...] = dx
            dx = out
    return dx, dweight.astype(np.float16), dbias.astype(np.float16)


def batch_norm_backward(dy, cache: BatchNormCache, *, input_grad: bool = True, out=None,
                        comm=None) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Gradients of ``sum(dy * y)`` for the forward call that gave ``cache``.

    Parameters
    ----------
    dy : array_like
        Gradient of the loss with respect to ``y`` (shape and dtype of ``x``).
    cache : BatchNormCache
        From :func:`batch_norm_forward`, training or eval mode (in eval mode
        the statistics are constants).
    input_grad : bool
        Whether to compute ``dx``; False (a first layer, a frozen input)
        returns None for it and writes nothing of x's size.
    out : ndarray, optional
        Receives ``dx`` (shape and dtype of ``x``, overlapping neither ``x``
        nor ``dy``).
    comm : mpi4py.MPI.Comm, optional
        The communicator of a synchronized forward, which is also the
        default; the call is then collective. ``dx`` is this rank's part of
        the gradient over the batch of all ranks, and ``dweight``, ``dbias``
        are sums over all ranks (the same on every rank).

    Returns
    -------
    dx : ndarray or None
        Gradient with respect to ``x``, dtype of ``x`` (None if not
        ``input_grad``).
    dweight, dbias : ndarray, shape (C,)
        Gradients with respect to weight and bias (also when the forward
        had none), dtype of ``x``.
    """
    if not isinstance(cache, BatchNormCache):
        raise TypeError(
            f"cache must be the BatchNormCache returned by batch_norm_forward, "
            f"got {type(cache).__name__}"
        )
    input_grad = _checks.flag(input_grad, "input_grad")
    if cache.x.dtype is HALF:
        return _half_backward(dy, cache, input_grad, out, comm)
    sync = cache.sync
    if comm is not None and (sync is None or comm is not sync.comm):
        raise ValueError(
            "comm must be the communicator of the forward call, got "
            + ("a communicator, but that forward was not synchronized" if sync is None
               else "another communicator")
        )
    x, plan = cache.x, cache.plan
    mean, c = cache._mean, cache._mean.size
    dtype = x.dtype
    if cache.eps > 0:
        invstd = 1.0 / np.sqrt(cache._var + cache.eps)
    else:
        with np.errstate(divide="ignore"):  # a constant channel: inf, as in PyTorch
            invstd = 1.0 / np.sqrt(cache._var)
    if sync is not None:
        error = None
        try:
            dy = _checks.grad_output(dy, x)
            out = _checks.out_array(out, x, "dx", (("dy", dy),)) if input_grad else None
        except (TypeError, ValueError) as exc:
            error = exc
        _collective.exchange(sync.comm, error, None, None)
        dxv, dx, scratch = _dx_output(plan, x, out, input_grad)
        sum_dy, sum_dy_xc = _synced.backward(sync, dy, x, plan, mean, invstd,
                                             cache.weight, cache.count,
                                             act_args(cache.gate, dtype), dxv)
        return _finish_dx(dx, scratch), (sum_dy_xc * invstd).astype(dtype), sum_dy.astype(dtype)
    dy = _checks.grad_output(dy, x)
    out = _checks.out_array(out, x, "dx", (("dy", dy),)) if input_grad else None
    sum_dy, sum_dy_xc = np.empty(c), np.empty(c)
    dxv, dx, scratch = _dx_output(plan, x, out, input_grad)
    dyv, xv = plan.view(dy), plan.view(x)
    lo, gate = act_args(cache.gate, dtype)
    if dxv is None:
        run_kernel("grad_sums", plan, 2 * x.size, dyv, xv, mean, gate, lo, sum_dy, sum_dy_xc)
    elif cache.training and channel_per_task(plan, x, 2):
        run_kernel("fused_backward", plan, 2 * x.size, dyv, xv, 1, mean, invstd, cache.weight,
             float(cache.count), gate, lo, sum_dy, sum_dy_xc, dxv)
    elif cache.training:
        run_kernel("grad_sums", plan, 2 * x.size, dyv, xv, mean, gate, lo, sum_dy, sum_dy_xc)
        run_kernel("grad_input", plan, 2 * x.size, dyv, xv, 1, mean, invstd, cache.weight,
             sum_dy, sum_dy_xc, float(cache.count), gate, lo, dxv)
    elif cache.gate is not None:  # constant statistics: dx = dy * relu' * weight * invstd
        run_kernel("grad_sums", plan, 2 * x.size, dyv, xv, mean, gate, lo, sum_dy, sum_dy_xc)
        zeros = np.zeros(c)
        run_kernel("grad_input", plan, 2 * x.size, dyv, xv, 1, mean, invstd, cache.weight,
             zeros, zeros, 1.0, gate, lo, dxv)
    else:
        run_kernel("grad_sums", plan, 2 * x.size, dyv, xv, mean, gate, lo, sum_dy, sum_dy_xc)
        run_kernel("affine", plan, x.size, dyv, np.zeros(c), cache._var, cache.weight,
             NONE[dtype], cache.eps, lo, gate, dxv)
    return _finish_dx(dx, scratch), (sum_dy_xc * invstd).astype(dtype), sum_dy.astype(dtype)


def _dx_output(plan: Plan | None, x: np.ndarray, out, input_grad: bool):
    """``(kernel view, dx, scratch)`` for dx (all None without ``input_grad``)."""
    if not input_grad:
        return None, None, None
    if plan is None:  # an empty batch on this rank
        return None, (np.empty_like(x) if out is None else out), None
    return plan.output(out, x.dtype)


def _finish_dx(dx, scratch):
    if scratch is not None:
        dx[...] = scratch
    return dx
