"""The objective every full-batch solver minimises: the mean NLL in the unconstrained
parametrisation, from the raw observations or from sufficient statistics.

``f(u) = -(sum_i v_i log p(obs_i; c(u))) / sum_i v_i`` with ``c`` the constraint map.
For log-densities affine in data features (exponential families, found automatically by
:mod:`mlefit._suffstats`) the feature means are computed once per compiled call and
each evaluation costs ``O(p^2)`` instead of a pass over the data (same value up to the
order of the sums). Otherwise the gradient takes the faster two-pass formulation of
:mod:`mlefit._fastgrad` where it applies.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import jax
import numpy as np

from ._constraints import constrain
from ._fastgrad import fast_objective
from ._likelihood import mean_nll
from ._suffstats import plan_for, reduced_mean_loglik, specialise, suffstats

__all__ = ["Reduced", "reduce_logp", "reduce_enabled", "objective"]


class Reduced(NamedTuple):
    """A log-density with its sufficient-statistics plan (see :mod:`mlefit._suffstats`).

    Passed where ``logp`` goes: :func:`objective` then computes the feature means once per
    compiled call and minimises the mean NLL from them, ``O(p^2)`` per step instead of a
    pass over the data (same value up to the order of the sums).
    """

    logp: Any
    spec: Any


def reduce_logp(logp, u0, transforms, data, weights):
    """``Reduced(logp, spec)`` when the log-density is affine in data features, else ``logp``."""
    params = jax.eval_shape(lambda u: constrain(u, transforms), u0)
    obs = tuple(jax.ShapeDtypeStruct(a.shape[1:], a.dtype) for a in data)
    try:
        plan = plan_for(logp, params, obs)
        spec = None if plan is None else specialise(plan, data, weights, batched=False)
        if spec is not None:  # traced once per spec and shapes: a failure means no reduction
            reduced = Reduced(logp, spec)
            key = (reduced, transforms, _shapes((u0, data, weights)))
            if key not in _REDUCTION_TRACES:
                if len(_REDUCTION_TRACES) > 256:
                    _REDUCTION_TRACES.clear()
                _REDUCTION_TRACES[key] = _traces(reduced, transforms, u0, data, weights)
            spec = spec if _REDUCTION_TRACES[key] else None
    except Exception:  # noqa: BLE001 - no reduction is always a correct fallback
        spec = None
    return logp if spec is None else Reduced(logp, spec)


_REDUCTION_TRACES: dict = {}


def _shapes(tree):
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return treedef, tuple((np.shape(x), _dtype(x).str) for x in leaves)


def _dtype(x) -> np.dtype:
    return np.dtype(x.dtype) if hasattr(x, "dtype") else np.asarray(x).dtype


def _traces(reduced, transforms, u0, data, weights) -> bool:
    try:
        jax.eval_shape(
            lambda u, d, w: jax.value_and_grad(objective(reduced, transforms, d, w))(u),
            u0, data, weights,
        )
    except Exception:  # noqa: BLE001
        return False
    return True


def objective(logp, transforms, data, weights):
    """``f(u) = mean NLL`` at ``constrain(u)``, the function every optimiser minimises."""
    if isinstance(logp, Reduced):
        stats = suffstats(logp.spec, data, weights)  # once per compiled call
        return lambda u: -reduced_mean_loglik(logp.spec, constrain(u, transforms), stats)

    def loss(u, data, weights):
        return mean_nll(logp, constrain(u, transforms), data, weights)

    return fast_objective(loss, data, weights)


def reduce_enabled() -> bool:
    """Sufficient-statistics reduction of full-batch fits; ``MLEFIT_SUFFSTATS=0`` turns it off."""
    return os.environ.get("MLEFIT_SUFFSTATS", "1") != "0"

