"""Side-by-side timing of fastbn, PyTorch, NumPy and the memory roof.

Every figure comes from one process and one run: the median of repeated
calls, next to the median of a parallel copy of the same array (the roof:
one read, one write). Times are also given in copies, against the traffic
floor of each operation (with write-allocate): forward-train 4/3 copy (a
read for the statistics, then read and write), eval 1 copy, backward 2
copies (read x and dy twice, write dx).

Used by ``benchmarks/compare.py``, ``python -m fastbn bench`` and the asv
suite. PyTorch, tqdm and matplotlib are optional.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Sequence

import numba
import numpy as np

import fastbn

#: Benchmark shapes, NCHW order (the NHWC case moves C last).
SHAPES = {
    "32x64x56x56": (32, 64, 56, 56),
    "64x256x14x14": (64, 256, 14, 14),
    "8x32x128x128": (8, 32, 128, 128),
    "256x1024": (256, 1024),
    "8x16x8x8": (8, 16, 8, 8),
}
LARGE = ("32x64x56x56", "64x256x14x14", "8x32x128x128")
OPS = ("forward", "eval", "backward")
LAYOUTS = ("NCHW", "NHWC")
DTYPES = ("float32", "float64")
#: Traffic floor of each op, in copies of x.
FLOORS = {"forward": 4 / 3, "eval": 1.0, "backward": 2.0}
EPS = 1e-5
MOMENTUM = 0.1


@numba.njit(parallel=True, nogil=True, cache=True)
def parallel_copy(src, dst):
    """``dst[:] = src`` for 1-D arrays, spread over Numba's threads."""
    for i in numba.prange(src.size):
        dst[i] = src[i]


