"""``fit`` inside ``jax.jit``, ``jax.vmap`` or ``jax.grad``: checks of what is concrete,
one loop inlined in the caller's trace, an estimate differentiable by the implicit
function theorem (:mod:`mlefit._implicit`; the tracer guards are in :mod:`mlefit._traced`).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ._checks import (
    check_data,
    check_model_output,
    check_weights,
    float_dtype,
    is_traced,
)
from ._constraints import constrain, split_init
from ._defaults import use_newton
from ._implicit import argmin
from ._inference import HESSIAN_ERRORS
from ._likelihood import penalised
from ._model import AbstractModel, as_problem
from ._newton import Newton
from ._objective import objective, reduce_enabled
from ._options import check_options
from ._precision import warn_if_float32
from ._result import FitResult
from ._solver_optax import OptaxSolver, default_optimizer
from ._solver_subsampled import SubsampledNewton
from ._solvers import choose_solver
from ._suffstats import (
    plan_for,
    reduced_mean_loglik,
    specialise,
    specialise_traced,
    suffstats,
)
from ._traced import (
    TracedFixed,
    flat_names,
    split_fixed,
    unwrap_model,
)
from ._weights import effective_weights, resolve_weights_kind, weighted_n_obs

__all__ = ["fit_traced"]


def fit_traced(model, data, init, weights, weights_kind, optimizer, newton: bool,
                max_steps, tol, record_history: bool, fixed, penalty) -> FitResult:
    """``fit`` with traced inputs: checks of what is concrete, one inlined loop, an
    estimate differentiable by the implicit function theorem (:func:`_implicit.argmin`)."""
    data = check_data(data)
    n = data[0].shape[0]
    traced_data = is_traced(data)
    fixed, traced_fixed = split_fixed(fixed)
    insert = None
    if traced_fixed:
        if not isinstance(model, AbstractModel) and hasattr(model, "log_prob"):
            raise ValueError(
                "fixed: an equinox Module is its own parameters; fixed= is for a function "
                "log_prob(params, *obs) with init, or a ready-made model."
            )
        insert = TracedFixed(traced_fixed)
        logp0, init, name = unwrap_model(model, init, data, insert)
        if init is None:
            raise ValueError(
                "init: a model given as a plain function log_prob(params, *obs) needs a "
                "starting point, e.g. init={'mu': 0.0, 'sigma': mlefit.Positive(1.0)}."
            )
        if isinstance(model, AbstractModel) and not traced_data:
            model.check_data(*data)
        model, init = insert.model(logp0, name), insert.free(init)
        penalty = insert.penalty(penalty)
    problem, init = as_problem(model, init, data, fixed=fixed, check_data=not traced_data)
    dtype = float_dtype(data)
    u0, transforms = split_init(init, dtype)
    opts = check_options(n, dtype, None if newton else optimizer, None, None, None,
                         max_steps, tol, record_history)
    if isinstance(opts.optimizer, SubsampledNewton):
        raise ValueError(
            "optimizer: 'subsampled' draws its subsample inside fit's own compiled program "
            "and is not available inside jit, vmap or grad; use the default (Newton or "
            "L-BFGS by the problem's size) or optimizer='lbfgs' there."
        )
    u_aval = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), u0)
    check_model_output(problem.logp, u_aval, data)
    weights = check_weights(weights, n, dtype)
    weights_kind = resolve_weights_kind(weights_kind, weights)
    weights = effective_weights(weights, weights_kind)
    n_obs = weighted_n_obs(n, weights, dtype, weights_kind)
    if penalty is not None:
        problem = penalised(problem, penalty, 1.0, jax.eval_shape(
            lambda u: constrain(u, transforms), u_aval))
        problem = dataclasses.replace(problem, logp=_penalised_kernel(
            problem.density, problem.penalty, n_obs))
    warn_if_float32(dtype)
    x0, unravel = ravel_pytree(jax.tree.map(jnp.asarray, u0))
    f, args, n_eff = _traced_objective(problem.logp, transforms, x0, unravel, data, weights,
                                       problem.source)
    solver, _ = choose_solver(None if newton else opts.optimizer, newton, problem, u_aval,
                              transforms, data, weights, None, reduce=False, n_eff=n_eff,
                              subsample=False)
    # the tangent solve: Cholesky where a Hessian is cheap (Newton's rule), else CG
    run = functools.partial(argmin, f=f, x0=x0, args=args, tol=opts.tol,
                            max_steps=opts.max_steps, record_history=opts.history,
                            names=flat_names(u0), direct=use_newton(n_eff, x0.size))
    try:
        x, value, grad, steps, status, hist = run(solver)
    except HESSIAN_ERRORS:  # a model JAX differentiates once only (found while tracing)
        if newton or not isinstance(solver, Newton):
            raise
        x, value, grad, steps, status, hist = run(OptaxSolver(default_optimizer()))
    u = unravel(x)
    params = problem.finalize(constrain(u, transforms))
    if insert is not None:
        params = insert.insert(params)
    grad_norm = jnp.max(jnp.abs(grad)) if grad.size else jnp.zeros((), grad.dtype)
    res = FitResult(
        params=params, u=u, nll=value, n_obs=n_obs, status_code=status, steps=steps,
        grad_norm=grad_norm, history_buffer=hist, data=data, weights=weights,
        weights_kind=weights_kind, problem=problem, transforms=transforms,
        minibatch=False, tol=float(opts.tol),
    )
    if problem.penalty is not None:
        res = dataclasses.replace(res, penalty=problem.penalty(constrain(u, transforms)))
    return res


def _penalised_kernel(density, penalty, total_weight):
    """``log p(params, *obs) - f(params) / W`` with a possibly traced total weight ``W``
    (:class:`mlefit._likelihood.Penalised` holds ``W`` as a static number)."""

    def kernel(params, *obs):
        lp = density(params, *obs)
        return lp - jnp.asarray(penalty(params), lp.dtype) / total_weight

    return kernel


def _traced_objective(logp, transforms, x0, unravel, data, weights, source=None):
    """``(f, args, n_eff)``: ``f(x, args)`` the mean NLL at ``unravel(x)``, the inputs it
    depends on explicitly, and the observations one evaluation passes over. Where the
    log-density is affine in data features (:mod:`mlefit._suffstats`; for a ready-made
    model (``source``) whose log-density has data-only conditions, which cannot be read
    from traced data, every way they can hold is prepared and the trace picks the data's,
    :func:`~mlefit._suffstats.specialise_traced`), ``args``
    are the sufficient statistics, computed once (and differentiable in the data), and
    ``n_eff = 1``; otherwise the data and weights, ``n_eff = n``."""
    params = jax.eval_shape(lambda x: constrain(unravel(x), transforms), x0)
    obs = tuple(jax.ShapeDtypeStruct(a.shape[1:], a.dtype) for a in data)
    plan = plan_for(logp, params, obs) if reduce_enabled() else None
    spec = None
    if plan is not None and not plan.conditions:
        spec = specialise(plan, data, weights, batched=False)
    if spec is not None:
        def reduced(x, stats):
            return -reduced_mean_loglik(spec, constrain(unravel(x), transforms), stats)

        return reduced, suffstats(spec, data, weights), 1
    if plan is not None and isinstance(source, AbstractModel):
        # support conditions (x >= 0, isnan(x)) on traced data: chosen in the trace
        with jax.ensure_compile_time_eval():  # a concrete probe point: u = 0
            probe = jax.tree_util.tree_leaves(
                constrain(unravel(jnp.zeros(x0.shape, x0.dtype)), transforms))
        specs, index = specialise_traced(plan, data, weights, probe)
        if specs is not None:
            def switched(x, args):
                stats, index = args
                params = constrain(unravel(x), transforms)
                branches = [lambda st, j=j, s=s: -reduced_mean_loglik(s, params, st[j])
                            for j, s in enumerate(specs)]
                value = jax.lax.switch(jnp.maximum(index, 0), branches, stats)
                return jnp.where(index >= 0, value, jnp.nan)

            stats = [suffstats(s, data, weights) for s in specs]
            return switched, (stats, index), 1
    def f(x, args):
        d, w = args
        return objective(logp, transforms, d, w)(unravel(x))

    return f, (data, weights), data[0].shape[0]
