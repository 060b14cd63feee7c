"""How the family's norms see their tensors: the kernel views of a
(sample, group) tensor (:class:`Groups`) and of a LayerNorm's rows
(:class:`Rows`), the outputs written through them, float16 widening, and
the :class:`NormCache` a forward hands to its backward."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import _checks
from ._engine import HALF, read_only


class Groups(NamedTuple):
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
        return v if writable else read_only(v)

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


class Rows(NamedTuple):
    """A tensor of logical ``shape`` normalized per row of ``(R, D)``
    (LayerNorm), seen as ``(1, R, D)``."""

    r: int
    d: int
    shape: tuple

    def view(self, a: np.ndarray, writable: bool = False) -> np.ndarray:
        v = a.reshape(1, self.r, self.d)
        return v if writable else read_only(v)

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
        return read_only(self._mean)

    @property
    def var(self) -> np.ndarray:
        """The biased variance the forward normalized with (as :attr:`mean`)."""
        return read_only(self._var)

    def __repr__(self) -> str:
        return f"NormCache({self.norm}, x shape {self.x.shape}, dtype {self.x.dtype})"


def groups(x: np.ndarray, axis: int, g: int) -> Groups:
    """The (sample, group) geometry of ``x``: its memory order, not its
    layout, picks the view (channels innermost: per-sample rows)."""
    n, c = x.shape[0], x.shape[axis]
    s = x.size // (n * c)
    last = x.ndim > 2 and c > 1 and s > 1 and abs(x.strides[axis]) == x.itemsize
    return Groups(n, c, g, s, axis, x.shape, last)


def widened(x: np.ndarray) -> np.ndarray:
    """``x``, float16 widened to float32 (the kernels' narrowest dtype)."""
    return x.astype(np.float32) if x.dtype is HALF else x


def output(geometry, out, dtype):
    """``(kernel view, result)`` for a result of x's shape: the kernel
    writes ``out`` itself when it can be viewed, else a new array."""
    if out is not None and out.dtype == dtype:
        v = geometry.view(out, writable=True)
        if v.flags.c_contiguous and np.may_share_memory(v, out):
            return v, out
    fresh = geometry.empty(dtype)
    return fresh, geometry.logical(fresh)


def deliver(y: np.ndarray, x: np.ndarray, out) -> np.ndarray:
    """``y`` (x's shape; float32 for a float16 x) as the call's result: in
    x's dtype, rounded once, in ``out`` when given."""
    if out is None:
        return y if y.dtype == x.dtype else y.astype(x.dtype)
    if y is not out:
        out[...] = y
    return out


def check_cache(cache, norm: str) -> None:
    if not isinstance(cache, NormCache) or cache.norm != norm:
        raise TypeError(f"cache must be the NormCache returned by {norm}_norm_forward, "
                        f"got {_checks.describe(cache)}")

