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
"""

from __future__ import annotations

import numbers
import warnings
from typing import NamedTuple

import numba
import numpy as np

from . import _checks, _choices
from .functional import (_HALF, _NONE, _act_args, _channel_params, _param, _read_only,
                         _update_running, _user_stacklevel, batch_norm_backward,
                         batch_norm_forward)
from .kernels import KERNELS, RUN_BYTES

__all__ = [
    "NormCache",
    "group_norm_backward",
    "group_norm_forward",
    "instance_norm_backward",
    "instance_norm_forward",
    "layer_norm_backward",
    "layer_norm_forward",
]


class _Groups(NamedTuple):
    """A tensor of logical ``shape`` normalized per (sample, group): N
    samples, C channels (on ``axis``) in G groups, S values per channel and
    sample. ``last``: channels innermost in memory, seen as per-sample
    ``(S, C)`` rows; else as ``(1, N*C, S)``."""

    n: int
    c: int
    g: int
    s: int
    axis: int
    shape: tuple
    last: bool

    def view(self, a: np.ndarray, writable: bool = False) -> np.ndarray:
        """The kernel view of ``a`` (a copy if its strides allow none)."""
        if self.last:
            v = _moved(a, self.axis, a.ndim - 1).reshape(self.n, self.s, self.c)
        else:
            v = _moved(a, self.axis, 1).reshape(1, 1, self.n * self.c, self.s)
        return v if writable else _read_only(v)

    def empty(self, dtype) -> np.ndarray:
        """A new array in the kernel view's shape."""
        if self.last:
            return np.empty((self.n, self.s, self.c), dtype)
        return np.empty((1, 1, self.n * self.c, self.s), dtype)

    def logical(self, v: np.ndarray) -> np.ndarray:
        """An array from :meth:`empty` seen in the logical shape (a view)."""
        spatial = [d for i, d in enumerate(self.shape) if i not in (0, self.axis)]
        if self.last:
            return _moved(v.reshape(self.n, *spatial, self.c), len(self.shape) - 1, self.axis)
        return _moved(v.reshape(self.n, self.c, *spatial), 1, self.axis)


def _moved(a: np.ndarray, source: int, destination: int) -> np.ndarray:
    """``np.moveaxis`` without its cost when nothing moves (small inputs
    feel a call's overhead)."""
    return a if source == destination else np.moveaxis(a, source, destination)


class _Rows(NamedTuple):
    """A tensor of logical ``shape`` normalized per row of ``(R, D)``
    (LayerNorm), seen as ``(1, R, D)``."""

    r: int
    d: int
    shape: tuple

    def view(self, a: np.ndarray, writable: bool = False) -> np.ndarray:
        v = a.reshape(1, self.r, self.d)
        return v if writable else _read_only(v)

    def empty(self, dtype) -> np.ndarray:
        return np.empty((1, self.r, self.d), dtype)

    def logical(self, v: np.ndarray) -> np.ndarray:
        return v.reshape(self.shape)


class NormCache:
    """What a LayerNorm, GroupNorm or InstanceNorm backward needs from its
    forward: a reference to ``x`` and float64 statistics; treat it as opaque.

    Attributes
    ----------
    norm : str
        ``"layer"``, ``"group"`` or ``"instance"``.
    """

    __slots__ = ("norm", "x", "geometry", "_mean", "_var", "eps", "weight", "shape", "input_stats",
                 "eval_cache")

    def __init__(self, norm, x, geometry, mean, var, eps, weight, shape, input_stats=True,
                 eval_cache=None):
        self.norm = norm
        self.x = x
        self.geometry = geometry
        self._mean = mean
        self._var = var
        self.eps = eps
        self.weight = weight
        self.shape = shape  # of weight and bias
        self.input_stats = input_stats
        self.eval_cache = eval_cache

    @property
    def mean(self) -> np.ndarray:
        """The mean the forward normalized with: float64, read-only, shape
        ``x.shape[:-len(normalized_shape)]`` (LayerNorm), ``(N, num_groups)``
        (GroupNorm) or ``(N, C)`` (InstanceNorm)."""
        return _read_only(self._mean)

    @property
    def var(self) -> np.ndarray:
        """The biased variance the forward normalized with (as :attr:`mean`)."""
        return _read_only(self._var)

    def __repr__(self) -> str:
        return f"NormCache({self.norm}, x shape {self.x.shape}, dtype {self.x.dtype})"


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


