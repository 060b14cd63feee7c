"""The Python side every norm shares with BatchNorm: how arrays reach the
kernels (read-only views, float16 widened, parameters in the input's dtype,
absent ones as empty vectors, the activation's arguments), which kernels a
channels-first pass takes, the checks of per-channel parameters, the update
of running statistics, and where warnings point."""

from __future__ import annotations

import os
import sys

import numpy as np

from . import _checks, _choices
from ._layout import Plan
from .kernels import KERNELS, update_running


def read_only(a: np.ndarray) -> np.ndarray:
    """A read-only view of ``a`` (what the caches hand out, and what the
    kernels read: one compiled variant whatever the caller's flag)."""
    v = a.view()
    v.setflags(write=False)
    return v


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def user_stacklevel() -> int:
    """The ``stacklevel`` at which a warning issued by the caller of this
    function names the first frame outside fastbn (the user's call,
    whether through a layer or the functional API)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    return level


def run_kernel(op: str, plan: Plan, size: int, *args):
    """Kernel ``op`` for the plan's memory order, on ``size`` elements."""
    return KERNELS[op][plan.kind](size, *args)


def channel_per_task(plan: Plan, x: np.ndarray, arrays: int, parts: int = 1) -> bool:
    """Whether a training pass over ``arrays`` arrays of x's shape, its
    samples cut into ``parts`` normalized apart (ghost batches), takes the
    channel-per-task kernels (the choices in force decide; see
    :mod:`fastbn._choices`). Depends on the shape and the machine, never on
    the thread count."""
    if plan.kind != "cf":
        return False
    c = x.shape[plan.axis]
    run = x.itemsize * (x.size // (x.shape[0] * c))
    return _choices.CHOICES.fused(arrays * (x.size // c // parts) * x.itemsize, run, c * parts)


def moments(x: np.ndarray, plan: Plan) -> tuple[np.ndarray, np.ndarray]:
    """float64 per-channel (mean, biased variance) of ``x``."""
    c = x.shape[plan.axis]
    mean = np.empty(c)
    var = np.empty(c)
    run_kernel("stats", plan, x.size, plan.view(x), mean, var)
    return mean, var


#: float16 inputs are widened (compared by identity: cheaper than ==).
HALF = np.dtype(np.float16)

#: Empty vectors stand for an absent weight or bias in kernel calls.
NONE = {np.dtype(np.float32): np.empty(0, np.float32), np.dtype(np.float64): np.empty(0)}

#: The kernels' lower bound on the output: -inf (none), or 0 for a ReLU.
_NO_ACT = {np.dtype(np.float32): np.float32(-np.inf), np.dtype(np.float64): -np.inf}
_RELU = {np.dtype(np.float32): np.float32(0), np.dtype(np.float64): 0.0}


def act_args(gate: np.ndarray | None, dtype) -> tuple:
    """The kernels' ``(lo, gate)`` arguments: a fused ReLU's gate array, or
    None for no activation."""
    if gate is None:
        return _NO_ACT[dtype], NONE[dtype]
    return _RELU[dtype], gate


def kernel_param(v: np.ndarray | None, dtype: np.dtype) -> np.ndarray:
    """weight or bias as the kernels take it: a writable vector of x's
    ``dtype`` (the array itself when it already is; a copy of a read-only
    one), so that each kernel compiles once per input dtype; the
    per-channel coefficients are then computed in float64."""
    if v is None:
        return NONE[dtype]
    v = v.astype(dtype, copy=False)
    return v if v.flags.writeable else v.copy()


def channel_params(x, axis, weight, bias, running_mean, running_var, batch_stats: bool,
                    otherwise: str) -> tuple:
    """weight, bias and running statistics checked as ``(C,)`` views; with
    ``batch_stats`` the running statistics are optional (both or neither)
    and updated in place, else required: ``otherwise`` names the mode that
    normalizes with them."""
    c, vec = x.shape[axis], _checks.channel_vector
    weight = vec(weight, "weight", c, x=x, axis=axis)
    bias = vec(bias, "bias", c, x=x, axis=axis)
    rmean = vec(running_mean, "running_mean", c, in_place=batch_stats, x=x, axis=axis)
    rvar = vec(running_var, "running_var", c, in_place=batch_stats, x=x, axis=axis)
    if (rmean is None) != (rvar is None) or (not batch_stats and rmean is None):
        need = "both or neither" if batch_stats else f"both ({otherwise} normalizes with them)"
        raise ValueError(
            f"running_mean and running_var: expected {need}, got "
            f"running_mean={'None' if rmean is None else 'an array'}, "
            f"running_var={'None' if rvar is None else 'an array'}"
        )
    return weight, bias, rmean, rvar


def update_running_stats(running_mean: np.ndarray, running_var: np.ndarray, mean: np.ndarray,
                    var: np.ndarray, factor: float, momentum: float) -> bool:
    """``r = (1 - momentum) * r + momentum * s`` in place, ``var * factor``
    for the variance, unless the float64 statistics are not finite; returns
    whether they were."""
    rmean, rvar = running_mean, running_var
    native = rmean.dtype in _checks.FLOAT_DTYPES and rvar.dtype in _checks.FLOAT_DTYPES
    if not native:  # e.g. float16: updated in float64, then cast back
        rmean, rvar = rmean.astype(np.float64), rvar.astype(np.float64)
    finite = update_running(0, mean, var, factor, momentum, rmean, rvar)
    if finite and not native:
        running_mean[...] = rmean
        running_var[...] = rvar
    return finite
