"""fastbn: fast, numerically stable Batch Normalization on the CPU.

Functional API: :func:`batch_stats`, :func:`batch_norm_forward`,
:func:`batch_norm_backward`; layers: :class:`BatchNorm` and, over MPI ranks,
:class:`SyncBatchNorm`. The rest of the family on the same kernels:
:func:`layer_norm_forward`, :func:`group_norm_forward`,
:func:`instance_norm_forward` and their backward passes; layers
:class:`LayerNorm`, :class:`GroupNorm`, :class:`InstanceNorm`.
"""

from . import _threads

_threads.limit_to_usable_cpus()

from .functional import BatchNormCache, batch_norm_backward, batch_norm_forward, batch_stats
from .family import (NormCache, group_norm_backward, group_norm_forward, instance_norm_backward,
                     instance_norm_forward, layer_norm_backward, layer_norm_forward)
from .family_layers import GroupNorm, InstanceNorm, LayerNorm
from .folding import fold_batch_norm
from .layer import BatchNorm
from .renorm import BatchRenorm, BatchRenormCache, batch_renorm_backward, batch_renorm_forward
from .sync import SyncBatchNorm
from . import _choices

__version__ = "0.1.0"

_choices.activate()

__all__ = [
    "BatchNorm",
    "GroupNorm",
    "InstanceNorm",
    "LayerNorm",
    "BatchNormCache",
    "BatchRenorm",
    "BatchRenormCache",
    "batch_renorm_backward",
    "batch_renorm_forward",
    "SyncBatchNorm",
    "batch_norm_backward",
    "batch_norm_forward",
    "batch_stats",
    "fold_batch_norm",
    "NormCache",
    "group_norm_backward",
    "group_norm_forward",
    "instance_norm_backward",
    "instance_norm_forward",
    "layer_norm_backward",
    "layer_norm_forward",
    "__version__",
]
