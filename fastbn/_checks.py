"""Argument checks. Each raises before anything is changed, with a message
that names what was expected and what was given."""

from __future__ import annotations

import numbers

import numpy as np

from ._layout import LAYOUTS, channel_axis

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
#: Input dtypes: float16 too, a storage format computed in float32.
X_DTYPES = (np.dtype(np.float16), *FLOAT_DTYPES)

#: Attributes by which an object offers itself as an array of another library.
_ARRAY_PROTOCOLS = ("__array__", "__array_interface__", "__array_struct__", "__dlpack__",
                    "__cuda_array_interface__")


def _type_name(obj) -> str:
    """The qualified name of ``obj``'s type, e.g. ``torch.Tensor``."""
    t = type(obj)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def _foreign(obj) -> bool:
    """Whether ``obj`` is an array of another library (a PyTorch tensor, a
    JAX or CuPy array, a DataFrame...) or a masked array, whose data NumPy
    would convert silently or not at all."""
    if isinstance(obj, np.ndarray):
        return isinstance(obj, np.ma.MaskedArray)
    return not isinstance(obj, np.generic) and any(hasattr(obj, a) for a in _ARRAY_PROTOCOLS)


def describe(obj) -> str:
    """What ``obj`` is, in a few words, never an array's data: the type,
    with the shape and dtype of arrays, the length of containers, or the
    value of anything whose repr is short (a number, a dtype, a name)."""
    if type(obj) is np.ndarray:
        return f"array of shape {obj.shape} and dtype {obj.dtype}"
    if obj is None:
        return "None"
    if isinstance(obj, np.ndarray) or _foreign(obj):
        facts = []
        for attr in ("shape", "dtype"):
            try:
                value = getattr(obj, attr)
                facts.append(f"{attr} {tuple(value) if attr == 'shape' else value}")
            except Exception:  # no such attribute, or one that cannot be read: leave it out
                pass
        return _type_name(obj) + (f" ({', '.join(facts)})" if facts else "")
    if isinstance(obj, (list, tuple, dict, set)):
        return f"{_type_name(obj)} of length {len(obj)}"
    text = repr(obj)
    return f"{_type_name(obj)} {text}" if len(text) <= 60 else _type_name(obj)


def _advice(obj, name: str, in_place: bool) -> str:
    """How to turn the foreign array ``obj`` into what fastbn takes."""
    if isinstance(obj, np.ma.MaskedArray):
        return f"its masked values would count as valid: pass {name}.filled(value)"
    if type(obj).__module__.split(".")[0] == "torch":
        if in_place:
            return "pass tensor.detach().numpy(), a NumPy view of a CPU tensor's memory"
        return "convert it with .detach().cpu().numpy()"
    return "convert it with numpy.asarray()"


def foreign_error(obj, name: str, expected: str, in_place: bool = False) -> TypeError:
    """The TypeError for a foreign array given as ``name``: what was
    expected, the type given (never the data) and the fix."""
    return TypeError(
        f"{name} must be {expected}, got {describe(obj)}; {_advice(obj, name, in_place)}")


def _as_array(value, name: str, expected: str, in_place: bool = False) -> np.ndarray:
    """``value`` as an ndarray (Python sequences are converted); arrays of
    other libraries, and what NumPy cannot convert, are a TypeError."""
    if _foreign(value):
        raise foreign_error(value, name, expected, in_place)
    try:
        return np.asarray(value)
    except Exception:  # e.g. a ragged list: the type says enough, NumPy's error is noise
        raise TypeError(f"{name} must be {expected}, got {describe(value)}, which NumPy "
                        "cannot convert to an array") from None


_X_EXPECTED = "a NumPy ndarray of float16, float32 or float64"


def tensor(x, name: str = "x") -> np.ndarray:
    """``x`` as an ndarray of dtype float16, float32 or float64. Python
    sequences are converted; arrays of other libraries are a TypeError that
    says how to convert them."""
    if type(x) is np.ndarray and x.dtype in FLOAT_DTYPES:
        return x
    arr = _as_array(x, name, _X_EXPECTED)
    if arr.dtype not in X_DTYPES:
        raise TypeError(f"{name} must be {_X_EXPECTED}, got {_given_dtype(x, arr)}")
    return arr


def layout(value) -> str:
    if not isinstance(value, str) or value not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {value!r}")
    return value


