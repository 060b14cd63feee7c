"""The normalization family's benchmark cases (LayerNorm, GroupNorm,
InstanceNorm) beside BatchNorm's (:mod:`fastbn.bench_cases`), with the same
peers: fastbn, PyTorch CPU, the obvious NumPy code and the roof (a parallel
copy of x); and :data:`NORMS`, each norm's shapes, layouts, ops and traffic
floors, from which :mod:`fastbn.benchmark` runs any of them.

Traffic floors, in copies of x with write-allocate like BatchNorm's
(a copy moves three streams: it reads x, reads the output's lines for
ownership and writes them): the statistics of a row, a (sample, group) or a
(sample, channel) cover at most 128 KiB here (a float64 group or instance of
8x32x128x128; channels-last, all groups of a sample together, at most
4 MiB), so a kernel can keep them in cache between the statistics and the
normalization, and read x from memory once. Forward: read x, write y: 1
copy. Backward: read x and dy, write dx: four streams, 4/3 copy.
(BatchNorm's statistics span the whole batch: its forward reads x twice.)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

import fastbn

from .bench_cases import (EPS, FLOORS, LARGE, LAYOUTS, MOMENTUM, OPS, SHAPES, SMALL, Case,
                          torch_tensor)

#: GroupNorm's groups in every case.
GROUPS = 32
#: The layout of a LayerNorm case: none (normalized over the last axis).
NO_LAYOUT = "-"
FAMILY = ("layer", "group", "instance")
FAMILY_OPS = ("forward", "backward")
#: Traffic floor of each op, in copies of x (see the module's docstring).
FAMILY_FLOORS = {"forward": 1.0, "backward": 4 / 3}
#: Shapes per norm, NCHW order for GroupNorm and InstanceNorm (NHWC moves C
#: last); LayerNorm normalizes the last axis.
FAMILY_SHAPES = {
    "layer": {"4096x768": (4096, 768), "8192x1024": (8192, 1024),
              "64x197x768": (64, 197, 768), "65536x16": (65536, 16)},
    "group": {"32x64x56x56": (32, 64, 56, 56), "8x32x128x128": (8, 32, 128, 128),
              "16x256x14x14": (16, 256, 14, 14)},
    "instance": {"8x32x128x128": (8, 32, 128, 128), "32x64x56x56": (32, 64, 56, 56)},
}


class FamilyCase(Case):
    """Inputs and warmed callables of one norm × shape × layout × dtype.

    ``layout`` is ``"NCHW"`` or ``"NHWC"`` for GroupNorm and InstanceNorm,
    :data:`NO_LAYOUT` for LayerNorm, whose weight and bias then run along
    the last axis (:class:`Case` takes any layout but NCHW as channels last).
    """

    def __init__(self, norm: str, shape: Sequence[int], layout: str, dtype, seed: int = 0,
                 groups: int = GROUPS):
        if norm not in FAMILY:
            raise ValueError(f"norm must be one of {FAMILY}, got {norm!r}")
        if (layout == NO_LAYOUT) != (norm == "layer"):
            raise ValueError(f"{norm} norm cannot run in layout {layout!r}")
        super().__init__(shape, layout, dtype, seed)
        self.norm = norm
        c = self.x.shape[self.axis]
        self.groups = {"layer": 1, "group": groups, "instance": c}[norm]

    # -- fastbn -----------------------------------------------------------
    def fastbn(self, op: str) -> Callable[[], object]:
        _check_op(op)
        head = {"layer": (self.x.shape[-1:],), "group": (self.groups,), "instance": ()}[self.norm]
        layout = {} if self.norm == "layer" else {"layout": self.layout}
        forward = functools.partial(getattr(fastbn, f"{self.norm}_norm_forward"), self.x, *head,
                                    self.weight, self.bias, eps=EPS, **layout)
        if op == "forward":
            return forward
        _, cache = forward()
        return functools.partial(getattr(fastbn, f"{self.norm}_norm_backward"), self.dy, cache)

    # -- the obvious NumPy implementation ----------------------------------
    def _grouped(self):
        """x seen as (samples, groups, channels per group, positions), or
        (samples, positions, groups, channels per group) channels-last; the
        axes of the statistics; weight's shape there; the axes dweight sums
        over. A LayerNorm row is a sample of one group of one position."""
        x = self.x
        c = x.shape[self.axis]
        n = x.size // c if self.norm == "layer" else x.shape[0]
        g, s = self.groups, x.size // (n * c)
        if self.layout == "NHWC":
            return (n, s, g, c // g), (1, 3), (1, 1, g, c // g), (0, 1)
        return (n, g, c // g, s), (2, 3), (1, g, c // g, 1), (0, 3)

    def numpy(self, op: str) -> Callable[[], object]:
        _check_op(op)
        shape, ax, wshape, sums = self._grouped()
        x, dy = self.x.reshape(shape), self.dy.reshape(shape)
        w, b = self.weight.reshape(wshape), self.bias.reshape(wshape)

        def forward():
            mean = x.mean(axis=ax, keepdims=True)
            var = x.var(axis=ax, keepdims=True)
            return ((x - mean) / np.sqrt(var + EPS) * w + b).reshape(self.x.shape)

        def backward():
            mean = x.mean(axis=ax, keepdims=True)
            invstd = 1 / np.sqrt(x.var(axis=ax, keepdims=True) + EPS)
            xhat = (x - mean) * invstd
            g = dy * w
            m = x.size // mean.size
            dx = invstd / m * (m * g - g.sum(axis=ax, keepdims=True)
                               - xhat * (g * xhat).sum(axis=ax, keepdims=True))
            return (dx.reshape(self.x.shape), (dy * xhat).sum(axis=sums).reshape(-1),
                    dy.sum(axis=sums).reshape(-1))

        return forward if op == "forward" else backward

    # -- PyTorch CPU --------------------------------------------------------
    def torch(self, op: str) -> Callable[[], object] | None:
        """PyTorch's forward (``torch.nn.functional``, weight and bias) or
        backward alone: the aten op autograd calls for LayerNorm and
        GroupNorm; InstanceNorm's autograd graph (a BatchNorm over a
        (1, N*C, ...) view) from a forward kept with ``retain_graph``."""
        _check_op(op)
        try:
            import torch
        except ImportError:
            return None
        fn = torch.nn.functional
        x, dy = (torch_tensor(torch, a, self.layout) for a in (self.x, self.dy))
        w, b = torch.from_numpy(self.weight), torch.from_numpy(self.bias)
        mask = [True, True, True]
        if self.norm == "layer":
            shape = list(self.x.shape[-1:])
            if op == "forward":
                return functools.partial(fn.layer_norm, x, shape, w, b, EPS)
            _, mean, rstd = torch.native_layer_norm(x, shape, w, b, EPS)
            return functools.partial(torch.ops.aten.native_layer_norm_backward, dy, x, shape,
                                     mean, rstd, w, b, mask)
        if self.norm == "group":
            if op == "forward":
                return functools.partial(fn.group_norm, x, self.groups, w, b, EPS)
            n, c = x.shape[:2]
            hw = x.numel() // (n * c)
            _, mean, rstd = torch.native_group_norm(x, w, b, n, c, hw, self.groups, EPS)
            return functools.partial(torch.ops.aten.native_group_norm_backward, dy, x, mean, rstd,
                                     w, n, c, hw, self.groups, mask)
        if op == "forward":
            return functools.partial(fn.instance_norm, x, None, None, w, b, True, MOMENTUM, EPS)
        inputs = tuple(t.detach().requires_grad_() for t in (x, w, b))
        y = fn.instance_norm(inputs[0], None, None, *inputs[1:], True, MOMENTUM, EPS)
        return lambda: torch.autograd.grad(y, inputs, dy, retain_graph=True)


def _check_op(op: str) -> None:
    if op not in FAMILY_OPS:
        raise ValueError(f"op must be one of {FAMILY_OPS}, got {op!r}")


@dataclass(frozen=True)
class Norm:
    """What the benchmark runs of one norm: its named shapes, the groups of
    them that the summary reports apart (fastbn over the floor for
    ``"large"``), its layouts, ops and traffic floors, and its case."""

    shapes: dict[str, tuple[int, ...]]
    groups: tuple[tuple[str, tuple[str, ...]], ...]
    layouts: tuple[str, ...]
    ops: tuple[str, ...]
    floors: dict[str, float]
    case: Callable[..., Case]

    @property
    def large(self) -> tuple[str, ...]:
        return dict(self.groups).get("large", ())

    def pick_layouts(self, wanted: Sequence[str]) -> list[str]:
        """Those of ``wanted`` this norm has; LayerNorm's one, whatever is
        wanted."""
        if self.layouts == (NO_LAYOUT,):
            return [NO_LAYOUT]
        return [layout for layout in wanted if layout in self.layouts]


def _family_norm(norm: str, groups) -> Norm:
    return Norm(FAMILY_SHAPES[norm], groups, (NO_LAYOUT,) if norm == "layer" else LAYOUTS,
                FAMILY_OPS, FAMILY_FLOORS, functools.partial(FamilyCase, norm))


NORMS = {
    "batch": Norm(SHAPES, (("large", LARGE), ("small", SMALL)), LAYOUTS, OPS, FLOORS, Case),
    "layer": _family_norm("layer", (("large", ("4096x768", "8192x1024", "64x197x768")),
                                    ("short rows", ("65536x16",)))),
    "group": _family_norm("group", (("large", tuple(FAMILY_SHAPES["group"])),)),
    "instance": _family_norm("instance", (("large", tuple(FAMILY_SHAPES["instance"])),)),
}


def make_case(norm: str, shape: str, layout: str, dtype) -> Case:
    """The case of a named shape of ``norm``."""
    spec = NORMS[norm]
    return spec.case(spec.shapes[shape], layout, dtype)
