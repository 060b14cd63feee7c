"""``fold_batch_norm``: an eval-mode BatchNorm folded into the preceding layer."""

from __future__ import annotations

import numbers

import numpy as np

from .layer import BatchNorm

__all__ = ["fold_batch_norm"]


def fold_batch_norm(weight, bias, bn, *, out_axis: int = 0, groups: int = 1):
    """Fold an eval-mode :class:`BatchNorm` into the linear or convolution
    layer before it, so that ``layer(x; w2, b2) == bn.eval()(layer(x; weight, bias))``.

    With ``s = bn.weight / sqrt(bn.running_var + bn.eps)`` per output
    channel::

        W' = W * s        (along the output-channel axis)
        b' = (b - bn.running_mean) * s + bn.bias

    ``bn.weight``/``bn.bias`` are ones/zeros when ``affine=False``. The
    running statistics are used whatever the layer's mode.

    Parameters
    ----------
    weight : ndarray of floats
        The layer's weight, output channels along ``out_axis``.
    bias : ndarray, shape (C,), or None
        The layer's bias; None for zeros.
    bn : BatchNorm
        With running statistics; C is ``bn.num_features``.
        :class:`SyncBatchNorm` too.
    out_axis : int
        Axis of ``weight`` over output channels: 0 for PyTorch Linear
        (out, in) and Conv (O, I/g, kH, kW); -1 for (in, out) matrices and
        HWIO kernels; 1 for PyTorch ConvTranspose (I, O/g, kH, kW).
    groups : int
        > 1 when ``out_axis`` holds only ``C // groups`` entries (grouped
        transposed convolution): axis 0 is ``groups`` consecutive blocks,
        and block g's entry j is output channel ``g * (C // groups) + j``.

    Returns
    -------
    w2 : ndarray, shape and dtype of ``weight``
    b2 : ndarray, shape (C,), dtype of ``weight``
        New arrays, computed in float64; the inputs are not changed.

    Raises
    ------
    TypeError
        ``bn`` is not a BatchNorm; ``weight`` is not floating point;
        ``bias`` is not numeric; ``out_axis``/``groups`` not ints.
    ValueError
        ``bn`` has no running statistics; shapes that do not match C;
        ``out_axis`` out of range; ``groups`` < 1 or not dividing C and
        axis 0, or ``groups`` > 1 with ``out_axis`` 0.

    Examples
    --------
    >>> bn = BatchNorm(4).eval()
    >>> w, b = np.ones((4, 3)), np.zeros(4)         # PyTorch Linear(3, 4)
    >>> w2, b2 = fold_batch_norm(w, b, bn)           # x @ w2.T + b2
    >>> w2, b2 = fold_batch_norm(w.T, b, bn, out_axis=-1)  # (in, out): x @ w2 + b2
    """
    if not isinstance(bn, BatchNorm):
        raise TypeError(f"bn must be a fastbn.BatchNorm (or SyncBatchNorm), "
                        f"got {type(bn).__module__}.{type(bn).__qualname__}")
    C = bn.num_features
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("bn has no running statistics (track_running_stats=False): its eval "
                         "mode normalizes with batch statistics, which cannot be folded")
    w = np.asarray(weight)
    if not np.issubdtype(w.dtype, np.floating):
        raise TypeError(f"weight must be a floating-point array, got dtype {w.dtype}")
    if w.ndim < 1:
        raise ValueError(f"weight must have at least 1 dimension, got shape {w.shape}")
    for value, name in ((out_axis, "out_axis"), (groups, "groups")):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an int, got {value!r}")
    if not -w.ndim <= out_axis < w.ndim:
        raise ValueError(f"out_axis must be in [{-w.ndim}, {w.ndim - 1}] for weight of "
                         f"shape {w.shape}, got {out_axis}")
    axis = int(out_axis) % w.ndim
    groups = int(groups)
    if groups < 1 or C % groups:
        raise ValueError(f"groups must be an int >= 1 dividing C={C}, got {groups}")
    if groups > 1 and axis == 0:
        raise ValueError(f"groups > 1 splits axis 0 of weight into blocks, so out_axis must "
                         f"be another axis; got out_axis={out_axis}, groups={groups}")
    if w.shape[axis] * groups != C:
        want = f"C={C}" if groups == 1 else f"C // groups = {C} // {groups} = {C // groups}"
        raise ValueError(f"weight of shape {w.shape} has {w.shape[axis]} entries along "
                         f"out_axis={out_axis}; expected {want}")
    if w.shape[0] % groups:
        raise ValueError(f"groups={groups} must divide weight's axis 0, got shape {w.shape}")
    if bias is None:
        b = np.zeros(C)
    else:
        b = np.asarray(bias)
        if not (np.issubdtype(b.dtype, np.floating) or np.issubdtype(b.dtype, np.integer)):
            raise TypeError(f"bias must be a numeric array or None, got dtype {b.dtype}")
        if b.shape != (C,):
            raise ValueError(f"bias must have shape ({C},) (C={C}) or be None, got {b.shape}")
    stats = {}
    for name in ("running_mean", "running_var", "weight", "bias"):
        value = getattr(bn, name)
        if value is not None:
            value = np.asarray(value, dtype=np.float64)
            if value.size != C:
                raise ValueError(f"bn.{name} has shape {value.shape}; expected {C} values "
                                 f"(bn.num_features)")
            value = value.reshape(C)
        stats[name] = value

    gamma = np.ones(C) if stats["weight"] is None else stats["weight"]
    beta = np.zeros(C) if stats["bias"] is None else stats["bias"]
    scale = gamma / np.sqrt(stats["running_var"] + float(bn.eps))
    b2 = (b.astype(np.float64) - stats["running_mean"]) * scale + beta

    # Axis 0 as (groups, rows per group); scale as (groups, C // groups)
    # placed on the block axis and on out_axis (shifted by the new axis).
    blocks = w.astype(np.float64).reshape((groups, w.shape[0] // groups) + w.shape[1:])
    scale_shape = [1] * blocks.ndim
    scale_shape[0], scale_shape[axis + 1] = groups, C // groups
    w2 = (blocks * scale.reshape(scale_shape)).reshape(w.shape)
    return w2.astype(w.dtype), b2.astype(w.dtype)