def rank(x: np.ndarray, name: str = "x") -> None:
    if not 2 <= x.ndim <= 5:
        raise ValueError(
            f"{name}: expected an input of rank 2 to 5, got rank {x.ndim} (shape {x.shape})"
        )


def channels(x: np.ndarray, layout_: str, *, allow_empty: bool = False) -> tuple[int, int]:
    """Channel axis and channel count of ``x``; checks rank and (unless
    ``allow_empty``) emptiness."""
    if not (type(layout_) is str and layout_ in LAYOUTS):
        layout(layout_)
    rank(x)
    axis = channel_axis(x.ndim, layout_)
    if x.size == 0 and not (allow_empty and x.shape[axis] > 0):
        raise ValueError(f"x: expected a non-empty batch, got shape {x.shape}")
    return axis, x.shape[axis]


def _layout_hint(shape: tuple, layout_: str, num_channels: int, what: str = "array") -> str:
    """A hint when the other layout would put ``num_channels`` channels on
    the channel axis of ``shape``."""
    other = "NHWC" if layout_ == "NCHW" else "NCHW"
    if len(shape) > 2 and shape[channel_axis(len(shape), other)] == num_channels:
        return f"; got an {other}-shaped {what}? pass layout={other!r}"
    return ""


def values_per_channel(x: np.ndarray, num_channels: int, training: bool) -> int:
    m = x.size // num_channels
    if training and m < 2:
        raise ValueError(
            "x: expected more than 1 value per channel when training, "
            f"got input of shape {x.shape} ({m} value per channel)"
        )
    return m


def _is_real(value) -> bool:
    return type(value) is float or type(value) is int or (
        not isinstance(value, bool) and isinstance(value, numbers.Real)
    )


def flag(value, name: str) -> bool:
    """A True/False option (a NumPy bool too)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {describe(value)}")
    return bool(value)


def activation(value) -> bool:
    """An ``activation`` option: None, or "relu" (True)."""
    if value is None or (type(value) is str and value == "relu"):
        return value is not None
    if isinstance(value, str):
        raise ValueError(f"activation must be None or 'relu', got {value!r}")
    raise TypeError(f"activation must be None or 'relu', got {describe(value)}")


def eps(value) -> float:
    if not _is_real(value):
        raise TypeError(f"eps must be a real number >= 0, got {describe(value)}")
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"eps must be a finite number >= 0, got {value!r}")
    return float(value)


def momentum(value, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if not _is_real(value):
        expected = "a real number in [0, 1]" + (" or None" if allow_none else "")
        raise TypeError(f"momentum must be {expected}, got {describe(value)}")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {value!r}")
    return float(value)


def _given_dtype(value, arr: np.ndarray) -> str:
    """The dtype ``value`` was given in, in the caller's terms."""
    if isinstance(value, np.ndarray):
        return f"dtype {arr.dtype}"
    return f"{describe(value)} (dtype {arr.dtype} once converted)"


def channel_vector(value, name: str, num_channels: int, *, in_place: bool = False,
                   x: np.ndarray | None = None, axis: int = 1):
    """A per-channel float vector of shape ``(C,)``, or None. With ``x``, an
    array that broadcasts along its channel axis only is accepted too (seen
    as a ``(C,)`` view, so in-place updates reach it).

    With ``in_place`` it must be a writable ndarray (it is updated in place).
    A shape mismatch names ``x`` and its channel ``axis`` when ``x`` is
    given, else ``num_features`` (a layer's state).
    """
    if value is None:
        return None
    if (type(value) is np.ndarray and value.shape == (num_channels,) and value.dtype.kind == "f"
            and (value.flags.writeable or not in_place)):
        return value
    expected = ("a NumPy array (it is updated in place)" if in_place
                else "a NumPy array or a sequence of floats")
    arr = _as_array(value, name, expected, in_place)
    if in_place and not isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be {expected}, got {describe(value)}")
    if arr.dtype.kind != "f":
        raise TypeError(f"{name} must have a float dtype, got {_given_dtype(value, arr)}")
    if arr.shape != (num_channels,) and _broadcasts_along(arr.shape, num_channels, x, axis):
        arr = arr.reshape(num_channels)  # a view: only one axis is longer than 1
    if arr.shape != (num_channels,):
        broadcast = ""
        if x is not None and arr.ndim > 1:
            example = tuple(num_channels if i == axis else 1 for i in range(x.ndim))
            broadcast = f" or a shape that broadcasts along that axis only, such as {example}"
        raise ValueError(f"{name} must have shape ({num_channels},) "
                         f"{_channel_source(num_channels, x, axis)}{broadcast}, "
                         f"got shape {arr.shape}{_vector_hint(arr, x, axis)}")
    if in_place and not arr.flags.writeable:
        raise ValueError(f"{name} must be writable (it is updated in place), got a read-only array")
    return arr


