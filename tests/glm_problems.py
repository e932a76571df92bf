"""Small regression problems shared by test_robust, test_weights and test_predict.

Each is fitted once per process (``functools.cache``), so the three files share the
compiled fits and, through the per-result cache, the covariances they compute.
"""

from __future__ import annotations

import functools

import numpy as np

import mlefit
from mlefit import models

SM_ORDER = ["intercept", "coef[0]", "coef[1]"]  # statsmodels' [const, x1, x2]
N_CLUSTERS = 17


def cov_err(a, b) -> float:
    """``max|a - b| / max|b|``: relative to the largest entry (a near-zero covariance
    carries the absolute error of the estimates, not a relative one)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def in_sm_order(res, cov):
    """The (intercept, coef) block of ``cov`` in statsmodels' column order."""
    idx = [res.param_names.index(name) for name in SM_ORDER]
    return np.asarray(cov)[np.ix_(idx, idx)]


def coefs(res) -> np.ndarray:
    """``[intercept, coef...]``, statsmodels' order."""
    return np.concatenate([[float(res.params["intercept"])], np.asarray(res.params["coef"])])


def _groups(n: int, rng) -> np.ndarray:
    """Cluster labels of unequal sizes (strings, to test non-integer labels)."""
    return np.array([f"g{k}" for k in rng.integers(0, N_CLUSTERS, n)])


@functools.cache
def poisson():
    """``(X, y, groups, freq, var)`` (n = 90) and the unweighted PoissonRegression fit."""
    rng = np.random.default_rng(11)
    n = 90
    X = rng.normal(size=(n, 2))
    y = rng.poisson(np.exp(0.3 + X @ np.array([0.5, -0.3])))
    groups = _groups(n, rng)
    freq = rng.integers(1, 5, n)
    var = rng.uniform(0.2, 3.0, n)
    var[:4] = 0.0
    var = var * np.count_nonzero(var) / var.sum()  # sums to m, the positive weights
    return (X, y, groups, freq, var), mlefit.fit(models.PoissonRegression(), (X, y))


@functools.cache
def poisson_weighted(weights_kind: str):
    """The PoissonRegression fit of :func:`poisson` with its ``freq`` or ``var`` weights."""
    (X, y, _, freq, var), _ = poisson()
    w = freq if weights_kind == "frequency" else var
    return mlefit.fit(models.PoissonRegression(), (X, y), weights=w, weights_kind=weights_kind)


@functools.cache
def logistic():
    """``(X, y, groups)`` (n = 140) and the Logistic fit."""
    rng = np.random.default_rng(12)
    n = 140
    X = rng.normal(size=(n, 2))
    y = rng.binomial(1, 1.0 / (1.0 + np.exp(-(0.2 + X @ np.array([1.0, -0.7])))))
    return (X, y, _groups(n, rng)), mlefit.fit(models.Logistic(), (X, y))


@functools.cache
def linear():
    """``(X, y, groups, var)`` (n = 70, heteroskedastic) and the LinearGaussian fit."""
    rng = np.random.default_rng(13)
    n = 70
    X = rng.normal(size=(n, 2))
    var = rng.uniform(0.3, 3.0, n)
    y = 1.0 + X @ np.array([2.0, -1.0]) + rng.normal(size=n) * (0.5 + np.abs(X[:, 0]))
    return (X, y, _groups(n, rng), var), mlefit.fit(models.LinearGaussian(), (X, y))


@functools.cache
def linear_weighted(weights_kind: str):
    """The LinearGaussian fit of :func:`linear` with variance weights ``var`` or frequency
    weights ``round(2 var) + 1``."""
    (X, y, _, var), _ = linear()
    w = var if weights_kind == "variance" else np.round(2 * var) + 1
    return mlefit.fit(models.LinearGaussian(), (X, y), weights=w, weights_kind=weights_kind)


def normal_sample() -> np.ndarray:
    """Five draws from N(1, 2^2)."""
    return np.random.default_rng(23).normal(1.0, 2.0, 5)
