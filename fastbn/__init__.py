"""fastbn: fast, numerically stable Batch Normalization on the CPU.

Functional API: :func:`batch_stats`, :func:`batch_norm_forward`,
:func:`batch_norm_backward`; layers: :class:`BatchNorm` and, over MPI ranks,
:class:`SyncBatchNorm`.
"""

from . import _threads

_threads.limit_to_usable_cpus()

from .functional import BatchNormCache, batch_norm_backward, batch_norm_forward, batch_stats
from .layer import BatchNorm
from .sync import SyncBatchNorm
from . import _choices

__version__ = "0.1.0"

_choices.activate()

__all__ = [
    "BatchNorm",
    "BatchNormCache",
    "SyncBatchNorm",
    "batch_norm_backward",
    "batch_norm_forward",
    "batch_stats",
    "__version__",
]
