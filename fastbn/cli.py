"""``python -m fastbn`` (also the ``fastbn`` console script).

Subcommands: ``info`` (versions, threads, compile cache), ``warmup`` and
``cache`` (compile ahead, inspect or clear the compile cache), ``bench`` (the
side-by-side comparison of :mod:`fastbn.benchmark`) and ``demo`` (the training
demo of :mod:`fastbn.demo`).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from typing import Sequence

import numba
import numpy as np

import fastbn


def info(args: argparse.Namespace) -> int:
    from fastbn.benchmark import parallel_copy

    parallel_copy(np.zeros(2), np.zeros(2))  # starts the threading layer
    from fastbn._choices import CHOICES as c, MACHINE as m
    from fastbn.kernels import RUN_BYTES

    from fastbn._warmup import cache_dir, cache_files

    path = cache_dir()
    entries = sum(f.endswith(".nbi") for f in cache_files())
    lines = [
        ("fastbn", fastbn.__version__),
        ("numpy", np.__version__),
        ("numba", numba.__version__),
        ("python", platform.python_version()),
        ("threading layer", numba.threading_layer()),
        ("threads", f"{numba.get_num_threads()} (NUMBA_NUM_THREADS {numba.config.NUMBA_NUM_THREADS})"),
        ("cpu", f"{m.cpu}, {os.cpu_count()} logical cores, {m.cpus} usable"),
        ("caches", f"L1d {m.l1d >> 10} KiB, L2 {m.l2 >> 10} KiB per core, L3 {m.l3 >> 20} MiB; "
                   f"SIMD {8 * m.simd_bytes} bits"),
        ("kernel choices", c.source),
        ("  parallel from", f"{c.parallel_min_size} elements"),
        ("  channel per task", f"channels of at most {c.fused_max_channel_bytes >> 10} KiB in runs "
                               f"of at least {RUN_BYTES} B"),
        ("  sample per task", f"channels-last samples of at most "
                              f"{c.fused_max_sample_bytes >> 10} KiB, one per thread"),
        ("compile cache", path or "none (caching unavailable)"),
        ("cache state", f"warm ({entries} kernel index files)" if entries else "cold (kernels compile on first use)"),
    ]
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print(f"{key:<{width}}  {value}")
    return 0


def warmup(args: argparse.Namespace) -> int:
    from fastbn import _warmup

    start = time.perf_counter()
    results = _warmup.warmup(args.layout, args.dtype, args.strided, args.jobs, args.quiet)
    compiled = sum(r[2] for r in results)
    loaded = sum(r[3] for r in results)
    if not args.quiet:
        print(f"{compiled} kernel signatures compiled, {loaded} already in the cache, "
              f"in {time.perf_counter() - start:.1f} s: {_warmup.cache_dir()}")
    return 0


def cache(args: argparse.Namespace) -> int:
    from fastbn import _warmup

    path = _warmup.cache_dir()
    if path is None:
        print("no compile cache: Numba cannot cache here (kernels compile in every process)")
        return 0
    if args.clear:
        freed = _warmup.clear()
        print(f"removed {freed / 1e6:.1f} MB of compiled kernels from {path}")
        return 0
    files = _warmup.cache_files()
    size = sum(os.path.getsize(f) for f in files)
    print(f"location  {path}")
    print(f"size      {size / 1e6:.1f} MB in {len(files)} files")
    sigs = _warmup.signatures(args.layout, args.dtype, args.strided)
    warm = 0
    for (name, twin), types in sorted(sigs.items()):
        state = [_warmup.is_cached(name, twin, t) for t in types]
        warm += state.count(True)
        word = "warm" if all(state) else "cold" if not any(state) else "partly warm"
        if None in state:
            word = "unknown"
        print(f"  {name + ' (' + twin + ')':<28} {word} ({state.count(True)}/{len(state)})")
    total = sum(len(t) for t in sigs.values())
    print(f"{warm} of {total} signatures of {'/'.join(args.layout)} "
          f"{'/'.join(args.dtype)} are cached; python -m fastbn warmup compiles the rest")
    return 0


def tune(args: argparse.Namespace) -> int:
    from fastbn._tune import main as tune_main

    return tune_main(args.repeat)


def bench(args: argparse.Namespace) -> int:
    from fastbn.benchmark_report import main_from_args

    return main_from_args(args)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


def demo(args: argparse.Namespace) -> int:
    if args.small_batch:
        from fastbn.demo_small_batch import EPOCHS, LR, run
    else:
        from fastbn.demo import EPOCHS, LR, run

    try:
        run(epochs=EPOCHS if args.epochs is None else args.epochs, lr=LR if args.lr is None else args.lr,
            seed=args.seed, plot=args.plot, progress=not args.no_progress)
    except (ImportError, OSError) as exc:
        print(f"fastbn demo: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    from fastbn import demo as d
    from fastbn import demo_small_batch as s
    from fastbn.benchmark_report import _positive_int, int_at_least

    parser.add_argument("--small-batch", action="store_true",
                        help=f"train with batches of {s.BATCH_SIZE}: BatchNorm, ghost BN "
                             f"(virtual_batch_size={s.VIRTUAL_BATCH_SIZE}) and BatchRenorm "
                             "side by side")
    parser.add_argument("--epochs", type=_positive_int, default=None,
                        help=f"passes over the training set (default {d.EPOCHS}; "
                             f"{s.EPOCHS} with --small-batch)")
    parser.add_argument("--lr", type=_positive_float, default=None,
                        help=f"SGD learning rate of every network (default {d.LR:g}; "
                             f"{s.LR:g} with --small-batch)")
    parser.add_argument("--seed", type=int_at_least(0), default=d.SEED,
                        help=f"seed of the split, the weights and the shuffling (default {d.SEED})")
    parser.add_argument("--plot", metavar="FILE.png", help="write the learning curves (needs matplotlib)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _positive_int_arg(text: str) -> int:
    from fastbn.benchmark_report import _positive_int

    return _positive_int(text)


def _cache_command(sub, name: str, func, help: str, description: str) -> argparse.ArgumentParser:
    """A subcommand over a selection of kernel signatures (warmup, cache)."""
    from fastbn._warmup import DTYPES, LAYOUTS

    parser = sub.add_parser(name, help=help, description=description)
    parser.add_argument("--layout", nargs="+", choices=LAYOUTS, default=list(LAYOUTS),
                        help="layouts (default: both)")
    parser.add_argument("--dtype", nargs="+", choices=DTYPES, default=list(DTYPES),
                        help="dtypes (default: both)")
    parser.add_argument("--strided", action="store_true",
                        help="also inputs that are strided views (e.g. x[::2], x[:, :16]), "
                             "whose kernels are variants of their own")
    parser.set_defaults(func=func)
    return parser


def build_parser() -> argparse.ArgumentParser:
    from fastbn.benchmark_report import add_arguments

    parser = argparse.ArgumentParser(prog="fastbn", description="fastbn: Batch Normalization on the CPU.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    p = sub.add_parser("info", help="versions, threads and compile cache")
    p.set_defaults(func=info)
    p = sub.add_parser("tune", help="measure this machine's kernel crossover points and keep them",
                       description="Time the candidate kernels of each choice (serial or parallel, "
                                   "channel-per-task or two-pass) on synthetic inputs, in "
                                   "interleaved rounds, and keep the winners beside the compile "
                                   "cache, where every later process finds them. Results are the "
                                   "same whichever kernel runs; only speed changes.")
    p.add_argument("--repeat", type=_positive_int_arg, default=15,
                   help="interleaved rounds per comparison (default 15)")
    p.set_defaults(func=tune)
    p = _cache_command(sub, "warmup", warmup, "compile every kernel into the cache ahead of use",
                       "Compile, in parallel processes, every kernel signature that the layouts "
                       "and dtypes asked for can use (inputs of any rank), into the on-disk "
                       "cache: later processes start without waiting for the compiler. Safe to "
                       "run while other processes use or fill the same cache.")
    p.add_argument("--jobs", type=_positive_int_arg, default=None,
                   help="worker processes (default: the usable cores)")
    p.add_argument("--quiet", action="store_true", help="print nothing")
    p = _cache_command(sub, "cache", cache, "where the compile cache is, its size, warm or cold",
                       "Print the compile cache's location and size and, per kernel, whether "
                       "the signatures of the layouts and dtypes asked for are cached; --clear "
                       "removes fastbn's compiled kernels (run it before pip uninstall: pip "
                       "does not know them).")
    p.add_argument("--clear", action="store_true", help="remove fastbn's compiled kernels")
    p = sub.add_parser("bench", help="compare fastbn with PyTorch, NumPy and a parallel copy")
    add_arguments(p)
    p.set_defaults(func=bench)
    p = sub.add_parser(
        "demo", help="train a sigmoid MLP on scikit-learn's digits with and without BatchNorm",
        description="Train the same NumPy MLP (sigmoid, SGD, high learning rate) on scikit-learn's "
                    "digits with and without fastbn.BatchNorm; print the per-epoch table. "
                    "With --small-batch: batches of 4, BatchNorm, ghost BN and BatchRenorm. "
                    'Needs pip install -e ".[demo]".')
    _add_demo_arguments(p)
    p.set_defaults(func=demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for bad arguments)."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
