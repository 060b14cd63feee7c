"""Numba kernels: plain loop nests, no validation; blocks summed in the input
dtype, partial results merged in float64.

Every kernel comes in two shapes of the same data, each with a leading
axis of P parts normalized apart (their statistics and parameters at
``p * C + c``): one for BatchNorm, a chunk of samples each for ghost batch
norm, a sample each for channels-last InstanceNorm and GroupNorm.

* ``_cf`` (channels first in memory): a ``(P, A, C, B)`` view whose last
  axis runs through one channel. NCHW data is ``(1, N, C, H*W)``.
* ``_cl`` (channels last in memory): a ``(P, R, C)`` view whose rows hold
  one value per channel. NHWC data is ``(1, N*H*W, C)``; so is rank-2 input.

The gradient kernels also take a gate for a fused ReLU (:mod:`.grad_sums`).

Work is split into tasks whose boundaries depend only on the shape, never on
the thread count, and partial results are merged in a fixed order: results
are bit-identical whatever the number of threads, serial or parallel.

Statistics are exact in the way a two-pass algorithm is: each block of at
most ``BLOCK`` values (cache-resident) is summed twice, first for its mean,
then for the deviations from it and their squares. Block sums run in the
input's dtype, so float32 data vectorises at full SIMD width; a block is
small, so they stay exact to a few ulps. Blocks, tasks and channels are then
combined in float64 with Chan et al.'s pairwise update on (count, mean, M2).

Element-wise kernels compute ``(x - center) * scale + shift`` with the
center kept apart from the shift: ``x - center`` is exact when the mean
dwarfs the spread, so float32 arithmetic keeps the accuracy of the float64
statistics (the center's rounding error is folded into the shift).

Modules: :mod:`._tasks` (task sizes and splitting), :mod:`._moments`
(exact statistics of a task), :mod:`.stats`, :mod:`.grad_sums`,
:mod:`.maps` (element-wise), :mod:`.fused` (channel per task),
:mod:`.samples` (sample per task, channels last), :mod:`.rows` and
:mod:`.short_rows` (LayerNorm) and :mod:`.running`.
"""

from __future__ import annotations

from ._tasks import (BLOCK, CHUNK, CL_BLOCK, CL_CHUNK, COLUMNS, MAX_CHUNKS, PILOT, PILOT_ROWS,
                     ROWS, RUN_BYTES, WALK_BYTES)
from .fused import backward_cf, forward_cf
from .grad_sums import grad_sums_cf, grad_sums_cl, grad_sums_walk
from .maps import affine_cf, affine_cl, grad_input_cf, grad_input_cl
from .rows import rows_backward, rows_forward
from .running import update_running
from .samples import backward_cl, forward_cl, merge_groups
from .stats import stats_cf, stats_cl, stats_walk

__all__ = [
    "BLOCK", "CHUNK", "CL_BLOCK", "CL_CHUNK", "COLUMNS", "MAX_CHUNKS", "PILOT", "PILOT_ROWS",
    "ROWS", "RUN_BYTES", "WALK_BYTES", "KERNELS", "dispatchers",
    "stats_cf", "stats_walk", "stats_cl", "grad_sums_cf", "grad_sums_walk", "grad_sums_cl",
    "affine_cf", "affine_cl", "grad_input_cf", "grad_input_cl", "forward_cf", "backward_cf",
    "update_running", "rows_forward", "rows_backward", "forward_cl", "backward_cl", "merge_groups",
]

#: Kernels by step and memory order: "cf", "walk" (channels first with runs
#: shorter than RUN_BYTES: only the reductions differ) and "cl".
KERNELS = {
    "stats": {"cf": stats_cf, "walk": stats_walk, "cl": stats_cl},
    "grad_sums": {"cf": grad_sums_cf, "walk": grad_sums_walk, "cl": grad_sums_cl},
    "affine": {"cf": affine_cf, "walk": affine_cf, "cl": affine_cl},
    "grad_input": {"cf": grad_input_cf, "walk": grad_input_cf, "cl": grad_input_cl},
    "fused_forward": {"cf": forward_cf, "cl": forward_cl},
    "fused_backward": {"cf": backward_cf, "cl": backward_cl},
    "update_running": {"any": update_running},
    "merge_groups": {"any": merge_groups},
    "rows_forward": {"any": rows_forward},
    "rows_backward": {"any": rows_backward},
}


def dispatchers() -> list:
    """Every Numba dispatcher of the package (for cache and compile checks)."""
    every = {id(k): k for group in KERNELS.values() for k in group.values()}
    return [d for k in every.values() for d in k.dispatchers()]
