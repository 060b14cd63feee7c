"""Slow, obvious float64 reference for Batch Renormalization (Ioffe, 2017,
Algorithm 1), independent of fastbn: the paper's equations written out on
a ``(C, m)`` view of the batch.

    mu_B = mean(x),  sigma_B = sqrt(mean((x - mu_B)^2) + eps)
    r = clip(sigma_B / sigma, 1/rmax, rmax)      sigma = sqrt(running_var + eps)
    d = clip((mu_B - mu) / sigma, -dmax, dmax)   mu = running_mean
    xhat = (x - mu_B) / sigma_B * r + d
    y = gamma * xhat + beta

r and d are ``stop_gradient``: the gradient is taken with them fixed.
"""

from __future__ import annotations

import numpy as np

from reference import from_cm, to_cm


def _vec(v, C, default):
    return np.full(C, float(default)) if v is None else np.asarray(v, np.float64).reshape(C)


def batch_moments(x, layout):
    """Per-channel mean and biased variance, two passes."""
    xc = to_cm(x, layout)
    mu = xc.mean(axis=1)
    return mu, ((xc - mu[:, None]) ** 2).mean(axis=1)


def r_and_d(x, running_mean, running_var, eps, rmax, dmax, layout):
    """The paper's r and d for the batch x (float64, shape (C,))."""
    mu, var = batch_moments(x, layout)
    sigma_b = np.sqrt(var + eps)
    sigma = np.sqrt(np.asarray(running_var, np.float64) + eps)
    r = np.clip(sigma_b / sigma, 1.0 / rmax, rmax)
    d = np.clip((mu - np.asarray(running_mean, np.float64)) / sigma, -dmax, dmax)
    return r, d


def forward_frozen(x, gamma, beta, r, d, eps, layout):
    """y for given (frozen) r and d; the batch statistics come from x."""
    xc = to_cm(x, layout)
    C = xc.shape[0]
    mu, var = batch_moments(x, layout)
    xhat = (xc - mu[:, None]) / np.sqrt(var + eps)[:, None] * r[:, None] + d[:, None]
    y = _vec(gamma, C, 1.0)[:, None] * xhat + _vec(beta, C, 0.0)[:, None]
    return from_cm(y, np.shape(x), layout)


def forward(x, gamma, beta, running_mean, running_var, eps, rmax, dmax, momentum, layout):
    """Training step: (y, r, d, new running mean, new running var)."""
    r, d = r_and_d(x, running_mean, running_var, eps, rmax, dmax, layout)
    y = forward_frozen(x, gamma, beta, r, d, eps, layout)
    mu, var = batch_moments(x, layout)
    m = to_cm(x, layout).shape[1]
    new_mean = (1 - momentum) * np.asarray(running_mean, np.float64) + momentum * mu
    new_var = (1 - momentum) * np.asarray(running_var, np.float64) + momentum * var * m / (m - 1)
    return y, r, d, new_mean, new_var


def backward(dy, x, gamma, r, d, eps, layout):
    """Gradients of sum(dy * y) with r and d fixed (the paper's Algorithm 1
    backward): (dx, dgamma, dbeta)."""
    xc, g = to_cm(x, layout), to_cm(dy, layout)
    C, m = xc.shape
    mu, var = batch_moments(x, layout)
    sigma_b = np.sqrt(var + eps)[:, None]
    xn = (xc - mu[:, None]) / sigma_b  # (x - mu_B) / sigma_B
    gamma = _vec(gamma, C, 1.0)[:, None]
    dxhat = g * gamma
    dxn = dxhat * r[:, None]
    dsigma = -np.sum(dxn * (xc - mu[:, None]), axis=1, keepdims=True) / sigma_b ** 2
    dmu = -np.sum(dxn, axis=1, keepdims=True) / sigma_b
    # sigma_B = sqrt(mean((x - mu)^2) + eps): d sigma_B / dx_i = (x_i - mu) / (m sigma_B)
    dx = dxn / sigma_b + dsigma * (xc - mu[:, None]) / (m * sigma_b) + dmu / m
    dgamma = np.sum(g * (xn * r[:, None] + d[:, None]), axis=1)
    return from_cm(dx, np.shape(x), layout), dgamma, g.sum(axis=1)
