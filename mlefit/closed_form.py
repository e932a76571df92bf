"""Closed-form maximum-likelihood estimates: set the gradient of the log-likelihood to zero.

These are the references the fit engine is tested against. All take observations on
the leading axis and return estimates in the model's natural parametrisation.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

__all__ = [
    "gaussian", "bernoulli", "poisson", "exponential", "categorical",
    "multivariate_gaussian", "linear_gaussian", "least_squares",
]


def gaussian(x):
    """``(mean, var)`` of N(mu, sigma^2): ``mu = (1/N) sum x_n``, ``var = (1/N) sum (x_n - mu)^2``.

    From ``dl/dmu = sum (x_n - mu) / sigma^2 = 0`` and
    ``dl/dsigma^2 = -N / (2 sigma^2) + sum (x_n - mu)^2 / (2 sigma^4) = 0``. The variance is
    the biased (1/N) one.
    """
    x = jnp.asarray(x)
    mean = jnp.mean(x)
    return mean, jnp.mean((x - mean) ** 2)


def bernoulli(y):
    """``p = (1/N) sum y_n``, from ``dl/dp = sum y_n / p - sum (1 - y_n) / (1 - p) = 0``."""
    return jnp.mean(jnp.asarray(y, dtype=jnp.result_type(float)))


def poisson(k):
    """``lambda = (1/N) sum k_n``, from ``dl/dlambda = sum k_n / lambda - N = 0``."""
    return jnp.mean(jnp.asarray(k, dtype=jnp.result_type(float)))


def exponential(x):
    """Rate ``lambda = N / sum x_n`` (= 1 / mean), from ``dl/dlambda = N/lambda - sum x_n = 0``."""
    return 1.0 / jnp.mean(jnp.asarray(x))


def categorical(labels, num_classes: int):
    """Class frequencies ``p_k = N_k / N``, from the Lagrangian of ``sum_k N_k log p_k``
    with ``sum_k p_k = 1``."""
    labels = jnp.asarray(labels)
    counts = jnp.zeros(num_classes, jnp.result_type(float)).at[labels].add(1.0)
    return counts / labels.shape[0]


def multivariate_gaussian(x):
    """``(mean, cov)``: ``mu = (1/N) sum x_n``, ``Sigma = (1/N) sum (x_n - mu)(x_n - mu)^T``
    (biased), from setting the gradients in mu and Sigma^-1 to zero."""
    x = jnp.asarray(x)
    mean = jnp.mean(x, axis=0)
    r = x - mean
    return mean, r.T @ r / x.shape[0]


def least_squares(X, y):
    """``beta`` minimising ``||y - X beta||^2``, for NumPy or JAX arrays (``y`` of shape
    ``(n,)``, or ``(n, k)`` for k responses at once).

    The columns of ``X`` are scaled to unit norm first, ``beta = D^-1 argmin ||y - X D^-1
    b||``, ``D = diag(||X_j||)``, then solved by SVD least squares: raw polynomial terms
    have columns of very different sizes, and the scaling removes that part of the
    condition number (NIST's Filip, a degree-10 polynomial: 1.8e15 -> 5.2e9, so 7.4 correct
    digits instead of none, where an unscaled SVD drops the small singular values).
    """
    xp = np if isinstance(X, np.ndarray) and isinstance(y, np.ndarray) else jnp
    big = xp.max(xp.abs(X), axis=0)  # scaled first: squares of entries above 1e154 overflow
    big = xp.where(big > 0, big, 1.0)
    norm = big * xp.sqrt(xp.sum((X / big) ** 2, axis=0))
    beta = xp.linalg.lstsq(X / norm, y, rcond=None)[0]
    return beta / (norm[:, None] if beta.ndim == 2 else norm)


def linear_gaussian(X, y):
    """``(beta, var)`` of ``y ~ N(X beta, sigma^2)``: ordinary least squares, ``var = RSS / N``.

    ``dl/dbeta = X^T (y - X beta) / sigma^2 = 0`` gives the normal equations, solved
    here by :func:`least_squares` (column-scaled SVD, not by forming ``X^T X``); then
    ``dl/dsigma^2 = 0`` gives ``sigma^2 = RSS / N``.
    """
    X, y = jnp.asarray(X), jnp.asarray(y)
    beta = least_squares(X, y)
    r = y - X @ beta
    return beta, jnp.mean(r**2)
