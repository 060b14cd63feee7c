"""Ghost batch normalization (Hoffer et al., 2017): ``BatchNorm``'s training
pass with statistics per consecutive chunk of ``virtual_batch_size`` samples.

The kernels take views of P parts (:mod:`fastbn.kernels`): the chunks are
the parts of a ``(k, v, C, S)`` (channels first) or ``(k, v*S, C)``
(channels last) view, so one call of each kernel serves every chunk, as one
BatchNorm call serves a batch. The running statistics are then updated
once, with the mean over the chunks of their mean and unbiased variance.
float16 inputs take each chunk through the ordinary forward and backward
passes, writing into its slice of one output array. Over MPI ranks
(``SyncBatchNorm``) the chunks are those of each rank's local batch, so that
no statistics cross ranks; one ``allgather`` per pass averages the chunk
statistics for the running statistics (forward) and sums the parameter
gradients (backward) over the ranks, in rank order.
"""

from __future__ import annotations

import warnings
from typing import Callable

import numpy as np

from . import _checks, _collective
from ._layout import Plan
from ._engine import (HALF, act_args, channel_per_task, kernel_param, read_only,
                      update_running_stats, user_stacklevel)
from .functional import BatchNormCache, _forward_call, batch_norm_backward
from .kernels import KERNELS


class GhostCache:
    """What the backward pass of a ghost forward needs: one
    :class:`~fastbn.BatchNormCache` per chunk (``caches``), in batch order.

    Attributes
    ----------
    virtual_batch_size : int
        Samples per chunk.
    stats_finite : bool
        Whether the chunk statistics were finite (running statistics were
        updated only then).
    """

    __slots__ = ("x", "axis", "caches", "virtual_batch_size", "stats_finite", "comm", "parts")
    training = True

    def __init__(self, x, axis, caches, virtual_batch_size, stats_finite, comm, parts=None):
        self.x = x
        self.axis = axis
        self.caches = caches
        self.virtual_batch_size = virtual_batch_size
        self.stats_finite = stats_finite
        self.comm = comm
        #: The chunks as parts of one kernel view (:class:`_Parts`), or
        #: None: one BatchNormCache per chunk in ``caches``.
        self.parts = parts

    @property
    def mean(self) -> np.ndarray:
        """Per-chunk mean, float64, shape (N // virtual_batch_size, C)."""
        if self.parts is not None:
            return read_only(self.parts.mean.reshape(-1, self.x.shape[self.axis]))
        return _stack([c.mean for c in self.caches], self.x.shape[self.axis])

    @property
    def var(self) -> np.ndarray:
        """Per-chunk biased variance, as :attr:`mean`."""
        if self.parts is not None:
            return read_only(self.parts.var.reshape(-1, self.x.shape[self.axis]))
        return _stack([c.var for c in self.caches], self.x.shape[self.axis])

    def __repr__(self) -> str:
        k = self.x.shape[0] // self.virtual_batch_size
        return (f"GhostCache({k} chunks of {self.virtual_batch_size}, "
                f"x shape {self.x.shape}, dtype {self.x.dtype})")


class _Parts:
    """The chunks of a ghost forward as the P parts of one kernel view:
    per-(chunk, channel) statistics, flat (k * C,)."""

    __slots__ = ("plan", "k", "mean", "var", "weight", "eps", "count", "gate")

    def __init__(self, plan, k, mean, var, weight, eps, count, gate):
        self.plan, self.k, self.mean, self.var = plan, k, mean, var
        self.weight, self.eps, self.count, self.gate = weight, eps, count, gate

    def view(self, a: np.ndarray, writable: bool = False) -> np.ndarray:
        """``a``'s kernel view with the chunks as parts."""
        v = self.plan.view(a, writable)
        return v.reshape(self.k, -1, *v.shape[2:])

    def fused(self, x: np.ndarray, arrays: int) -> bool:
        """Whether the channel-per-task kernels serve a pass over
        ``arrays`` arrays (BatchNorm's choice, a chunk's channel the unit)."""
        return channel_per_task(self.plan, x, arrays, self.k)


def _stack(rows: list, channels: int) -> np.ndarray:
    return np.stack(rows) if rows else np.empty((0, channels))