def shaped_array(value, name: str, shape: tuple, source: str) -> np.ndarray:
    """A float array of exactly ``shape`` (array-like: a layer's state, a
    LayerNorm weight); a mismatch names ``source``, where the shape comes
    from (e.g. ``"num_features=3"``)."""
    arr = _as_array(value, name, "a NumPy array or a sequence of floats")
    if arr.dtype.kind != "f":
        raise TypeError(f"{name} must have a float dtype, got {_given_dtype(value, arr)}")
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape} ({source}), got shape {arr.shape}")
    return arr


def _broadcasts_along(shape: tuple, num_channels: int, x: np.ndarray | None, axis: int) -> bool:
    """Whether an array of ``shape`` broadcasts against x along its channel
    ``axis`` only, e.g. (1, C, 1, 1) or (C, 1, 1) for NCHW, (1, 1, 1, C) for
    NHWC (never without x: a layer's state is (C,))."""
    if x is None or len(shape) > x.ndim:
        return False
    at = axis - (x.ndim - len(shape))  # numpy aligns shapes on the right
    return all(d == (num_channels if i == at else 1) for i, d in enumerate(shape))


def _channel_source(num_channels: int, x: np.ndarray | None, axis: int) -> str:
    if x is None:
        return f"(num_features={num_channels})"
    return f"to match the {num_channels} channels of x (axis {axis} of shape {x.shape})"


def _vector_hint(arr: np.ndarray, x: np.ndarray | None, axis: int) -> str:
    """The layout hint for a vector whose length is the channel count x
    would have in the other layout."""
    if x is None or arr.ndim != 1:
        return ""
    return _layout_hint(x.shape, "NCHW" if axis == 1 else "NHWC", arr.size, "x")


def count(value, name: str) -> int:
    """A non-negative integer given as an int or a one-element integer array."""
    arr = _as_array(value, name, "a non-negative integer")
    if arr.size != 1 or arr.dtype.kind not in "iu" or int(arr.reshape(())) < 0:
        given = (f"{arr.reshape(()).item()!r} (dtype {arr.dtype})" if arr.size == 1
                 else f"{arr.size} values (shape {arr.shape})")
        raise ValueError(f"{name} must be one non-negative integer, got {given}")
    return int(arr.reshape(()))


def out_array(out, x: np.ndarray, receives: str = "y", read: tuple = ()):
    """``out`` checked to receive ``receives`` (x's shape and dtype, writable,
    overlapping neither x nor the ``(name, array)`` pairs of ``read``)."""
    if out is None:
        return None
    if _foreign(out):
        raise foreign_error(out, "out", f"a NumPy array (it receives {receives})", in_place=True)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a NumPy array, got {describe(out)}")
    if out.shape != x.shape or out.dtype != x.dtype:
        raise ValueError(
            f"out must have shape {x.shape} and dtype {x.dtype} like x, "
            f"got shape {out.shape} and dtype {out.dtype}"
        )
    if not out.flags.writeable:
        raise ValueError("out must be writable, got a read-only array")
    for name, other in (("x", x), *read):
        if np.may_share_memory(out, other):
            why = " (x is kept for the backward pass)" if receives == "y" else ""
            raise ValueError(f"out must not overlap {name}{why}, "
                             f"got an array that shares memory with {name}")
    return out


def grad_output(dy, x: np.ndarray) -> np.ndarray:
    if type(dy) is not np.ndarray:
        dy = _as_array(dy, "dy", f"a NumPy array of shape {x.shape} and dtype {x.dtype} "
                                 "like the forward input")
    if dy.shape != x.shape or dy.dtype != x.dtype:
        raise ValueError(
            f"dy must have shape {x.shape} and dtype {x.dtype} like the forward "
            f"input, got shape {dy.shape} and dtype {dy.dtype}"
        )
    return dy
