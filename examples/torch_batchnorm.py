"""``nn.BatchNorm2d`` computed by fastbn, for CPU tensors.

``FastBatchNorm2d`` is an ``nn.BatchNorm2d`` (same parameters, buffers,
``state_dict`` and train/eval semantics) whose forward and backward run
fastbn's kernels on the tensors' own memory (``.numpy()`` and
``torch.from_numpy`` share it: nothing is copied). float32/float64 CPU
tensors only; any other device or dtype takes the stock path. Tested in
tests/test_client_torch.py::

    from torch_batchnorm import FastBatchNorm2d, convert

    bn = FastBatchNorm2d(64)      # as nn.BatchNorm2d(64)
    model = convert(model)        # every nn.BatchNorm2d in a model, in place
"""

import torch
from torch import nn

import fastbn


class BatchNormFunction(torch.autograd.Function):
    """y = batch_norm(x); running statistics updated in place in training."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, training, momentum, eps):
        def array(t):
            return None if t is None else t.detach().numpy()  # a view, not a copy

        ctx.save_for_backward(x)  # only so that autograd flags an in-place change of x
        y, ctx.cache = fastbn.batch_norm_forward(
            array(x), array(weight), array(bias), training=training,
            running_mean=array(running_mean), running_var=array(running_var),
            momentum=momentum, eps=eps)
        return torch.from_numpy(y)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        ctx.saved_tensors  # raises if x was changed in place since forward
        dx, dweight, dbias = fastbn.batch_norm_backward(
            dy.numpy(), ctx.cache, input_grad=ctx.needs_input_grad[0])
        return (None if dx is None else torch.from_numpy(dx),
                torch.from_numpy(dweight) if ctx.needs_input_grad[1] else None,
                torch.from_numpy(dbias) if ctx.needs_input_grad[2] else None,
                None, None, None, None, None)


class FastBatchNorm2d(nn.BatchNorm2d):
    """Drop-in for ``nn.BatchNorm2d``: same arguments, state and results."""

    def forward(self, x):
        if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
            return super().forward(x)
        self._check_input_dim(x)
        # nn.BatchNorm2d's rules: which statistics, and the update factor
        momentum = 0.0 if self.momentum is None else self.momentum
        update = self.training and self.track_running_stats
        if update:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                momentum = 1.0 / float(self.num_batches_tracked)
        training = self.training or self.running_mean is None
        use_stats = update or not training
        return BatchNormFunction.apply(
            x, self.weight, self.bias, self.running_mean if use_stats else None,
            self.running_var if use_stats else None, training, momentum, self.eps)


def convert(module):
    """Make every ``nn.BatchNorm2d`` in ``module`` a ``FastBatchNorm2d``, in
    place: the same objects, parameters and buffers (an optimizer holding
    them is unaffected), only the class changes. Returns ``module``."""
    for m in module.modules():
        if type(m) is nn.BatchNorm2d:
            m.__class__ = FastBatchNorm2d
    return module
