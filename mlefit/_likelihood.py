"""The likelihood kernel: the per-observation log-density, vmapped, and the mean NLL.

Everything in mlefit (full-batch fits, SGD, batched and sharded fits, inference)
goes through :func:`logpdfs` and :func:`mean_nll`; there is no second implementation.

    loglik(w) = sum_i v_i log p(obs_i; w)
    nll(w)    = -(sum_i v_i log p(obs_i; w)) / (sum_i v_i)

with observation weights ``v_i`` (all ones by default). A zero weight removes an
observation exactly, even if its log-density is not finite (padding relies on this).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["logpdfs", "mean_nll", "total_loglik", "nll", "loglik"]


def logpdfs(logp, params, data: tuple) -> jax.Array:
    """Per-observation log-densities ``[log p(obs_i; params)]_i`` (``vmap`` of ``logp``)."""
    return jax.vmap(logp, in_axes=(None,) + (0,) * len(data))(params, *data)


def _weighted_sum(values, weights):
    if weights is None:
        return jnp.sum(values)
    return jnp.sum(jnp.where(weights > 0, weights * values, 0.0))


def _weight_total(data, weights, dtype):
    if weights is None:
        return jnp.asarray(data[0].shape[0], dtype)
    return jnp.sum(weights).astype(dtype)


def mean_nll(logp, params, data: tuple, weights=None) -> jax.Array:
    """Weighted mean negative log-likelihood ``-(sum_i v_i log p_i) / sum_i v_i``."""
    lp = logpdfs(logp, params, data)
    return -_weighted_sum(lp, weights) / _weight_total(data, weights, lp.dtype)


def total_loglik(logp, params, data: tuple, weights=None) -> jax.Array:
    """Weighted total log-likelihood ``sum_i v_i log p(obs_i; params)``."""
    return _weighted_sum(logpdfs(logp, params, data), weights)


def _as_data_tuple(data) -> tuple:
    return tuple(data) if isinstance(data, (tuple, list)) else (data,)


def nll(model, params, data, weights=None) -> jax.Array:
    """Mean negative log-likelihood of ``data`` under ``model`` at ``params``.

    ``nll(w) = -(1/m) sum_i log p(obs_i; w)`` (weighted mean with ``weights``), the
    cross-entropy between the empirical distribution of the data and the model.
    ``model`` is a function ``log_prob(params, *obs)``, an mlefit model, or an
    equinox Module with ``log_prob(self, *obs)`` (then ``params`` may be ``None``).
    Constrained parameters are given by value. Jit-compatible and differentiable.

    Example:
        >>> import jax.numpy as jnp, jax.scipy.stats as st
        >>> f = lambda p, x: st.norm.logpdf(x, p["mu"], 1.0)
        >>> float(nll(f, {"mu": 0.0}, jnp.zeros(3)))  # = log(2 pi) / 2
        0.9189385...
    """
    logp, params = _resolve(model, params)
    return mean_nll(logp, params, _as_data_tuple(data), weights)


def loglik(model, params, data, weights=None) -> jax.Array:
    """Total log-likelihood ``l(w) = sum_i log p(obs_i; w)`` (``= -m * nll``)."""
    logp, params = _resolve(model, params)
    return total_loglik(logp, params, _as_data_tuple(data), weights)


def _resolve(model, params):
    import equinox as eqx

    from ._model import AbstractModel

    if isinstance(model, AbstractModel):
        return model.log_prob, params
    if isinstance(model, eqx.Module) and hasattr(model, "log_prob"):
        module = model if params is None else params
        return (lambda m, *obs: m.log_prob(*obs)), module
    if callable(model):
        return model, params
    raise TypeError(f"model: expected a log-density function or Module, got {type(model).__name__}")
