"""Unconditional discrete models: binary outcomes, class labels and counts.

Probabilities are parametrised by logits, so every parameter value is valid and the
log-probabilities come from the stable ``softplus`` / ``log_softmax`` (jax.nn, optax).
A class or outcome that never occurs has its MLE at the boundary (probability 0): the
fit then stops where the gradient falls below ``tol`` (a probability of about ``tol``).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.stats as jstats
import numpy as np
import optax

from .._constraints import Interval, Positive
from .._model import AbstractModel
from ._base import (
    array_namespace,
    as_float,
    check_binary,
    check_integers,
    check_labels,
    data_driven_start,
    sample_shape,
)

__all__ = ["Bernoulli", "Categorical", "Poisson", "NegativeBinomial"]


def clipped_mean(xp, a):
    """The sample mean kept half an observation away from 0 and 1 (a finite start)."""
    n = a.shape[0]
    return xp.clip(a.mean(), 0.5 / n, 1.0 - 0.5 / n)


def class_frequencies(xp, y, num_classes: int):
    """Relative class frequencies, each at least half an observation (a finite start)."""
    n = y.shape[0]
    y = y.astype(int)
    counts = (
        np.bincount(y, minlength=num_classes) if xp is np else jnp.bincount(y, length=num_classes)
    )
    return xp.maximum(counts / n, 0.5 / n)


def bernoulli_log_prob(logit, y):
    """``y log sigmoid(logit) + (1 - y) log sigmoid(-logit) = y logit - softplus(logit)``.

    The canonical exponential-family form (natural parameter ``logit``, log-partition
    ``softplus(logit) = log(1 + e^logit)``, ``jax.nn.softplus``): stable for any logit,
    the same value for ``y`` in {0, 1} and for proportions in [0, 1], and one
    ``softplus`` per observation where the two ``log_sigmoid`` of the binary
    cross-entropy evaluate two (a full pass of a large logistic fit costs about half
    as much elementwise work). A confident correct prediction (``y = 1``, ``logit =
    40``) gives ``0`` where the exact value is ``-4e-18``: an absolute error of
    rounding in ``logit``, as in any sum of log-likelihoods.
    """
    logit = jnp.asarray(logit)
    if not jnp.issubdtype(logit.dtype, jnp.inexact):
        logit = logit.astype(jnp.result_type(float))
    return y * logit - jax.nn.softplus(logit)


def categorical_log_prob(logits, label):
    """``log_softmax(logits)[label]`` for one integer label."""
    logits = jnp.asarray(logits)
    if not jnp.issubdtype(logits.dtype, jnp.inexact):
        logits = logits.astype(jnp.result_type(float))
    return -optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(label, jnp.int32))


def with_reference(logits) -> jax.Array:
    """Prepends the reference logit 0 along the last axis: ``(..., K - 1) -> (..., K)``."""
    logits = jnp.asarray(logits)
    zero = jnp.zeros((*logits.shape[:-1], 1), logits.dtype)
    return jnp.concatenate([zero, logits], axis=-1)


class Bernoulli(AbstractModel):
    """Bernoulli distribution of ``y`` in {0, 1}; params ``{"logit": real}``.

    ``p = sigmoid(logit)``; ``log p(y) = y log sigmoid(logit) + (1 - y) log sigmoid(-logit)
    = y logit - softplus(logit)``. Start: the closed-form MLE
    ``logit = log(m / (1 - m))``, ``m = mean(y)`` (kept inside ``[1/(2n), 1 - 1/(2n)]``).
    :meth:`prob` gives ``p``.
    """

    @staticmethod
    def prob(params) -> jax.Array:
        """``p = P(y = 1) = sigmoid(logit)``."""
        return jax.nn.sigmoid(params["logit"])

    def log_prob(self, params, y):
        return bernoulli_log_prob(params["logit"], y)

    label_data = 0  # labels: fit_many checks each data set for unobserved classes

    def check_data(self, y) -> None:
        check_binary(self.name, y, arg="data")

    @data_driven_start
    def init(self, y):
        xp = array_namespace(y)
        m = clipped_mean(xp, as_float(xp, y))
        return {"logit": xp.log(m) - xp.log1p(-m)}

    def sample(self, key, params, n):
        """``n`` draws in {0, 1} (integers)."""
        return jax.random.bernoulli(key, self.prob(params), sample_shape(n)).astype(int)


class Categorical(AbstractModel):
    """Categorical distribution of integer labels ``0 .. num_classes - 1``.

    Params ``{"logits": (num_classes - 1,) real}``: the log-odds of classes ``1..K-1``
    against class 0, ``logits[k - 1] = log(p_k / p_0)`` (class 0 is the reference, so the
    MLE is unique). ``log p(y) = log_softmax([0, logits])[y]``. Start: the closed-form MLE,
    the class frequencies (each kept at least ``1/(2n)``). :meth:`probs` and
    :meth:`full_logits` give the ``K`` probabilities and logits.

    Args:
        num_classes: ``K >= 2`` (static).
    """

    num_classes: int = eqx.field(static=True)

    def __check_init__(self):
        if not (isinstance(self.num_classes, (int, np.integer)) and self.num_classes >= 2):
            raise ValueError(
                f"Categorical: num_classes must be an int >= 2, got {self.num_classes!r}"
            )

    @staticmethod
    def full_logits(params) -> jax.Array:
        """The ``K`` logits ``[0, logits]``."""
        return with_reference(params["logits"])

    @classmethod
    def probs(cls, params) -> jax.Array:
        """``p = softmax([0, logits])``."""
        return jax.nn.softmax(cls.full_logits(params), axis=-1)

    def log_prob(self, params, y):
        return categorical_log_prob(self.full_logits(params), y)

    label_data = 0  # labels: fit_many checks each data set for unobserved classes

    def check_data(self, y) -> None:
        check_labels(self.name, y, self.num_classes, arg="data")

    @data_driven_start
    def init(self, y):
        xp = array_namespace(y)
        f = class_frequencies(xp, xp.asarray(y), self.num_classes)
        return {"logits": xp.log(f[1:]) - xp.log(f[0])}

    def sample(self, key, params, n):
        """``n`` integer labels."""
        return jax.random.categorical(key, self.full_logits(params), shape=sample_shape(n))


class Poisson(AbstractModel):
    """Poisson distribution of counts ``k = 0, 1, 2, ...``; params ``{"rate": > 0}``.

    ``log p(k) = k log(rate) - rate - lgamma(k + 1)``; ``scipy.stats.poisson(mu=rate)``.
    Start: the closed-form MLE ``rate = mean(k)`` (at least ``1/(2n)``).
    """

    def log_prob(self, params, k):
        return jstats.poisson.logpmf(k, params["rate"])

    def check_data(self, k) -> None:
        check_integers(self.name, k)

    @data_driven_start
    def init(self, k):
        xp = array_namespace(k)
        a = as_float(xp, k)
        return {"rate": Positive(xp.maximum(a.mean(), 0.5 / a.shape[0]))}

    def sample(self, key, params, n):
        """``n`` counts."""
        return jax.random.poisson(key, params["rate"], sample_shape(n))


class NegativeBinomial(AbstractModel):
    """Negative binomial distribution of counts; params ``{"n": > 0, "p": in (0, 1)}``.

    ``log p(k) = lgamma(k + n) - lgamma(n) - lgamma(k + 1) + n log p + k log(1 - p)``;
    ``scipy.stats.nbinom(n, p)`` (``n`` need not be an integer), mean ``n (1 - p) / p``,
    variance ``mean / p``. In the NB2 form of regression packages: ``mu = n (1 - p) / p``,
    ``alpha = 1 / n``. Start: the method of moments ``p = m / v``, ``n = m^2 / (v - m)``;
    for data with ``v <= m`` (no overdispersion) the MLE is the Poisson limit ``n -> inf``:
    the fit starts from ``n = 100 m`` and stops at a very large ``n`` (``p`` near 1) where
    the gradient falls below ``tol``.
    """

    def log_prob(self, params, k):
        return jstats.nbinom.logpmf(k, params["n"], params["p"])

    def check_data(self, k) -> None:
        check_integers(self.name, k)

    @data_driven_start
    def init(self, k):
        xp = array_namespace(k)
        a = as_float(xp, k)
        m = xp.maximum(a.mean(), 0.5 / a.shape[0])
        v = a.var()
        over = v > m * (1 + 1e-3)  # overdispersed; else nearly Poisson: a large size
        size = xp.where(over, m * m / xp.where(over, v - m, 1.0), 100.0 * m)[()]
        return {"n": Positive(size), "p": Interval(0.0, 1.0, size / (size + m))}

    def sample(self, key, params, n):
        """``n`` counts, drawn as a gamma-Poisson mixture:
        ``lam ~ Gamma(n, scale=(1 - p) / p)``, ``k ~ Poisson(lam)``."""
        k1, k2 = jax.random.split(key)
        dt = jnp.result_type(params["n"], params["p"], float)
        g = jax.random.gamma(k1, jnp.asarray(params["n"], dt), sample_shape(n), dt)
        return jax.random.poisson(k2, g * (1 - params["p"]) / params["p"])
