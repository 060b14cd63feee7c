"""Reports of :mod:`fastbn.benchmark`: Markdown tables, the summary per
norm and shape group, the busy-machine warning, a bar chart, and the command
line of ``benchmarks/compare.py`` and ``python -m fastbn bench``.

BatchNorm alone (the default, ``--norm batch``) reports as it always has;
with LayerNorm, GroupNorm or InstanceNorm (``--norm layer group instance``
or ``--norm all``) the tables gain a norm column and the summary lines name
their norm."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Callable, Sequence

import numba
import numpy as np

import fastbn

from ._machine import cpu_model
from .bench_family import NO_LAYOUT
from .benchmark import DTYPES, LAYOUTS, NORMS, OPS, BusyRow, Row, case_label, run, run_busy


def _fmt(v: float | None, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def _norm_column(rows) -> tuple[str, str, Callable[[Row | BusyRow], str]]:
    """A norm column's head, rule and cells: none when every row is
    BatchNorm's."""
    if all(r.norm == "batch" for r in rows):
        return "", "", lambda r: ""
    return "| norm ", "|---", lambda r: f"| {r.norm} "


def _name(r: Row | BusyRow) -> str:
    return case_label(r.norm, r.shape, r.layout, r.dtype, r.op)


def markdown(rows: Sequence[Row]) -> str:
    """The rows as a Markdown table (ratios: medians of per-round ratios)."""
    head, rule, cell = _norm_column(rows)
    head = (f"{head}| shape | layout | dtype | op | copy ms | fastbn ms | fastbn copies "
            "| / floor | torch ms | torch / fastbn | numpy ms | numpy / fastbn |\n"
            f"{rule}|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    lines = [
        f"{cell(r)}| {r.shape} | {r.layout} | {r.dtype} | {r.op} | {r.copy_ms:.3f} "
        f"| {r.fastbn_ms:.3f} | {r.fastbn_copies:.2f} | {r.fastbn_over_floor:.2f} "
        f"| {_fmt(r.torch_ms, '.3f')} | {_fmt(r.torch_over_fastbn, '.2f')} "
        f"| {_fmt(r.numpy_ms, '.2f')} | {_fmt(r.numpy_over_fastbn, '.1f')} |"
        for r in rows
    ]
    return head + "\n".join(lines) + "\n"


def busy_markdown(rows: Sequence[BusyRow]) -> str:
    """The busy-core rows as a Markdown table."""
    if not rows:
        return ""
    n = rows[0].threads
    head, rule, cell = _norm_column(rows)
    head = (f"{head}| shape | layout | dtype | op | {n} threads ms | 1 thread ms | {n} / 1 |\n"
            f"{rule}|---|---|---|---|---:|---:|---:|\n")
    lines = [f"{cell(r)}| {r.shape} | {r.layout} | {r.dtype} | {r.op} | {r.all_ms:.3f} "
             f"| {r.one_ms:.3f} | {r.all_over_one:.2f} |" for r in rows]
    return head + "\n".join(lines) + "\n"


