"""The likelihood kernel: the per-observation log-density, vmapped, and the mean NLL.

Everything in mlefit (full-batch fits, SGD, batched and sharded fits, inference)
goes through :func:`logpdfs` and :func:`mean_nll`; there is no second implementation.

    loglik(w) = sum_i v_i log p(obs_i; w)
    nll(w)    = -(sum_i v_i log p(obs_i; w)) / (sum_i v_i)

with observation weights ``v_i`` (all ones by default). A zero weight removes an
observation exactly, even if its log-density is not finite (padding relies on this).

A penalty ``f(w)`` (or a log-prior, ``f = -log pi``) is added to the TOTAL NLL; the
optimiser minimises its mean, ``nll(w) + f(w) / sum_i v_i``, by the per-observation
kernel of :func:`penalised` (``log p_i - f / sum_i v_i``), so every fit path (full batch,
minibatch, sharded) sees the one objective.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from ._constraints import constrain
from ._model import AbstractModel

__all__ = [
    "logpdfs", "mean_nll", "total_loglik", "nll", "loglik",
    "penalised", "check_penalty", "penalty_at", "penalty_value",
]


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


    if isinstance(model, AbstractModel):
        return model.log_prob, params
    if isinstance(model, eqx.Module) and hasattr(model, "log_prob"):
        module = model if params is None else params
        return (lambda m, *obs: m.log_prob(*obs)), module
    if callable(model):
        return model, params
    raise TypeError(f"model: expected a log-density function or Module, got {type(model).__name__}")


class Penalised(eqx.Module):
    """``log p(params, *obs) - f(params) / W``: the per-observation kernel of a penalised
    objective (``W`` the total weight), so that its mean NLL is ``nll + f / W``."""

    logp: Callable = eqx.field(static=True)
    penalty: Callable = eqx.field(static=True)
    total_weight: float = eqx.field(static=True)

    def __call__(self, params, *obs):
        lp = self.logp(params, *obs)
        return lp - jnp.asarray(self.penalty(params), lp.dtype) / self.total_weight


class _NegatedLogPrior(eqx.Module):
    """``f(w) = -log pi(w)``: a log-prior as a penalty (MAP estimation)."""

    log_prior: Callable = eqx.field(static=True)

    def __call__(self, params):
        return -self.log_prior(params)


class _OnModule(eqx.Module):
    """A penalty of a Module-as-params model, called on the combined Module."""

    penalty: Callable = eqx.field(static=True)
    static: object = eqx.field(static=True)

    def __call__(self, dyn):
        return self.penalty(eqx.combine(dyn, self.static))


def check_penalty(penalty, log_prior) -> Callable | None:
    """The penalty ``f`` from ``penalty=`` or ``log_prior=`` (``f = -log_prior``), or None.

    ``TypeError`` when it is not callable, ``ValueError`` when both are given.
    """
    if penalty is not None and log_prior is not None:
        raise ValueError(
            "penalty, log_prior: give one of them (penalty = -log_prior), not both."
        )
    for name, f in (("penalty", penalty), ("log_prior", log_prior)):
        if f is not None and not callable(f):
            raise TypeError(f"{name}: expected a function f(params) -> scalar, got "
                            f"{type(f).__name__}")
    if log_prior is not None:
        return _NegatedLogPrior(log_prior)
    return penalty


def penalised(problem, penalty, total_weight: float, params_aval):
    """``problem`` whose objective kernel adds ``penalty(params)`` to the TOTAL NLL.

    ``mean objective(w) = nll(w) + penalty(w) / W``, ``W = sum_i v_i`` (``n_obs``). The
    penalty is called on the parameters ``log_prob`` receives (fixed values merged; the
    Module for an equinox model). ``problem.density`` keeps the log-density alone.
    ``ValueError`` (before compiling) when ``penalty`` does not return a scalar.
    """
    if penalty is None:
        return problem
    fixed = problem.fixed
    f = penalty
    if problem.module_static is not None:
        f = _OnModule(penalty, problem.module_static)
    elif fixed is not None:
        f = _Merged(penalty, fixed)
    try:
        out = jax.eval_shape(f, params_aval)
    except Exception as e:
        raise type(e)(f"penalty: calling it on the parameters failed: {e}") from e
    if not (hasattr(out, "shape") and out.shape == () and jnp.issubdtype(out.dtype, jnp.floating)):
        raise ValueError(
            f"penalty: must return a float scalar f(params), got {jax.tree.map(jnp.shape, out)}"
        )
    return dataclasses.replace(
        problem, logp=Penalised(problem.logp, f, float(total_weight)), density=problem.logp,
        penalty=f,
    )


@eqx.filter_jit
def penalty_value(penalty, transforms, u):
    """``f(params)`` at the unconstrained ``u`` (``params = constrain(u, transforms)``)."""
    return penalty(constrain(u, transforms))


def penalty_at(res):
    """``res`` with ``res.penalty`` set to ``f`` at its estimate (unchanged without one)."""
    f = res.problem.penalty
    if f is None:
        return res
    return dataclasses.replace(res, penalty=penalty_value(f, res.transforms, res.u))


class _Merged(eqx.Module):
    """A penalty called on the parameters with the fixed values merged in."""

    penalty: Callable = eqx.field(static=True)
    fixed: object = eqx.field(static=True)

    def __call__(self, params):
        return self.penalty(self.fixed.merge(params))