def make_input(shape: Sequence[int], layout: str, dtype, seed: int = 0) -> np.ndarray:
    """A C-contiguous batch; ``shape`` is in NCHW order, moved for NHWC."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(tuple(shape)).astype(dtype) * 2 + 3
    if layout == "NHWC" and x.ndim > 2:
        x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    return x


def _axes(ndim: int, layout: str) -> tuple[int, tuple[int, ...]]:
    axis = 1 if layout == "NCHW" else ndim - 1
    return axis, tuple(i for i in range(ndim) if i != axis)


class Case:
    """Inputs and warmed callables of one shape × layout × dtype."""

    def __init__(self, shape: Sequence[int], layout: str, dtype, seed: int = 0):
        self.shape, self.layout, self.dtype = tuple(shape), layout, np.dtype(dtype)
        self.x = make_input(shape, layout, dtype, seed)
        self.axis, self.reduce = _axes(self.x.ndim, layout)
        c = self.x.shape[self.axis]
        rng = np.random.default_rng(seed + 1)
        self.weight = (1 + 0.1 * rng.standard_normal(c)).astype(dtype)
        self.bias = (0.1 * rng.standard_normal(c)).astype(dtype)
        self.running_mean = np.zeros(c, dtype)
        self.running_var = np.ones(c, dtype)
        self.dy = rng.standard_normal(self.x.shape).astype(dtype)
        self._flat_out = np.empty(self.x.size, dtype)

    # -- the roof ---------------------------------------------------------
    def copy(self) -> None:
        parallel_copy(self.x.reshape(-1), self._flat_out)

    # -- fastbn -----------------------------------------------------------
    def fastbn(self, op: str) -> Callable[[], object]:
        x, w, b, layout = self.x, self.weight, self.bias, self.layout
        rm, rv = self.running_mean, self.running_var
        if op == "forward":
            return lambda: fastbn.batch_norm_forward(
                x, w, b, running_mean=rm, running_var=rv, momentum=MOMENTUM,
                eps=EPS, layout=layout)
        if op == "eval":
            return lambda: fastbn.batch_norm_forward(
                x, w, b, training=False, running_mean=rm, running_var=rv,
                eps=EPS, layout=layout)
        if op == "backward":
            _, cache = fastbn.batch_norm_forward(x, w, b, eps=EPS, layout=layout)
            dy = self.dy
            return lambda: fastbn.batch_norm_backward(dy, cache)
        raise ValueError(f"op must be one of {OPS}, got {op!r}")

    # -- the obvious NumPy implementation ----------------------------------
    def numpy(self, op: str) -> Callable[[], object]:
        x, ax, dy = self.x, self.reduce, self.dy
        bshape = [1] * x.ndim
        bshape[self.axis] = -1
        w, b = self.weight.reshape(bshape), self.bias.reshape(bshape)
        m = x.size // x.shape[self.axis]

        def forward():
            mean = x.mean(axis=ax, keepdims=True)
            var = x.var(axis=ax, keepdims=True)
            return (x - mean) / np.sqrt(var + EPS) * w + b

        def evaluate():
            scale = w / np.sqrt(self.running_var.reshape(bshape) + EPS)
            return x * scale + (b - self.running_mean.reshape(bshape) * scale)

        def backward():
            mean = x.mean(axis=ax, keepdims=True)
            invstd = 1 / np.sqrt(x.var(axis=ax, keepdims=True) + EPS)
            xhat = (x - mean) * invstd
            dbias = dy.sum(axis=ax, keepdims=True)
            dweight = (dy * xhat).sum(axis=ax, keepdims=True)
            return w * invstd / m * (m * dy - dbias - xhat * dweight)

        return {"forward": forward, "eval": evaluate, "backward": backward}[op]

    # -- PyTorch CPU --------------------------------------------------------
    def torch(self, op: str) -> Callable[[], object] | None:
        try:
            import torch
        except ImportError:
            return None
        x = self._torch_tensor(torch, self.x)
        w, b = torch.from_numpy(self.weight), torch.from_numpy(self.bias)
        rm, rv = torch.from_numpy(self.running_mean.copy()), torch.from_numpy(self.running_var.copy())
        fbn = torch.nn.functional.batch_norm
        if op == "forward":
            return lambda: fbn(x, rm, rv, w, b, True, MOMENTUM, EPS)
        if op == "eval":
            return lambda: fbn(x, rm, rv, w, b, False, MOMENTUM, EPS)
        if op == "backward":
            dy = self._torch_tensor(torch, self.dy)
            _, mean, invstd = torch.native_batch_norm(x, w, b, rm, rv, True, MOMENTUM, EPS)
            backward = torch.ops.aten.native_batch_norm_backward
            return lambda: backward(dy, x, w, rm, rv, mean, invstd, True, EPS, [True, True, True])
        raise ValueError(f"op must be one of {OPS}, got {op!r}")

    def _torch_tensor(self, torch, a: np.ndarray):
        if self.layout == "NCHW" or a.ndim == 2:
            return torch.from_numpy(a)
        t = torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, -1, 1)))
        fmt = {4: torch.channels_last, 5: torch.channels_last_3d}.get(a.ndim)
        if fmt is None:  # rank 3: no channels-last format; keep (N, L, C) memory
            return torch.from_numpy(a).permute(0, 2, 1)
        return t.contiguous(memory_format=fmt)


def median_ms(fn: Callable[[], object], repeat: int, min_time: float = 0.0) -> float:
    """Median wall time of ``fn`` in milliseconds, after one warm-up call."""
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < repeat or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


@dataclass
class Row:
    shape: str
    layout: str
    dtype: str
    op: str
    copy_ms: float
    fastbn_ms: float
    torch_ms: float | None = None
    numpy_ms: float | None = None
    floor_copies: float = field(init=False)

    def __post_init__(self):
        self.floor_copies = FLOORS[self.op]

    @property
    def fastbn_copies(self) -> float:
        return self.fastbn_ms / self.copy_ms

    @property
    def fastbn_over_floor(self) -> float:
        return self.fastbn_copies / self.floor_copies

    @property
    def torch_over_fastbn(self) -> float | None:
        return None if self.torch_ms is None else self.torch_ms / self.fastbn_ms

    @property
    def numpy_over_fastbn(self) -> float | None:
        return None if self.numpy_ms is None else self.numpy_ms / self.fastbn_ms

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(fastbn_copies=self.fastbn_copies, fastbn_over_floor=self.fastbn_over_floor,
                 torch_over_fastbn=self.torch_over_fastbn, numpy_over_fastbn=self.numpy_over_fastbn)
        return d


@contextlib.contextmanager
def _torch_threads(n: int):
    try:
        import torch
    except ImportError:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def run(shapes: Iterable[str] = tuple(SHAPES), layouts: Iterable[str] = LAYOUTS,
        dtypes: Iterable[str] = ("float32",), ops: Iterable[str] = OPS, repeat: int = 15,
        peers: Iterable[str] = ("torch", "numpy"), progress: bool = True) -> list[Row]:
    """Measure every shape × layout × dtype × op; returns the rows."""
    combos = [(s, l, d) for s in shapes for l in layouts for d in dtypes]
    ops = tuple(ops)
    bar = _progress(len(combos) * len(ops), progress)
    rows = []
    with _torch_threads(numba.get_num_threads()):
        for shape, layout, dtype in combos:
            case = Case(SHAPES[shape], layout, dtype)
            for op in ops:
                bar.set_description(f"{shape} {layout} {dtype} {op}")
                copy_ms = median_ms(case.copy, repeat)
                row = Row(shape, layout, dtype, op, copy_ms, median_ms(case.fastbn(op), repeat))
                if "torch" in peers and (fn := case.torch(op)) is not None:
                    row.torch_ms = median_ms(fn, repeat)
                if "numpy" in peers:
                    row.numpy_ms = median_ms(case.numpy(op), max(3, repeat // 3))
                rows.append(row)
                bar.update(1)
    bar.close()
    return rows


class _NoBar:
    def set_description(self, _):
        pass

    def update(self, _):
        pass

    def close(self):
        pass


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, unit="case", leave=False)


def _fmt(v: float | None, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def markdown(rows: Sequence[Row]) -> str:
    """The rows as a Markdown table."""
    head = ("| shape | layout | dtype | op | copy ms | fastbn ms | fastbn copies "
            "| / floor | torch ms | torch / fastbn | numpy ms | numpy / fastbn |\n"
            "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    lines = [
        f"| {r.shape} | {r.layout} | {r.dtype} | {r.op} | {r.copy_ms:.3f} | {r.fastbn_ms:.3f} "
        f"| {r.fastbn_copies:.2f} | {r.fastbn_over_floor:.2f} | {_fmt(r.torch_ms, '.3f')} "
        f"| {_fmt(r.torch_over_fastbn, '.2f')} | {_fmt(r.numpy_ms, '.2f')} "
        f"| {_fmt(r.numpy_over_fastbn, '.1f')} |"
        for r in rows
    ]
    return head + "\n".join(lines) + "\n"


def summary(rows: Sequence[Row]) -> str:
    """Per dtype and op: the worst and geometric-mean ratio to the traffic
    floor, and PyTorch's time over fastbn's, over the large shapes (all
    shapes if none of them ran)."""
    out = []
    for dtype in dict.fromkeys(r.dtype for r in rows):
        for op in OPS:
            sel = [r for r in rows if r.op == op and r.dtype == dtype]
            sel = [r for r in sel if r.shape in LARGE] or sel
            if not sel:
                continue
            floor = [r.fastbn_over_floor for r in sel]
            line = f"{dtype} {op}: fastbn/floor max {max(floor):.2f}, geomean {_gmean(floor):.2f}"
            vs = [r.torch_over_fastbn for r in sel if r.torch_ms is not None]
            if vs:
                line += f"; torch/fastbn geomean {_gmean(vs):.2f}, min {min(vs):.2f}"
            out.append(line)
    return "\n".join(out)


def _gmean(values: Sequence[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def plot(rows: Sequence[Row], path: str) -> None:
    """Bar chart of each implementation's time in copies, floors marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r.shape} {r.dtype.replace('float', 'f')}\n{r.layout} {r.op}" for r in rows]
    xs = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(8, 0.55 * len(rows)), 5))
    series = [("fastbn", [r.fastbn_copies for r in rows])]
    if any(r.torch_ms is not None for r in rows):
        series.append(("PyTorch", [np.nan if r.torch_ms is None else r.torch_ms / r.copy_ms for r in rows]))
    width = 0.8 / len(series)
    for i, (name, vals) in enumerate(series):
        ax.bar(xs + (i - (len(series) - 1) / 2) * width, vals, width, label=name)
    ax.scatter(xs, [r.floor_copies for r in rows], marker="_", s=400, color="k", label="traffic floor", zorder=3)
    ax.set_xticks(xs, labels, rotation=90, fontsize=7)
    ax.set_ylabel("time / parallel copy of x")
    ax.set_title(f"fastbn vs PyTorch, {numba.get_num_threads()} threads (lower is better)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def int_at_least(minimum: int):
    """An argparse ``type`` for integers ``>= minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text}")
        return value

    return parse


_positive_int = int_at_least(1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="the large shapes once each, fewer repeats")
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES), metavar="SHAPE",
                        help=f"shapes to run (default: all of {', '.join(SHAPES)})")
    parser.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS))
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES, default=["float32"])
    parser.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS))
    parser.add_argument("--repeat", type=_positive_int, default=25, help="timed calls per median (default 25)")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    parser.add_argument("--json", metavar="FILE", help="write the rows as JSON")
    parser.add_argument("--markdown", metavar="FILE", help="write the table as Markdown")
    parser.add_argument("--plot", metavar="FILE.png", help="write a bar chart (needs matplotlib)")


def main_from_args(args: argparse.Namespace) -> int:
    shapes, repeat = args.shapes, args.repeat
    if args.quick:
        shapes = [s for s in shapes if s in LARGE] or shapes
        repeat = min(repeat, 7)
    peers = ("numpy",) if args.no_torch else ("torch", "numpy")
    rows = run(shapes, args.layouts, args.dtypes, args.ops, repeat, peers)
    table = markdown(rows)
    print(f"fastbn {fastbn.__version__}, numba {numba.__version__}, "
          f"{numba.get_num_threads()} threads ({numba.threading_layer()} layer)")
    print(table)
    print(summary(rows))
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(table + "\n" + summary(rows) + "\n")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"threads": numba.get_num_threads(), "rows": [r.as_dict() for r in rows]}, fh, indent=1)
    if args.plot:
        plot(rows, args.plot)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``benchmarks/compare.py``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    return main_from_args(parser.parse_args(argv))
