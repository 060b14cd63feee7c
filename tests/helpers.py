"""Array factories, memory-layout variants and tolerance checks for the tests.

Nothing here calls fastbn: expected values come from ``reference.py``.
"""

from __future__ import annotations

import numpy as np

from reference import channel_axis

LAYOUTS = ("NCHW", "NHWC")
DTYPES = (np.float32, np.float64)
RANKS = (2, 3, 4, 5)

#: Spatial extents per rank; odd sizes so that no loop tail is hidden.
SMALL_SPATIAL = {2: (), 3: (5,), 4: (3, 4), 5: (2, 3, 4)}
#: (N, C, spatial) with >= 32K elements: large enough for the parallel path,
#: with sizes that are not multiples of any block or thread count.
LARGE_DIMS = {
    2: (8195, 5, ()),
    3: (7, 5, (1031,)),
    4: (5, 3, (47, 53)),
    5: (3, 3, (5, 29, 31)),
}

#: Ways to present the same logical values with a different memory layout.
VARIANTS = (
    "contiguous",
    "fortran",
    "batch_innermost",
    "stepped",
    "negative",
    "other_physical",
    "readonly",
    "broadcast",
)


def make_shape(rank: int, layout: str, N: int, C: int, spatial=None) -> tuple:
    spatial = SMALL_SPATIAL[rank] if spatial is None else tuple(spatial)
    assert len(spatial) == rank - 2
    return (N, C, *spatial) if layout == "NCHW" else (N, *spatial, C)


def channel_shape(ndim: int, layout: str, C: int) -> tuple:
    """Shape that broadcasts a (C,) vector along the channel axis."""
    shape = [1] * ndim
    shape[channel_axis(ndim, layout)] = C
    return tuple(shape)


def make_x(rng, shape, layout, dtype, loc=None, scale=None):
    """Random data whose channels have different means and spreads, so that a
    mix-up of channels shows. ``loc``/``scale`` override the per-channel
    defaults (scalars or (C,) arrays)."""
    C = shape[channel_axis(len(shape), layout)]
    if loc is None:
        loc = np.linspace(-3.0, 3.0, C) if C > 1 else np.array([0.5])
    if scale is None:
        scale = np.linspace(0.5, 2.0, C) if C > 1 else np.array([1.5])
    cs = channel_shape(len(shape), layout, C)
    x = (rng.standard_normal(shape) * np.broadcast_to(scale, (C,)).reshape(cs)
         + np.broadcast_to(loc, (C,)).reshape(cs))
    return x.astype(dtype)


def make_params(rng, C, dtype):
    weight = rng.uniform(0.5, 2.0, C).astype(dtype)
    bias = rng.uniform(-1.0, 1.0, C).astype(dtype)
    return weight, bias


def make_running(rng, C, dtype):
    running_mean = rng.uniform(-1.0, 1.0, C).astype(dtype)
    running_var = rng.uniform(0.5, 2.0, C).astype(dtype)
    return running_mean, running_var


def as_variant(x: np.ndarray, kind: str, layout: str) -> np.ndarray:
    """An array with the logical shape of ``x`` laid out as ``kind`` says.

    All kinds hold exactly x's values except ``broadcast``, which repeats the
    first batch entry along N with a zero stride (read-only).
    """
    x = np.asarray(x)
    if kind == "contiguous":
        out = np.ascontiguousarray(x)
    elif kind == "fortran":
        out = np.asfortranarray(x)
    elif kind == "batch_innermost":
        out = np.moveaxis(np.ascontiguousarray(np.moveaxis(x, 0, -1)), -1, 0)
    elif kind == "stepped":
        # every axis stepped by 2 with an offset, the gaps filled with NaN so
        # that reading outside the view poisons the result
        big = np.full(tuple(2 * s + 1 for s in x.shape), np.nan, dtype=x.dtype)
        sl = tuple(slice(1, None, 2) for _ in x.shape)
        big[sl] = x
        out = big[sl]
    elif kind == "negative":
        out = np.flip(np.flip(x).copy())
    elif kind == "other_physical":
        # NCHW given physically channels-last data and vice versa
        ax = channel_axis(x.ndim, layout)
        other = x.ndim - 1 if ax == 1 else 1
        out = np.moveaxis(np.ascontiguousarray(np.moveaxis(x, ax, other)), other, ax)
    elif kind == "readonly":
        out = x.copy()
        out.setflags(write=False)
    elif kind == "broadcast":
        out = np.broadcast_to(x[:1], x.shape)
    else:
        raise ValueError(kind)
    assert out.shape == x.shape and out.dtype == x.dtype
    if kind != "broadcast":
        np.testing.assert_array_equal(out, x)
    return out


