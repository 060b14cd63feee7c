"""fastbn: fast, numerically stable Batch Normalization on the CPU.

Functional API: :func:`batch_stats`, :func:`batch_norm_forward`,
:func:`batch_norm_backward`; layer: :class:`BatchNorm`.
"""

from .functional import BatchNormCache, batch_norm_backward, batch_norm_forward, batch_stats
from .layer import BatchNorm

__version__ = "0.1.0"

__all__ = [
    "BatchNorm",
    "BatchNormCache",
    "batch_norm_backward",
    "batch_norm_forward",
    "batch_stats",
    "__version__",
]
