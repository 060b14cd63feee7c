"""One calling convention for LayerNorm, GroupNorm and InstanceNorm in the
tests: a :class:`Norm` names the norm, the input shape and its argument, and
runs fastbn's functional call, the float64 reference and the checks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import fastbn
import reference_family as ref
from helpers import assert_close, channel_shape, check_stats, check_y, data_scale, tol
from reference import channel_axis

EPS = 1e-5


@dataclass(frozen=True)
class Norm:
    kind: str           # "layer", "group" or "instance"
    shape: tuple
    arg: object = None  # normalized_shape (layer), num_groups (group)
    layout: str = "NCHW"

    def __str__(self):
        shape = "x".join(map(str, self.shape))
        extra = {"layer": f"ns{self.arg}", "group": f"G{self.arg}", "instance": ""}[self.kind]
        return f"{self.kind}-{self.layout}-{shape}-{extra}".rstrip("-").replace(" ", "")

    @property
    def channels(self) -> int:
        return self.shape[channel_axis(len(self.shape), self.layout)]

    @property
    def param_shape(self) -> tuple:
        if self.kind == "layer":
            return (self.arg,) if isinstance(self.arg, int) else tuple(self.arg)
        return (self.channels,)

    @property
    def stat_shape(self) -> tuple:
        if self.kind == "layer":
            return self.shape[:len(self.shape) - len(self.param_shape)]
        return (self.shape[0], self.arg if self.kind == "group" else self.channels)

    def _lead(self):
        return () if self.kind == "instance" else (self.arg,)

    def _layout(self):
        return {} if self.kind == "layer" else {"layout": self.layout}

    def forward(self, x, weight=None, bias=None, **kw):
        fwd = getattr(fastbn, f"{self.kind}_norm_forward")
        return fwd(x, *self._lead(), weight, bias, **self._layout(), **kw)

    def backward(self, dy, cache):
        return getattr(fastbn, f"{self.kind}_norm_backward")(dy, cache)

    def reference(self, x, weight=None, bias=None, eps=EPS, **kw):
        """(y, mean, var) in float64."""
        fn = getattr(ref, f"{self.kind}_norm")
        return fn(x, *self._lead(), weight, bias, eps, **self._layout(), **kw)

    def reference_backward(self, dy, x, weight=None, eps=EPS, **kw):
        fn = getattr(ref, f"{self.kind}_norm_backward")
        return fn(dy, x, *self._lead(), weight, eps, **self._layout(), **kw)

    def data(self, rng, dtype, loc=0.0):
        """Random x whose rows differ in mean and spread along N, axis 1 and
        the last axis, so that a mix-up of rows, groups or channels shows."""
        nd = len(self.shape)

        def along(axis, lo, hi):
            s = [1] * nd
            s[axis] = self.shape[axis]
            return rng.uniform(lo, hi, s)

        spread = along(0, 0.5, 1.5) * along(1, 0.5, 1.5) * along(nd - 1, 0.7, 1.4)
        shift = loc + along(0, -2, 2) + along(1, -2, 2) + along(nd - 1, -1, 1)
        return (rng.standard_normal(self.shape) * spread + shift).astype(dtype)

    def params(self, rng, dtype):
        return (rng.uniform(0.5, 2.0, self.param_shape).astype(dtype),
                rng.uniform(-1.0, 1.0, self.param_shape).astype(dtype))

    def expand(self, param):
        """A parameter (param_shape) broadcast to x's shape."""
        p = np.asarray(param)
        if self.kind != "layer":
            p = p.reshape(channel_shape(len(self.shape), self.layout, self.channels))
        return np.broadcast_to(p, self.shape)

    def row(self, sample, row=0):
        """(index into x of all the values of one statistics row, its index
        into cache.mean/var)."""
        if self.kind == "layer":
            lead = np.unravel_index(row, self.stat_shape[1:])
            idx = (sample, *map(int, lead))
            return idx, idx
        idx = [slice(None)] * len(self.shape)
        idx[0] = sample
        per = self.channels // self.stat_shape[1]
        idx[channel_axis(len(self.shape), self.layout)] = slice(row * per, (row + 1) * per)
        return tuple(idx), (sample, row)