def tol(dtype) -> float:
    """Relative tolerance for values computed from data of ``dtype``."""
    return 1e-10 if np.dtype(dtype) == np.float64 else 1e-5


def assert_close(actual, expected, *, rtol, atol, what=""):
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    atol = np.broadcast_to(np.asarray(atol, dtype=np.float64), expected.shape)
    if expected.ndim > 1 and atol.ndim == 1:  # pragma: no cover
        raise AssertionError("per-channel atol needs (C,)-shaped values")
    err = np.abs(actual - expected)
    bound = atol + rtol * np.abs(expected)
    same_nan = np.isnan(actual) & np.isnan(expected)
    bad = ~((err <= bound) | same_nan)
    if bad.any():
        idx = np.argwhere(bad)[:5]
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.size} values out of tolerance "
            f"(rtol={rtol:g}); first at {[tuple(map(int, i)) for i in idx]}: "
            f"actual {actual[bad][:5]}, expected {expected[bad][:5]}, "
            f"bound {bound[bad][:5]}, worst err/bound "
            f"{float(np.max(err[bad] / np.maximum(bound[bad], 1e-300))):.3g}")


def check_stats(mean, var, ref_mean, ref_var, dtype, data_scale, what=""):
    """SPEC accuracy: float64 within 1e-10 relative; float32 mean within
    1e-6 of the data scale and variance within 1e-4 relative."""
    if np.dtype(dtype) == np.float64:
        assert_close(mean, ref_mean, rtol=1e-10, atol=1e-10 * data_scale,
                     what=what + " mean")
        assert_close(var, ref_var, rtol=1e-10, atol=1e-12 * data_scale ** 2,
                     what=what + " var")
    else:
        assert_close(mean, ref_mean, rtol=0, atol=1e-6 * data_scale,
                     what=what + " mean")
        assert_close(var, ref_var, rtol=1e-4, atol=1e-7 * data_scale ** 2,
                     what=what + " var")


def check_y(y, ref_y, dtype, what="y"):
    scale = max(1.0, float(np.max(np.abs(ref_y)))) if ref_y.size else 1.0
    t = tol(dtype)
    assert_close(y, ref_y, rtol=t, atol=t * scale, what=what)


def check_grads(got, ref, dy, x, weight, mean, var, eps, dtype, layout,
                what=""):
    """Compare (dx, dweight, dbias) with the reference ``ref``.

    ``mean``/``var`` are the statistics the forward normalised with. Each
    quantity is judged against the magnitude of the terms it is made of:
    |dy| * |weight * invstd| for dx, sum |dy| and sum |dy * xhat| for the
    reductions."""
    from reference import to_cm

    dx, dw, db = got
    rdx, rdw, rdb = ref
    t = tol(dtype)
    g = np.abs(to_cm(dy, layout))
    C = g.shape[0]
    w = np.ones(C) if weight is None else np.asarray(weight, np.float64)
    invstd = 1.0 / np.sqrt(np.asarray(var, np.float64) + eps)
    xhat = np.abs((to_cm(x, layout) - np.asarray(mean, np.float64)[:, None])
                  * invstd[:, None])
    gmax = float(g.max()) if g.size else 1.0
    dx_scale = max(1e-300, 3.0 * gmax * float(np.max(np.abs(w) * invstd)))
    assert_close(dx, rdx, rtol=t, atol=t * dx_scale, what=what + " dx")
    assert_close(db, rdb, rtol=t, atol=t * g.sum(axis=1) + 1e-300,
                 what=what + " dbias")
    assert_close(dw, rdw, rtol=t, atol=t * (g * (1.0 + xhat)).sum(axis=1) + 1e-300,
                 what=what + " dweight")


def data_scale(x) -> float:
    """max |x|, the 'scale of the data' of the accuracy clause."""
    x = np.asarray(x, dtype=np.float64)
    return max(1e-300, float(np.max(np.abs(x)))) if x.size else 1.0


def unchanged(before: dict, after: dict):
    """Assert two snapshots (dicts of arrays/scalars/None) are identical."""
    assert before.keys() == after.keys()
    for k in before:
        b, a = before[k], after[k]
        if b is None or a is None:
            assert a is b, k
        elif isinstance(b, np.ndarray):
            assert isinstance(a, np.ndarray), k
            assert a.dtype == b.dtype and a.shape == b.shape, k
            np.testing.assert_array_equal(a, b, err_msg=k)
        else:
            assert a == b, (k, b, a)


def assert_message(excinfo, *groups):
    """The exception message must contain, for each group, at least one of
    the alternatives (case-insensitive)."""
    msg = str(excinfo.value).lower()
    for group in groups:
        if isinstance(group, str):
            group = (group,)
        assert any(str(g).lower() in msg for g in group), (
            f"message {str(excinfo.value)!r} mentions none of {group!r}")
