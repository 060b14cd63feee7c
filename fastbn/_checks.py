"""Argument checks. Each raises before anything is changed, with a message
that names what was expected and what was given."""

from __future__ import annotations

import numbers

import numpy as np

from ._layout import LAYOUTS, channel_axis

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _describe(obj) -> str:
    if isinstance(obj, np.ndarray):
        return f"array of shape {obj.shape} and dtype {obj.dtype}"
    return f"{type(obj).__name__} {obj!r}"[:200]


def tensor(x, name: str = "x") -> np.ndarray:
    """``x`` as an ndarray of dtype float32 or float64."""
    if type(x) is np.ndarray and x.dtype in FLOAT_DTYPES:
        return x
    try:
        arr = np.asarray(x)
    except Exception as exc:
        raise TypeError(f"{name} must be a float32 or float64 array, got {_describe(x)}") from exc
    if arr.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be a float32 or float64 array, got dtype {arr.dtype}"
        )
    return arr


def layout(value) -> str:
    if not isinstance(value, str) or value not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {value!r}")
    return value


def channels(x: np.ndarray, layout_: str, *, allow_empty: bool = False) -> tuple[int, int]:
    """Channel axis and channel count of ``x``; checks rank and (unless
    ``allow_empty``) emptiness."""
    if not (type(layout_) is str and layout_ in LAYOUTS):
        layout(layout_)
    if not 2 <= x.ndim <= 5:
        raise ValueError(
            f"expected an input of rank 2 to 5, got rank {x.ndim} (shape {x.shape})"
        )
    if x.size == 0 and not (allow_empty and x.shape[channel_axis(x.ndim, layout_)] > 0):
        raise ValueError(f"expected a non-empty batch, got shape {x.shape}")
    axis = channel_axis(x.ndim, layout_)
    return axis, x.shape[axis]


def values_per_channel(x: np.ndarray, num_channels: int, training: bool) -> int:
    m = x.size // num_channels
    if training and m < 2:
        raise ValueError(
            "expected more than 1 value per channel when training, "
            f"got input of shape {x.shape} ({m} value per channel)"
        )
    return m


def _is_real(value) -> bool:
    return type(value) is float or type(value) is int or (
        not isinstance(value, bool) and isinstance(value, numbers.Real)
    )


def eps(value) -> float:
    if not _is_real(value):
        raise TypeError(f"eps must be a positive real number, got {_describe(value)}")
    if not value > 0:
        raise ValueError(f"eps must be > 0, got {value!r}")
    return float(value)


def momentum(value, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if not _is_real(value):
        expected = "a real number in [0, 1]" + (" or None" if allow_none else "")
        raise TypeError(f"momentum must be {expected}, got {_describe(value)}")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {value!r}")
    return float(value)


def channel_vector(value, name: str, num_channels: int, *, in_place: bool = False):
    """A per-channel float vector of shape ``(C,)``, or None.

    With ``in_place`` it must be a writable ndarray (it is updated in place).
    """
    if value is None:
        return None
    if (type(value) is np.ndarray and value.shape == (num_channels,) and value.dtype.kind == "f"
            and (value.flags.writeable or not in_place)):
        return value
    if in_place and not isinstance(value, np.ndarray):
        raise TypeError(
            f"{name} must be a NumPy array (it is updated in place), got {_describe(value)}"
        )
    arr = np.asarray(value)
    if arr.dtype.kind != "f":
        raise TypeError(f"{name} must have a float dtype, got dtype {arr.dtype}")
    if arr.shape != (num_channels,):
        raise ValueError(
            f"{name} must have shape ({num_channels},) to match the input's "
            f"{num_channels} channels, got shape {arr.shape}"
        )
    if in_place and not arr.flags.writeable:
        raise ValueError(f"{name} must be writable (it is updated in place), got a read-only array")
    return arr


def out_array(out, x: np.ndarray):
    if out is None:
        return None
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a NumPy array, got {_describe(out)}")
    if out.shape != x.shape or out.dtype != x.dtype:
        raise ValueError(
            f"out must have shape {x.shape} and dtype {x.dtype} like x, "
            f"got shape {out.shape} and dtype {out.dtype}"
        )
    if not out.flags.writeable:
        raise ValueError("out must be writable, got a read-only array")
    if np.may_share_memory(out, x):
        raise ValueError("out must not overlap x (x is kept for the backward pass)")
    return out


def grad_output(dy, x: np.ndarray) -> np.ndarray:
    try:
        arr = np.asarray(dy)
    except Exception as exc:
        raise ValueError(f"dy must be an array like x, got {_describe(dy)}") from exc
    if arr.shape != x.shape or arr.dtype != x.dtype:
        raise ValueError(
            f"dy must have shape {x.shape} and dtype {x.dtype} like the forward "
            f"input, got shape {arr.shape} and dtype {arr.dtype}"
        )
    return arr
