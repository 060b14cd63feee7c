"""GroupNorm and InstanceNorm (input statistics) on the kernels: a
(sample, group) as one "channel" of a channels-first view, or a sample's
``(S, C)`` rows channels last (the mapping: :mod:`fastbn.family`)."""

from __future__ import annotations

import numba
import numpy as np

from . import _checks, _choices
from ._family_views import Groups, NormCache, deliver, output, widened
from ._engine import act_args, kernel_param
from .kernels import KERNELS, RUN_BYTES


def _group_stats(xv: np.ndarray, gr: Groups) -> tuple[np.ndarray, np.ndarray]:
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


def _per_channel(a: np.ndarray, gr: Groups) -> np.ndarray:
    """A per-(sample, group) array repeated over each group's channels, as
    the kernels take it: flat (N*C,)."""
    return (a if gr.g == gr.c else np.repeat(a, gr.c // gr.g, axis=1)).reshape(-1)


def _tiled(v: np.ndarray, gr: Groups) -> np.ndarray:
    """A per-channel vector repeated for each sample (empty stays empty)."""
    if not v.size:
        return v
    out = np.empty((gr.n, v.size), v.dtype)
    out[...] = v
    return out.reshape(-1)


def _group_map(op: str, gr: Groups, *args) -> None:
    """Run kernel ``op`` over the groups' view, ``(1, N*C, S)`` or
    ``(N, S, C)``; ``args[0]`` is x-shaped. Channels first, the channels of
    the one sample of that view follow each other in memory, so the ``cf``
    kernels read in order whatever S, and sum in the chunks of the fused
    kernels (the same bits)."""
    kind = "cl" if gr.last else "cf"
    views = sum(1 for a in args if isinstance(a, np.ndarray) and a.ndim >= 3)
    KERNELS[op][kind](views * args[0].size, *args)


def _fused(gr: Groups, *views: np.ndarray) -> bool:
    """Whether a pass over the kernel ``views`` (x, and dy in backward)
    takes the kernels that keep a unit in cache between its statistics and
    its element-wise pass: a (sample, group) channels first, a sample
    channels last (its views C-contiguous); when the choices in force
    (:mod:`fastbn._choices`) say the unit's data fits in cache."""
    xv = views[0]
    if gr.last:
        return all(v.flags.c_contiguous for v in views) and _choices.CHOICES.fused_samples(
            len(views) * gr.s * gr.c * xv.itemsize, gr.n, numba.get_num_threads())
    unit = (gr.c // gr.g) * gr.s * xv.itemsize
    return _choices.CHOICES.fused(len(views) * unit, unit, gr.n * gr.g)


def grouped_forward(norm, x, gr: Groups, weight, bias, eps, out):
    """GroupNorm/InstanceNorm forward with input statistics, over checked
    arguments; returns (y, cache)."""
    x32 = widened(x)
    dt = x32.dtype
    w, b = kernel_param(weight, dt), kernel_param(bias, dt)
    xv = gr.view(x32)
    yv, y = output(gr, out if dt == x.dtype else None, dt)
    units, k = gr.n * gr.g, gr.c // gr.g
    fused = _fused(gr, xv)
    if fused and gr.last:
        mean, var = np.empty(units), np.empty(units)
        KERNELS["fused_forward"]["cl"](x32.size, xv, k, w, b, eps, mean, var, yv)
        mean, var = mean.reshape(gr.n, gr.g), var.reshape(gr.n, gr.g)
    elif fused:
        mean, var = np.empty(units), np.empty(units)
        lo, gate = act_args(None, dt)
        KERNELS["fused_forward"]["cf"](x32.size, xv.reshape(1, 1, units, -1), k, _tiled(w, gr),
                                       _tiled(b, gr), eps, lo, mean, var, gate,
                                       yv.reshape(1, 1, units, -1))
        mean, var = mean.reshape(gr.n, gr.g), var.reshape(gr.n, gr.g)
    else:
        mean, var = _group_stats(xv, gr)
        _group_map("affine", gr, xv, _per_channel(mean, gr), _per_channel(var, gr),
                   _tiled(w, gr), _tiled(b, gr), eps, *act_args(None, dt), yv)
    return deliver(y, x, out), NormCache(norm, x, gr, mean, var, eps, w, (gr.c,))


def grouped_backward(dy, cache: NormCache):
    """Gradients of a GroupNorm/InstanceNorm forward with input statistics:
    per (sample, channel) sums of dy and dy * (x - group mean), then dx with
    coefficients combining each group's sums."""
    x = cache.x
    dy = _checks.grad_output(dy, x)
    gr = cache.geometry
    x32, dy32 = widened(x), widened(dy)
    dt = x32.dtype
    xv, dyv = gr.view(x32), gr.view(dy32)
    with np.errstate(divide="ignore", invalid="ignore"):  # eps = 0, a constant group
        invstd = 1.0 / np.sqrt(cache._var + cache.eps)
    s1, s2 = np.empty(gr.n * gr.c), np.empty(gr.n * gr.c)
    dxv, dx = output(gr, None, dt)
    parts, weight = gr.c // gr.g, _tiled(cache.weight, gr)
    count = float(parts * gr.s)
    lo, gate = act_args(None, dt)
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
    return deliver(dx, x, None), dweight.astype(x.dtype), dbias.astype(x.dtype)

