"""MyGrad's ``batchnorm`` computed by fastbn: a MyGrad ``Operation``.

A drop-in for ``mygrad.nnet.layers.batchnorm`` (channel axis 1, rank >= 2,
float16/32/64 data), tested against it in tests/test_client_mygrad.py::

    import mygrad as mg
    from mygrad_batchnorm import batchnorm

    x = mg.tensor(np.random.rand(8, 3, 4, 4))
    gamma, beta = mg.ones(3), mg.zeros(3)
    batchnorm(x, gamma=gamma, beta=beta, eps=1e-5).sum().backward()
    x.grad, gamma.grad, beta.grad
"""

import numpy as np
from mygrad import Tensor
from mygrad.operation_base import Operation

import fastbn


class FastBatchNorm(Operation):
    """``(x - mean) / sqrt(var + eps) * gamma + beta``, per channel (axis 1)."""

    def __call__(self, x, gamma, beta, *, eps):
        self.variables = (x, gamma, beta)
        # MyGrad's tensors are read-only arrays: fastbn reads them in place.
        # An absent gamma or beta arrives as an empty (constant) tensor.
        y, self.cache = fastbn.batch_norm_forward(
            x.data, gamma.data if gamma.size else None, beta.data if beta.size else None,
            eps=eps)
        self.mean, self.var = self.cache.mean, self.cache.var  # as MyGrad's op exposes
        return y

    def backward(self, grad, **kwargs):
        # One fastbn call for all three gradients, before MyGrad asks for
        # them one by one; dx only when x needs a gradient.
        x = self.variables[0]
        self.grads = fastbn.batch_norm_backward(grad, self.cache, input_grad=not x.constant)
        super().backward(grad, **kwargs)
        self.grads = None

    def backward_var(self, grad, index, **kwargs):
        # dgamma, dbeta come as (C,): give them the parameter's own shape.
        return self.grads[index].reshape(self.variables[index].shape)


def batchnorm(x, *, gamma=None, beta=None, eps, constant=None):
    """Same signature and results as ``mygrad.nnet.layers.batchnorm``."""
    none = np.array([])
    return Tensor._op(FastBatchNorm, x, none if gamma is None else gamma,
                      none if beta is None else beta, op_kwargs={"eps": eps}, constant=constant)