def _chunks(x: np.ndarray, v: int, layout: str, synced: bool) -> tuple[int, int, int]:
    """Checks of ``x`` for chunks of ``v`` samples; returns (channel axis,
    chunk count, values per channel in a chunk)."""
    axis, c = _checks.channels(x, layout, allow_empty=synced)
    n = x.shape[0]
    if n % v:
        raise ValueError(
            f"virtual_batch_size={v} must divide the batch size in training, got a batch "
            f"of {n} samples (shape {x.shape}); use a batch size that is a multiple of {v}"
        )
    m = (x.size // c // n) * v if n else 2
    if m < 2:
        raise ValueError(
            f"virtual_batch_size={v} leaves {m} value per channel in each chunk of an input "
            f"of shape {x.shape}; training needs more than 1 (a larger virtual_batch_size)"
        )
    return axis, n // v, m


def _output(x: np.ndarray, axis: int) -> np.ndarray:
    """An array for y or dx whose chunks the kernels can write in place."""
    if x.size == 0 or x.dtype == np.float16:
        return np.empty_like(x)
    return Plan(x, axis).empty(x.dtype)


def forward(x, v: int, weight, bias, running_mean, running_var, momentum: float, eps: float,
            layout: str, check: Callable[[object], np.ndarray], unbiased: bool,
            comm=None, relu: bool = False) -> tuple[np.ndarray, GhostCache]:
    """Training forward of ghost batch normalization (``comm``: over the
    ranks of an MPI communicator, each rank chunking its own batch;
    ``relu``: a fused ReLU). Nothing is changed when it raises."""
    if comm is not None:
        return _synced_forward(x, v, weight, bias, running_mean, running_var, momentum, eps,
                               layout, check, unbiased, comm, relu)
    x = check(x)
    axis, k, m = _chunks(x, v, layout, False)
    parts = caches = None
    if x.dtype is HALF:
        y, caches = _local(x, axis, v, k, weight, bias, eps, layout, unbiased, relu)
        mean, var = _sums(caches, x.shape[axis])
    else:
        y, parts = _parts_forward(x, axis, k, m, weight, bias, eps, relu)
        c = x.shape[axis]
        mean, var = parts.mean.reshape(k, c).sum(0), parts.var.reshape(k, c).sum(0)
    finite = True
    if running_mean is not None:
        factor = m / (m - 1.0) if unbiased else 1.0
        finite = _update(running_mean, running_var, mean / k, var / k, factor, momentum)
    return y, GhostCache(x, axis, caches, v, finite, None, parts)


def _parts_forward(x, axis, k, m, weight, bias, eps, relu) -> tuple[np.ndarray, _Parts]:
    """Every chunk's forward in one call of each kernel."""
    dt, c = x.dtype, x.shape[axis]
    plan = Plan(x, axis)
    w, b = kernel_param(weight, dt), kernel_param(bias, dt)
    w, b = (np.tile(a, k) if a.size else a for a in (w, b))
    lo, gate = act_args(np.empty(2 * k * c, dt) if relu else None, dt)
    p = _Parts(plan, k, np.empty(k * c), np.empty(k * c), w, eps, m, gate if relu else None)
    xv = p.view(x)
    yv, y, _ = plan.output(None, dt)
    yv = yv.reshape(xv.shape)
    if p.fused(x, 1):
        KERNELS["fused_forward"]["cf"](x.size, xv, 1, w, b, eps, lo, p.mean, p.var, gate, yv)
    else:
        KERNELS["stats"][plan.kind](x.size, xv, p.mean, p.var)
        KERNELS["affine"][plan.kind](x.size, xv, p.mean, p.var, w, b, eps, lo, gate, yv)
    return y, p


def _local(x, axis, v, k, weight, bias, eps, layout, unbiased, relu):
    """Each chunk through the ordinary forward, into its slice of y."""
    y = _output(x, axis)
    caches = []
    for j in range(k):
        s = slice(j * v, (j + 1) * v)
        _, cache = _forward_call(x[s], weight, bias, True, None, None, 0.0, eps, layout, y[s],
                                 None, None, unbiased, relu)
        caches.append(cache)
    return y, caches


def _sums(caches: list[BatchNormCache], c: int):
    """Sums over the chunks of their mean and biased variance."""
    mean, var = np.zeros(c), np.zeros(c)
    for cache in caches:
        mean += cache._mean
        var += cache._var
    return mean, var


def _update(running_mean, running_var, mean, var, factor, momentum) -> bool:
    """The running statistics' update (``var * factor``), or a warning."""
    finite = update_running_stats(running_mean, running_var, mean, var, factor, momentum)
    if not finite:
        warnings.warn(
            "batch statistics are not finite (NaN or Inf in the input); "
            "running statistics were not updated",
            RuntimeWarning,
            stacklevel=user_stacklevel(),
        )
    return finite


def _synced_forward(x, v, weight, bias, running_mean, running_var, momentum, eps, layout,
                    check, unbiased, comm, relu):
    y, caches, error, payload, header = None, None, None, None, None
    try:
        x = check(x)
        axis, k, m = _chunks(x, v, layout, True)
        y, caches = _local(x, axis, v, k, weight, bias, eps, layout, unbiased, relu)
        mean, var = _sums(caches, x.shape[axis])
        if unbiased:  # the ranks' chunks may differ in size (spatial extents)
            var *= m / (m - 1.0)
        header, payload = (x.shape[axis], x.dtype.str, layout), (k, v, mean, var)
    except (TypeError, ValueError) as exc:
        error = exc
    parts = _collective.exchange(comm, error, header, payload)
    sizes = [p[1] for p in parts]
    if any(s != sizes[0] for s in sizes):
        raise ValueError(f"ranks disagree on virtual_batch_size: expected the same on every "
                         f"rank, got {sizes} in rank order")
    total = sum(p[0] for p in parts)
    if total == 0:
        raise ValueError(f"expected at least one chunk of virtual_batch_size={v} samples in "
                         f"the batch of all ranks, got none (every rank's batch is empty)")
    finite = True
    if running_mean is not None:
        mean = _collective.sum_in_order([p[2] for p in parts])
        var = _collective.sum_in_order([p[3] for p in parts])
        finite = _update(running_mean, running_var, mean / total, var / total, 1.0, momentum)
    return y, GhostCache(x, axis, caches, v, finite, comm)


def backward(dy, cache: GhostCache, input_grad: bool = True):
    """``(dx, dweight, dbias)`` of a ghost forward: each chunk's backward
    into its slice of dx, the parameter gradients summed over the chunks
    (and, over MPI ranks, over the ranks: a collective call)."""
    input_grad = _checks.flag(input_grad, "input_grad")
    if cache.parts is not None:
        return _parts_backward(dy, cache, input_grad)
    if cache.comm is None:
        return _local_backward(dy, cache, input_grad)
    result, error = None, None
    try:
        result = _local_backward(dy, cache, input_grad)
    except (TypeError, ValueError) as exc:
        error = exc
    payload = None if result is None else (result[1].astype(np.float64),
                                           result[2].astype(np.float64))
    parts = _collective.exchange(cache.comm, error, None, payload)
    dtype = cache.x.dtype
    dweight = _collective.sum_in_order([p[0] for p in parts]).astype(dtype)
    dbias = _collective.sum_in_order([p[1] for p in parts]).astype(dtype)
    return result[0], dweight, dbias


def _parts_backward(dy, cache: GhostCache, input_grad: bool):
    """Every chunk's backward in one call of each kernel."""
    x, p = cache.x, cache.parts
    dy = _checks.grad_output(dy, x)
    dt, kc = x.dtype, p.mean.size
    with np.errstate(divide="ignore"):  # eps = 0 and a constant channel: inf, as in PyTorch
        invstd = 1.0 / np.sqrt(p.var + p.eps)
    lo, gate = act_args(p.gate, dt)
    xv, dyv = p.view(x), p.view(dy)
    s1, s2 = np.empty(kc), np.empty(kc)
    dx, kind = None, p.plan.kind
    if not input_grad:
        KERNELS["grad_sums"][kind](2 * x.size, dyv, xv, p.mean, gate, lo, s1, s2)
    else:
        dxv, dx, _ = p.plan.output(None, dt)
        dxv = dxv.reshape(xv.shape)
        if p.fused(x, 2):
            KERNELS["fused_backward"]["cf"](2 * x.size, dyv, xv, 1, p.mean, invstd, p.weight,
                                            float(p.count), gate, lo, s1, s2, dxv)
        else:
            KERNELS["grad_sums"][kind](2 * x.size, dyv, xv, p.mean, gate, lo, s1, s2)
            KERNELS["grad_input"][kind](2 * x.size, dyv, xv, 1, p.mean, invstd, p.weight, s1, s2,
                                        float(p.count), gate, lo, dxv)
    c = kc // p.k
    dweight = (s2 * invstd).reshape(p.k, c).sum(0)
    return dx, dweight.astype(dt), s1.reshape(p.k, c).sum(0).astype(dt)


def _local_backward(dy, cache: GhostCache, input_grad: bool):
    x, v = cache.x, cache.virtual_batch_size
    dy = _checks.grad_output(dy, x)
    dx = _output(x, cache.axis) if input_grad else None
    c = x.shape[cache.axis]
    dweight, dbias = np.zeros(c), np.zeros(c)
    for j, chunk in enumerate(cache.caches):
        s = slice(j * v, (j + 1) * v)
        _, dw, db = batch_norm_backward(dy[s], chunk, input_grad=input_grad,
                                        out=None if dx is None else dx[s])
        dweight += dw
        dbias += db
    return dx, dweight.astype(x.dtype), dbias.astype(x.dtype)