def layer_cases(medium=False):
    if medium:
        return [Norm("layer", (4, 8, 40, 40), (40, 40)), Norm("layer", (4, 8, 40, 40), (8, 40, 40))]
    return [Norm("layer", (6, 7), 7), Norm("layer", (3, 4, 5), (5,)),
            Norm("layer", (3, 4, 5), (4, 5)), Norm("layer", (2, 3, 4, 5), (4, 5)),
            Norm("layer", (2, 3, 2, 3, 4), (2, 3, 4))]


def _shape(rank, layout, N, C, spatial):
    return (N, C, *spatial) if layout == "NCHW" else (N, *spatial, C)


SMALL_SPATIAL = {2: (), 3: (5,), 4: (3, 4), 5: (2, 3, 2)}


def group_cases(medium=False, layouts=("NCHW", "NHWC")):
    if medium:
        return [Norm("group", _shape(4, lay, 4, 8, (40, 40)), 4, lay) for lay in layouts]
    return [Norm("group", _shape(r, lay, 3, 6, SMALL_SPATIAL[r]), g, lay)
            for lay in layouts for r, g in ((2, 2), (3, 3), (4, 2), (5, 3))] + [
        Norm("group", _shape(4, lay, 2, 4, (3, 3)), g, lay) for lay in layouts for g in (1, 4)]


def instance_cases(medium=False, layouts=("NCHW", "NHWC")):
    if medium:
        return [Norm("instance", _shape(4, lay, 4, 8, (40, 40)), None, lay) for lay in layouts]
    return [Norm("instance", _shape(r, lay, 3, 4, SMALL_SPATIAL[r]), None, lay)
            for lay in layouts for r in (3, 4, 5)]


def all_cases(medium=False):
    return layer_cases(medium) + group_cases(medium) + instance_cases(medium)


def ids(cases):
    return [str(c) for c in cases]


# --- checks --------------------------------------------------------------------

def check_forward(norm, x, y, cache, ref_y, ref_mean, ref_var, dtype):
    """y against the reference's y; cache.mean/var (read-only float64 of the
    statistics shape) within SPEC's accuracy bounds."""
    assert y.shape == norm.shape and y.dtype == dtype
    if np.dtype(dtype) != np.float16:  # float16: see within_float16_ulp
        check_y(y, ref_y, dtype)
    for got in (cache.mean, cache.var):
        assert got.dtype == np.float64 and got.shape == norm.stat_shape
        assert not got.flags.writeable
    stats_dtype = np.float32 if np.dtype(dtype) == np.float16 else dtype
    check_stats(cache.mean, cache.var, ref_mean, ref_var, stats_dtype, data_scale(x))


def check_grads(norm, got, want, dy, x, weight, eps, dtype, **kw):
    """(dx, dweight, dbias) against the reference, each judged against the
    magnitude of the terms it is made of."""
    dx, dw, db = got
    assert dx.shape == norm.shape and dx.dtype == dtype
    assert dw.shape == db.shape == norm.param_shape
    t = tol(dtype)
    g = np.abs(np.asarray(dy, np.float64))
    w = 1.0 if weight is None else float(np.max(np.abs(np.asarray(weight, np.float64))))
    xhat, _, var = norm.reference(x, eps=eps, **kw)
    dx_scale = 3.0 * float(g.max()) * w / float(np.sqrt(np.min(var) + eps))
    assert_close(dx, want[0], rtol=t, atol=t * dx_scale, what="dx")
    sum_g = norm.reference_backward(g, x, None, eps, **kw)[2]
    assert_close(db, want[2], rtol=t, atol=t * sum_g + 1e-300, what="dbias")
    assert_close(dw, want[1], rtol=t, atol=t * sum_g * (1 + float(np.abs(xhat).max())) + 1e-300,
                 what="dweight")


def within_float16_ulp(got, want, what, slack=0.0):
    """float16 ``got`` within one float16 ulp (plus ``slack``, absolute) of
    the float64 ``want``."""
    assert got.dtype == np.float16, what
    ulp = np.spacing(np.abs(want).astype(np.float16)).astype(np.float64)
    err = np.abs(got.astype(np.float64) - want)
    worst = float(np.max((err - slack) / ulp)) if got.size else 0.0
    assert worst <= 1.0, f"{what}: {worst:.2f} float16 ulps from the float64 reference"
