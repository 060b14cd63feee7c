"""The running-statistics update (O(C) work: a serial kernel only)."""

from __future__ import annotations

import numpy as np

from .._jit import serial_kernel


@serial_kernel
def update_running(mean, var, unbias, momentum, running_mean, running_var, tasks):
    """Exponential update of the running statistics, the variance times
    ``unbias`` (``m / (m - 1)`` or 1), only if every batch statistic is
    finite; returns whether they were."""
    for c in range(mean.size):
        if not (np.isfinite(mean[c]) and np.isfinite(var[c])):
            return False
    for c in range(mean.size):
        running_mean[c] = (1.0 - momentum) * running_mean[c] + momentum * mean[c]
        running_var[c] = (1.0 - momentum) * running_var[c] + momentum * var[c] * unbias
    return True