def _gmean(values: Sequence[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def summary(rows: Sequence[Row]) -> str:
    """Per norm, shape group, dtype and op: PyTorch's time over fastbn's
    (geometric mean and worst of the per-round medians) and, for the large
    shapes, fastbn's time over the traffic floor (geometric mean and worst).
    Lines name their norm unless all rows are BatchNorm's."""
    out = []
    norms = list(dict.fromkeys(r.norm for r in rows))
    for norm in norms:
        prefix = "" if norms == ["batch"] else f"{norm} "
        for group, names in NORMS[norm].groups:
            out += _summary_lines([r for r in rows if r.norm == norm and r.shape in names],
                                  prefix + group, NORMS[norm].ops, group == "large")
    return "\n".join(out)


def _summary_lines(rows: Sequence[Row], group: str, ops: Sequence[str], floor: bool) -> list[str]:
    out = []
    for dtype in dict.fromkeys(r.dtype for r in rows):
        for op in ops:
            sel = [r for r in rows if r.op == op and r.dtype == dtype]
            if not sel:
                continue
            line = f"{group} {dtype} {op}:"
            vs = [r.torch_over_fastbn for r in sel if r.torch_over_fastbn is not None]
            if vs:
                worst = min(sel, key=lambda r: r.torch_over_fastbn or math.inf)
                where = " ".join(v for v in (worst.shape, worst.layout) if v != NO_LAYOUT)
                line += (f" torch/fastbn geomean {_gmean(vs):.2f}, min {min(vs):.2f}"
                         f" ({where});")
            floors = [r.fastbn_over_floor for r in sel]
            if floor:
                line += f" fastbn/floor geomean {_gmean(floors):.2f}, max {max(floors):.2f}"
            if line.endswith(":"):
                continue
            out.append(line.rstrip(";"))
    return out


def busy_summary(rows: Sequence[BusyRow]) -> str:
    if not rows:
        return ""
    worst = max(rows, key=lambda r: r.all_over_one)
    return (f"busy core: {rows[0].threads} threads over 1 thread, geomean "
            f"{_gmean([r.all_over_one for r in rows]):.2f}, worst {worst.all_over_one:.2f} "
            f"({_name(worst)})")


#: Above this spread (p90 / p10) of the roof's per-round times, a case ran on
#: a busy machine. The roof is the same parallel copy of the same array in
#: every round, so only the machine can move it. On the 2-core development
#: machine, with one Numba thread beside another process on the other core,
#: its spread stayed within 1.04-1.33 (six shapes, 25 rounds, twice each);
#: with two threads, so that one waited for the busy core, a case reached
#: 15.9. max / median is a worse sign: one slow round put it at 5.2 on a
#: run whose p90 / p10 was 1.33.
BUSY_SPREAD = 1.5

#: Above this median time of a parallel copy of 4 KiB (``Row.launch_ms``),
#: Numba's threads waited for a core. The copy itself takes microseconds
#: (1-2 us at one thread on the development machine); waiting for a core
#: held by another process takes a scheduler time slice (7.5 ms there, at
#: two threads). A machine busy all the time stretches every round alike
#: (there, five of those six cases kept a spread of 1.0-1.2 while each
#: round waited 7-8 ms), so the spread misses it.
BUSY_LAUNCH_MS = 0.5


def _cases(rows: Sequence[Row], value, unit: str, most: int = 6) -> str:
    worst = sorted(rows, key=value, reverse=True)
    names = [f"{_name(r)} ({value(r):.3g}{unit})" for r in worst[:most]]
    more = f" and {len(rows) - most} more" if len(rows) > most else ""
    return ", ".join(names) + more


def busy_warning(rows: Sequence[Row], spread_max: float = BUSY_SPREAD,
                 launch_max_ms: float = BUSY_LAUNCH_MS) -> str:
    """Warning lines when the roof's own timings show a busy machine (empty
    when they do not): cases whose roof spread exceeds ``spread_max``, and
    cases after which a parallel launch took over ``launch_max_ms``."""
    noisy = [r for r in rows if r.copy_spread is not None and r.copy_spread > spread_max]
    stalled = [r for r in rows if r.launch_ms is not None and r.launch_ms > launch_max_ms]
    lines = []
    if noisy:
        lines.append(
            f"warning: the machine looked busy: the roof (a parallel copy) varied by more than "
            f"{spread_max:g}x from round to round (p90/p10) in {len(noisy)} of {len(rows)} "
            f"cases: {_cases(noisy, lambda r: r.copy_spread, 'x')}; their ratios may be "
            "unreliable: rerun them on an idle machine")
    if stalled:
        lines.append(
            f"warning: the machine looked busy: Numba's threads waited for a core (a parallel "
            f"copy of 4 KiB took over {launch_max_ms:g} ms) after {len(stalled)} of {len(rows)} "
            f"cases: {_cases(stalled, lambda r: r.launch_ms, ' ms')}; their times and ratios "
            "may be unreliable: rerun on an idle machine or with fewer threads "
            "(NUMBA_NUM_THREADS)")
    return "\n".join(lines)


def plot(rows: Sequence[Row], path: str) -> None:
    """Bar chart of each implementation's time in copies, floors marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [("" if r.norm == "batch" else f"{r.norm} ")
              + f"{r.shape} {r.dtype.replace('float', 'f')}\n{r.layout} {r.op}" for r in rows]
    xs = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(8, 0.55 * len(rows)), 5))
    series = [("fastbn", [r.fastbn_copies for r in rows])]
    if any(r.torch_ms is not None for r in rows):
        series.append(("PyTorch", [np.nan if r.torch_ms is None else r.torch_ms / r.copy_ms
                                   for r in rows]))
    width = 0.8 / len(series)
    for i, (name, vals) in enumerate(series):
        ax.bar(xs + (i - (len(series) - 1) / 2) * width, vals, width, label=name)
    ax.scatter(xs, [r.floor_copies for r in rows], marker="_", s=400, color="k",
               label="traffic floor", zorder=3)
    ax.set_xticks(xs, labels, rotation=90, fontsize=7)
    ax.set_ylabel("time / parallel copy of x")
    ax.set_title(f"fastbn vs PyTorch, {numba.get_num_threads()} threads, {cpu_model()} "
                 "(lower is better)", fontsize=9)
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
    shapes = {norm: ", ".join(spec.shapes) for norm, spec in NORMS.items()}
    parser.add_argument("--norm", action="extend", nargs="+", choices=[*NORMS, "all"],
                        metavar="NORM",
                        help=f"norms to time: {', '.join(NORMS)} or all; repeatable "
                             "(default: batch)")
    parser.add_argument("--quick", action="store_true",
                        help="the large shapes (or those given) with at most 7 rounds")
    parser.add_argument("--shapes", nargs="+", choices=list(dict.fromkeys(
                            name for spec in NORMS.values() for name in spec.shapes)),
                        metavar="SHAPE",
                        help="shapes to run, each norm those of its own (default: all of each "
                             "norm's: " + "; ".join(f"{n}: {v}" for n, v in shapes.items()) + ")")
    parser.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS),
                        help=f"layouts (default: both; layer norm has none, shown as {NO_LAYOUT})")
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES, default=["float32"])
    parser.add_argument("--ops", nargs="+", choices=OPS,
                        help="ops to run, each norm those it has (default: all; layer, group and "
                             "instance norm have forward and backward)")
    parser.add_argument("--repeat", type=_positive_int, default=25,
                        help="interleaved rounds per case (default 25)")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    parser.add_argument("--busy", action="store_true",
                        help="also time fastbn at all threads against 1 thread while another "
                             "process keeps a core busy")
    parser.add_argument("--json", metavar="FILE", help="write the rows as JSON")
    parser.add_argument("--markdown", metavar="FILE", help="write the table as Markdown")
    parser.add_argument("--plot", metavar="FILE.png", help="write a bar chart (needs matplotlib)")


def norms(selected: Sequence[str] | None) -> list[str]:
    """The norms of ``--norm`` (repeated or not; ``all``), in the order of
    :data:`NORMS`; BatchNorm by default."""
    selected = set(selected or ["batch"])
    return [norm for norm in NORMS if norm in selected or "all" in selected]


def plan(args: argparse.Namespace) -> list[tuple[str, list[str], list[str]]]:
    """(norm, shapes, ops) of each norm selected that has something to run;
    ValueError for a shape or op that none of them has."""
    chosen = norms(args.norm)
    for option, wanted, attr in (("--shapes", args.shapes, "shapes"), ("--ops", args.ops, "ops")):
        stray = [w for w in wanted or () if all(w not in getattr(NORMS[n], attr) for n in chosen)]
        if stray:
            raise ValueError(f"{option} {' '.join(stray)}: not of --norm {' '.join(chosen)}")
    out = []
    for norm in chosen:
        spec = NORMS[norm]
        shapes = list(spec.shapes) if args.shapes is None else [
            s for s in args.shapes if s in spec.shapes]
        if args.quick:
            shapes = [s for s in shapes if s in spec.large] or shapes
        ops = [op for op in args.ops or spec.ops if op in spec.ops]
        if shapes and ops:
            out.append((norm, shapes, ops))
    if not out:
        raise ValueError(f"nothing to run: no norm of --norm {' '.join(chosen)} has both a "
                         "shape and an op asked for")
    return out


def main_from_args(args: argparse.Namespace) -> int:
    try:
        cases = plan(args)
    except ValueError as exc:
        print(f"fastbn bench: error: {exc}", file=sys.stderr)
        return 2
    repeat = min(args.repeat, 7) if args.quick else args.repeat
    peers = ("numpy",) if args.no_torch else ("torch", "numpy")
    rows, busy = [], []
    for norm, shapes, ops in cases:
        rows += run(shapes, args.layouts, args.dtypes, ops, repeat, peers, norm=norm)
        if args.busy:
            busy += run_busy(shapes, args.layouts, args.dtypes, ops, repeat, norm=norm)
    header = (f"fastbn {fastbn.__version__}, numba {numba.__version__}, "
              f"{numba.get_num_threads()} threads ({numba.threading_layer()} layer), "
              f"CPU: {cpu_model()}")
    parts = [markdown(rows), summary(rows), busy_warning(rows), busy_markdown(busy),
             busy_summary(busy)]
    table = "\n\n".join(p.rstrip("\n") for p in parts if p) + "\n"
    print(header)
    print(table)
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(header + "\n\n" + table)
        print(f"wrote the table to {os.path.abspath(args.markdown)}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"cpu": cpu_model(), "threads": numba.get_num_threads(),
                       "rows": [r.as_dict() for r in rows],
                       "busy": [vars(r) for r in busy]}, fh, indent=1)
        print(f"wrote the rows to {os.path.abspath(args.json)}")
    if args.plot:
        plot(rows, args.plot)
        print(f"wrote the bar chart to {os.path.abspath(args.plot)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``benchmarks/compare.py``."""
    parser = argparse.ArgumentParser(description="Compare fastbn with PyTorch, NumPy and a "
                                                 "parallel copy, in interleaved rounds.")
    add_arguments(parser)
    return main_from_args(parser.parse_args(argv))
