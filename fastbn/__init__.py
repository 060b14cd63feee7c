"""fastbn: fast, numerically stable Batch Normalization on the CPU.

Functional API: :func:`batch_stats`, :func:`batch_norm_forward`,
:func:`batch_norm_backward`; layers: :class:`BatchNorm` and, over MPI ranks,
:class:`SyncBatchNorm`.
"""

from .functional import BatchNormCache, batch_norm_backward, batch_norm_forward, batch_stats
from .layer import BatchNorm
from .sync import SyncBatchNorm

__version__ = "0.1.0"

__all__ = [
    "BatchNorm",
    "BatchNormCache",
    "SyncBatchNorm",
    "batch_norm_backward",
    "batch_norm_forward",
    "batch_stats",
    "__version__",
]
