"""Which solver a full-batch fit runs, chosen before compiling (the cost rule of
:func:`mlefit._defaults.default_solver`), and the objective it minimises."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ._checks import (
    float_dtype,
)
from ._defaults import default_solver
from ._newton import Newton
from ._objective import Reduced, reduce_enabled, reduce_logp
from ._solver_optax import OptaxSolver, default_optimizer
from ._solver_subsampled import SubsampledNewton

__all__ = ["choose_solver"]


def choose_solver(optimizer, newton: bool, problem, u0, transforms, data, weights, layout,
                  reduce: bool = True, n_eff: int | None = None, subsample: bool = True):
    """``(solver, logp)``: the solver of a full-batch fit and the log-density it minimises
    (:class:`~mlefit._objective.Reduced` where sufficient statistics apply).

    ``optimizer=None`` and not ``newton``: :class:`~mlefit._newton.Newton` where
    :func:`~mlefit._defaults.use_newton` says a Hessian is cheap,
    :class:`~mlefit._solver_subsampled.SubsampledNewton` where
    :func:`~mlefit._defaults.use_subsampled` says a pass over the data is what a fit
    costs (and ``subsample``: the compiled program of ``fit`` draws the subsample), else
    L-BFGS; a model that declares its likelihood not smooth (``smooth = False``: kinks,
    where a Hessian says nothing) is fitted by L-BFGS. ``reduce``: try the
    sufficient-statistics reduction (which reads the data). ``n_eff``: the observations
    one evaluation passes over, where the caller reduced the data itself (1 for
    sufficient statistics).
    """
    logp = problem.logp
    fit_logp = logp
    dtype = float_dtype(data)
    # Sufficient statistics on one device, in the default float dtype (float32 data under
    # x64 mix dtypes in the plan).
    if (reduce and layout is None and reduce_enabled()
            and dtype == jnp.dtype(jnp.result_type(float))):
        fit_logp = reduce_logp(logp, u0, transforms, data, weights)
    if newton:
        return Newton(eig=True, restart=True), fit_logp
    if isinstance(optimizer, SubsampledNewton):
        return optimizer, fit_logp
    if optimizer is not None and optimizer != default_optimizer():
        return OptaxSolver(optimizer), fit_logp
    p = sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(u0))
    if n_eff is None:
        n_eff = 1 if isinstance(fit_logp, Reduced) else data[0].shape[0]
    rule = default_solver(n_eff, p) if getattr(problem.source, "smooth", True) else "lbfgs"
    if rule == "newton":
        return Newton(eig=True, restart=True), fit_logp
    if rule == "subsampled" and subsample:
        return SubsampledNewton(), fit_logp
    return OptaxSolver(default_optimizer()), fit_logp


