"""From a tensor of any rank, layout and strides to the kernels' views.

Every tensor is first seen as ``(N, C, S)``, S the product of the spatial
axes, with the channel axis where the layout puts it. The memory order then
picks the kernel shape: a channel-innermost tensor (NHWC, or NCHW data stored
channels last) becomes ``(1, N*S, C)`` for the ``_cl`` kernels, anything else
``(1, N, C, S)`` for the ``_cf`` kernels (the leading 1: one part, see
:mod:`fastbn.kernels`), or for the ``walk`` reductions
when a channel's runs of S values are short (``kernels.RUN_BYTES``). Reshapes are views whenever the
strides allow; only inputs whose strides cannot be merged are copied.
"""

from __future__ import annotations

import numpy as np

from .kernels import RUN_BYTES

LAYOUTS = ("NCHW", "NHWC")


def channel_axis(ndim: int, layout: str) -> int:
    """Index of the channel axis of a rank-``ndim`` tensor."""
    return 1 if layout == "NCHW" else ndim - 1


def _logical(a: np.ndarray, axis: int) -> np.ndarray:
    """``a`` as ``(N, C, S)``; ``axis`` is 1 or the last axis."""
    if axis == 1:
        return a.reshape(a.shape[0], a.shape[1], -1)
    return a.reshape(a.shape[0], -1, a.shape[-1]).transpose(0, 2, 1)


def _rows(v: np.ndarray) -> np.ndarray:
    n, c, s = v.shape
    if s == 1:
        return v[:, :, 0]
    return v.transpose(0, 2, 1).reshape(n * s, c)


class Plan:
    """How the kernels see tensors shaped like one input.

    Parameters
    ----------
    x : ndarray
        The input; its strides choose the kernel shape.
    axis : int
        Its channel axis.
    """

    __slots__ = ("axis", "kind", "shape")

    def __init__(self, x: np.ndarray, axis: int):
        self.axis = axis
        self.shape = x.shape
        if x.flags.c_contiguous:  # the common case, decided without views
            last = axis == x.ndim - 1 or x.size == x.shape[0] * x.shape[axis]
            self.kind = "cl" if last else "cf"
        else:
            v = _logical(x, axis)
            self.kind = "cf"
            if v.shape[2] == 1:
                self.kind = "cl"
            elif abs(v.strides[1]) < abs(v.strides[2]) and np.may_share_memory(_rows(v), x):
                self.kind = "cl"
        if self.kind == "cf" and x.size * x.itemsize < RUN_BYTES * x.shape[0] * x.shape[axis]:
            self.kind = "walk"

    def view(self, a: np.ndarray, writable: bool = False) -> np.ndarray:
        """The kernel view of ``a`` (a copy if its strides do not allow one),
        read-only unless ``writable``: kernels read their inputs through
        read-only views whatever the caller's flag, so that a read-only
        input compiles no kernel variant of its own."""
        if a.flags.c_contiguous and (self.kind != "cl") == (self.axis < a.ndim - 1):
            c = a.shape[self.axis]
            v = a.reshape(1, a.shape[0], c, -1) if self.kind != "cl" else a.reshape(1, -1, c)
        else:
            v = _logical(a, self.axis)
            v = _rows(v)[None] if self.kind == "cl" else v[None]
        if not writable:
            if v is a:
                v = a.view()
            v.setflags(write=False)
        return v

    def empty(self, dtype) -> np.ndarray:
        """A new array of the input's shape whose kernel view is a view."""
        last = len(self.shape) - 1
        if (self.kind == "cl") == (self.axis == last) or len(self.shape) == 2:
            return np.empty(self.shape, dtype)
        n, c = self.shape[0], self.shape[self.axis]
        spatial = [d for i, d in enumerate(self.shape) if i not in (0, self.axis)]
        if self.kind == "cl":
            return np.moveaxis(np.empty((n, *spatial, c), dtype), -1, self.axis)
        return np.moveaxis(np.empty((n, c, *spatial), dtype), 1, self.axis)

    def output(self, out: np.ndarray | None, dtype):
        """A kernel view to write a result into, and the arrays behind it.

        Returns ``(view, result, scratch)``: the kernel writes ``view``;
        ``result`` is the array to return (``out`` when given). When ``out``
        cannot be viewed, ``scratch`` holds the result, to be copied into
        ``out`` afterwards; else it is None.
        """
        if out is not None:
            v = self.view(out, writable=True)
            if np.may_share_memory(v, out):
                return v, out, None
        fresh = self.empty(dtype)
        if out is None:
            return self.view(fresh, writable=True), fresh, None
        return self.view(fresh, writable=True), out, fresh