def _groups(x: np.ndarray, axis: int, g: int) -> _Groups:
    """The (sample, group) geometry of ``x``: its memory order, not its
    layout, picks the view (channels innermost: per-sample rows)."""
    n, c = x.shape[0], x.shape[axis]
    s = x.size // (n * c)
    last = x.ndim > 2 and c > 1 and s > 1 and abs(x.strides[axis]) == x.itemsize
    return _Groups(n, c, g, s, axis, x.shape, last)


# ----------------------------------------------------------------------------- kernels


def _group_stats(xv: np.ndarray, gr: _Groups) -> tuple[np.ndarray, np.ndarray]:
    """float64 (mean, var) per (sample, group), shape (N, G)."""
    n, c, g = gr.n, gr.c, gr.g
    if not gr.last:
        mean, var = np.empty(n * g), np.empty(n * g)
        v = xv.reshape(1, 1, n * g, -1)
        kind = "walk" if v.shape[3] * v.itemsize < RUN_BYTES else "cf"
        KERNELS["stats"][kind](v.size, v, mean, var)
        return mean.reshape(n, g), var.reshape(n, g)
    mean, var = np.empty(n * c), np.empty(n * c)
    KERNELS["stats"]["cl"](xv.size, xv, mean, var)
    if g == c:
        return mean.reshape(n, c), var.reshape(n, c)
    gm, gv = np.empty(n * g), np.empty(n * g)
    KERNELS["merge_groups"]["any"](n * c, mean, var, c // g, gm, gv)
    return gm.reshape(n, g), gv.reshape(n, g)


def _per_channel(a: np.ndarray, gr: _Groups) -> np.ndarray:
    """A per-(sample, group) array repeated over each group's channels, as
    the kernels take it: flat (N*C,)."""
    return (a if gr.g == gr.c else np.repeat(a, gr.c // gr.g, axis=1)).reshape(-1)


def _tiled(v: np.ndarray, gr: _Groups) -> np.ndarray:
    """A per-channel vector repeated for each sample (empty stays empty)."""
    if not v.size:
        return v
    out = np.empty((gr.n, v.size), v.dtype)
    out[...] = v
    return out.reshape(-1)


def _group_map(op: str, gr: _Groups, *args) -> None:
    """Run kernel ``op`` over the groups' view, ``(1, N*C, S)`` or
    ``(N, S, C)``; ``args[0]`` is x-shaped. Channels first, the channels of
    the one sample of that view follow each other in memory, so the ``cf``
    kernels read in order whatever S, and sum in the chunks of the fused
    kernels (the same bits)."""
    kind = "cl" if gr.last else "cf"
    views = sum(1 for a in args if isinstance(a, np.ndarray) and a.ndim >= 3)
    KERNELS[op][kind](views * args[0].size, *args)


def _fused(gr: _Groups, *views: np.ndarray) -> bool:
    """Whether a pass over the kernel ``views`` (x, and dy in backward)
    takes the kernels that keep a unit in cache between its statistics and
    its element-wise pass: a (sample, group) channels first, a sample
    channels last (its views C-contiguous); when the choices in force
    (:mod:`fastbn._choices`) say the unit's data fits in cache."""
    xv = views[0]
    if gr.last:
        return all(v.flags.c_contiguous for v in views) and _choices.CHOICES.fused_samples(
            len(views) * gr.s * gr.c * xv.itemsize, xv.nbytes, gr.n, numba.get_num_threads())
    unit = (gr.c // gr.g) * gr.s * xv.itemsize
    return _choices.CHOICES.fused(len(views) * unit, unit, xv.nbytes, gr.n * gr.g)


# ----------------------------------------------------------------------------- float16


def _widened(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) if x.dtype is _HALF else x


def _output(geometry, out, dtype):
    """``(kernel view, result)`` for a result of x's shape: the kernel
    writes ``out`` itself when it can be viewed, else a new array."""
    if out is not None and out.dtype == dtype:
        v = geometry.view(out, writable=True)
        if v.flags.c_contiguous and np.may_share_memory(v, out):
            return v, out
    fresh = geometry.empty(dtype)
    return fresh, geometry.logical(fresh)


def _deliver(y: np.ndarray, x: np.ndarray, out) -> np.ndarray:
    """``y`` (x's shape; float32 for a float16 x) as the call's result: in
    x's dtype, rounded once, in ``out`` when given."""
    if out is None:
        return y if y.dtype == x.dtype else y.astype(x.dtype)
    if y is not out:
        out[...] = y
    return out


# ----------------------------------------------------------------------------- group and instance


def _grouped_forward(norm, x, gr: _Groups, weight, bias, eps, out):
    """GroupNorm/InstanceNorm forward with input statistics, over checked
    arguments; returns (y, cache)."""
    x32 = _widened(x)
    dt = x32.dtype
    w, b = _param(weight, dt), _param(bias, dt)
    xv = gr.view(x32)
    yv, y = _output(gr, out if dt == x.dtype else None, dt)
    units, k = gr.n * gr.g, gr.c // gr.g
    fused = _fused(gr, xv)
    if fused and gr.last:
        mean, var = np.empty(units), np.empty(units)
        KERNELS["fused_forward"]["cl"](x32.size, xv, k, w, b, eps, mean, var, yv)
        mean, var = mean.reshape(gr.n, gr.g), var.reshape(gr.n, gr.g)
    elif fused:
        mean, var = np.empty(units), np.empty(units)
        lo, gate = _act_args(None, dt)
        KERNELS["fused_forward"]["cf"](x32.size, xv.reshape(1, 1, units, -1), k, _tiled(w, gr),
                                       _tiled(b, gr), eps, lo, mean, var, gate,
                                       yv.reshape(1, 1, units, -1))
        mean, var = mean.reshape(gr.n, gr.g), var.reshape(gr.n, gr.g)
    else:
        mean, var = _group_stats(xv, gr)
        _group_map("affine", gr, xv, _per_channel(mean, gr), _per_channel(var, gr),
                   _tiled(w, gr), _tiled(b, gr), eps, *_act_args(None, dt), yv)
    return _deliver(y, x, out), NormCache(norm, x, gr, mean, var, eps, w, (gr.c,))


def _grouped_backward(dy, cache: NormCache):
    """Gradients of a GroupNorm/InstanceNorm forward with input statistics:
    per (sample, channel) sums of dy and dy * (x - group mean), then dx with
    coefficients combining each group's sums."""
    x = cache.x
    dy = _checks.grad_output(dy, x)
    gr = cache.geometry
    x32, dy32 = _widened(x), _widened(dy)
    dt = x32.dtype
    xv, dyv = gr.view(x32), gr.view(dy32)
    with np.errstate(divide="ignore", invalid="ignore"):  # eps = 0, a constant group
        invstd = 1.0 / np.sqrt(cache._var + cache.eps)
    s1, s2 = np.empty(gr.n * gr.c), np.empty(gr.n * gr.c)
    dxv, dx = _output(gr, None, dt)
    parts, weight = gr.c // gr.g, _tiled(cache.weight, gr)
    count = float(parts * gr.s)
    lo, gate = _act_args(None, dt)
    fused = _fused(gr, xv, dyv)
    if fused and gr.last:
        KERNELS["fused_backward"]["cl"](2 * x32.size, dyv, xv, parts, cache._mean.reshape(-1),
                                        invstd.reshape(-1), weight, count, s1, s2, dxv)
    elif fused:
        shape = (1, 1, gr.n * gr.g, -1)
        KERNELS["fused_backward"]["cf"](2 * x32.size, dyv.reshape(shape), xv.reshape(shape),
                                        parts, cache._mean.reshape(-1), invstd.reshape(-1),
                                        weight, count, gate, lo, s1, s2,
                                        dxv.reshape(shape))
    else:
        mean = _per_channel(cache._mean, gr)
        _group_map("grad_sums", gr, dyv, xv, mean, gate, lo, s1, s2)
        _group_map("grad_input", gr, dyv, xv, parts, mean, _per_channel(invstd, gr), weight,
                   s1, s2, count, gate, lo, dxv)
    with np.errstate(invalid="ignore"):
        dweight = (s2 * _per_channel(invstd, gr)).reshape(gr.n, gr.c).sum(0)
    dbias = s1.reshape(gr.n, gr.c).sum(0)
    return _deliver(dx, x, None), dweight.astype(x.dtype), dbias.astype(x.dtype)


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
    return _grouped_forward("group", x, _groups(x, axis, g), weight, bias, eps, out)


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
    _check_cache(cache, "group")
    return _grouped_backward(dy, cache)


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
    weight, bias, rmean, rvar = _channel_params(x, axis, weight, bias, running_mean,
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
    y, cache = _grouped_forward("instance", x, _groups(x, axis, c), weight, bias, eps, out)
    if rmean is not None:
        finite = _update_running(rmean, rvar, cache._mean.mean(0), cache._var.mean(0),
                                 s / (s - 1.0), momentum)
        if not finite:
            warnings.warn("instance statistics are not finite (NaN or Inf in the input); "
                          "running statistics were not updated", RuntimeWarning,
                          stacklevel=_user_stacklevel())
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
    _check_cache(cache, "instance")
    if cache.eval_cache is not None:
        return batch_norm_backward(dy, cache.eval_cache)
    return _grouped_backward(dy, cache)


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
    x32 = _widened(x)
    dt = x32.dtype
    d = int(np.prod(shape))
    rows = _Rows(x.size // d, d, x.shape)
    w = np.ones(d, dt) if weight is None else _param(weight.reshape(d), dt)
    b = np.zeros(d, dt) if bias is None else _param(bias.reshape(d), dt)
    mean, var = np.empty(rows.r), np.empty(rows.r)
    yv, y = _output(rows, out if dt == x.dtype else None, dt)
    KERNELS["rows_forward"]["any"](x.size, rows.view(x32), w, b, eps, mean, var, yv)
    y = _deliver(y, x, out)
    lead = x.shape[:x.ndim - len(shape)]
    return y, NormCache("layer", x, rows, mean.reshape(lead), var.reshape(lead), eps,
                        w if weight is not None else _NONE[dt], shape)


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
    _check_cache(cache, "layer")
    x = cache.x
    dy = _checks.grad_output(dy, x)
    rows = cache.geometry
    x32, dy32 = _widened(x), _widened(dy)
    dt = x32.dtype
    w = cache.weight if cache.weight.size else np.ones(rows.d, dt)
    dxv, dx = _output(rows, None, dt)
    dweight, dbias = np.empty(rows.d), np.empty(rows.d)
    KERNELS["rows_backward"]["any"](2 * x.size, rows.view(dy32), rows.view(x32),
                                    cache._mean.reshape(-1), cache._var.reshape(-1), cache.eps, w,
                                    dxv, dweight, dbias)
    return (_deliver(dx, x, None), dweight.reshape(cache.shape).astype(x.dtype),
            dbias.reshape(cache.shape).astype(x.dtype))


def _check_cache(cache, norm: str) -> None:
    if not isinstance(cache, NormCache) or cache.norm != norm:
        raise TypeError(f"cache must be the NormCache returned by {norm}_norm_forward, "
                        f"got {_checks.describe(cache)}")

