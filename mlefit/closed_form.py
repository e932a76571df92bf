"""Closed-form maximum-likelihood estimates: set the gradient of the log-likelihood to zero.

These are the references the fit engine is tested against. All take observations on
the leading axis and return estimates in the model's natural parametrisation.
"""

from __future__ import annotations

import jax.numpy as jnp

__all__ = [
    "gaussian", "bernoulli", "poisson", "exponential", "categorical",
    "multivariate_gaussian", "linear_gaussian",
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


def linear_gaussian(X, y):
    """``(beta, var)`` of ``y ~ N(X beta, sigma^2)``: ordinary least squares, ``var = RSS / N``.

    ``dl/dbeta = X^T (y - X beta) / sigma^2 = 0`` gives the normal equations, solved
    here by least squares (QR/SVD, not by forming ``X^T X``); then
    ``dl/dsigma^2 = 0`` gives ``sigma^2 = RSS / N``.
    """
    X, y = jnp.asarray(X), jnp.asarray(y)
    beta = jnp.linalg.lstsq(X, y)[0]
    r = y - X @ beta
    return beta, jnp.mean(r**2)
