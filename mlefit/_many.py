"""Batched fits: many independent data sets, one ``vmap`` over the whole compiled fit.

``fit_many(model, data)`` with ``data`` of shape ``(B, n, ...)`` runs the fit loop of
:func:`mlefit.fit` (or a damped Newton loop, :mod:`mlefit._newton`) under ``jax.vmap``
in one compiled call. Each member has its own step budget, status and convergence test;
a finished member is frozen by the batched loop while the others continue, and the loop
ends when its slowest member does (so one stubborn data set sets the time for all:
the default step budget is smaller than ``fit``'s).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ._checks import check_model_output, float_dtype, numeric_arrays
from ._compiled import compiled_call
from ._constraints import constrain, split_init
from ._defaults import DEFAULT_MAX_STEPS_MANY, DEFAULT_MAX_STEPS_MANY_NEWTON, use_newton
from ._diagnose import _init_not_finite_message
from ._iterate import iterate
from ._likelihood import check_penalty, penalised, penalty_value
from ._many_starts import batched_model_init, check_batched_u0, nan_starts, used_rows
from ._model import AbstractModel, FixedModel, Problem, as_problem
from ._newton import NEWTON, Newton
from ._objective import Reduced, objective
from ._options import check_options
from ._precision import warn_if_float32
from ._program import fit_fingerprint
from ._result import FitResult
from ._solver_optax import LBFGS, OptaxSolver
from ._status import Status
from ._suffstats import plan_for, reduced_mean_loglik, specialise, suffstats
from ._weights import check_weights_kind, effective_weights, resolve_weights_kind
from .models._base import warn_unobserved_sets

__all__ = ["fit_many"]


# ---------------------------------------------------------------------------------------
# Checks at the boundary (before anything compiles)
# ---------------------------------------------------------------------------------------
def check_batched_data(data) -> tuple:
    """Returns data as a tuple of arrays of shape ``(B, n, ...)`` sharing ``B`` and ``n``."""
    out = []
    for name, a in numeric_arrays(data, "an array (B, n, ...) or a tuple of them"):
        if a.ndim < 2:
            raise ValueError(
                f"{name}: fit_many needs a leading data-set axis and an observation axis, "
                f"shape (B, n, ...); got shape {a.shape}. For one data set use mlefit.fit."
            )
        if a.shape[0] == 0 or a.shape[1] == 0:
            raise ValueError(
                f"{name}: has shape {a.shape}; need at least one data set and one observation."
            )
        out.append(a)
    shapes = [a.shape[:2] for a in out]
    if len(set(shapes)) > 1:
        desc = ", ".join(f"data[{k}] has (B, n) = {s}" for k, s in enumerate(shapes))
        raise ValueError(
            f"data: the arrays must share the data-set and observation axes, but {desc}."
        )
    return tuple(out)


def check_batched_weights(weights, mask, shape: tuple, dtype):
    """Returns ``(B, n)`` weights (``mask`` as 0/1, multiplied into ``weights``) or ``None``."""
    if weights is None and mask is None:
        return None
    w = None
    if weights is not None:
        w = weights if isinstance(weights, (jax.Array, np.ndarray)) else np.asarray(weights)
        if w.shape != shape:
            raise ValueError(
                f"weights: expected shape {shape} (data sets, observations), got {w.shape}"
            )
        wn = np.asarray(w, dtype=float)
        bad = ~(np.isfinite(wn) & (wn >= 0))
        if bad.any():
            b, i = np.argwhere(bad)[0]
            raise ValueError(
                f"weights: must be finite and non-negative; data set {b}, observation {i} has "
                f"weight {wn[b, i]!r}"
            )
    if mask is not None:
        m = np.asarray(mask)
        if m.shape != shape:
            raise ValueError(
                f"mask: expected shape {shape} (data sets, observations), got {m.shape}"
            )
        if m.dtype != np.bool_:
            raise TypeError(
                f"mask: expected a boolean array (True = observation used), got dtype {m.dtype}"
            )
        w = m if w is None else np.asarray(w) * m
    w = np.asarray(w, dtype=float) if not isinstance(w, jax.Array) else w
    empty = ~(np.asarray(w, dtype=float).sum(axis=1) > 0)
    if empty.any():
        b = int(np.argmax(empty))
        raise ValueError(
            f"weights: data set {b} has no observation with positive weight "
            f"({int(empty.sum())} data set(s) are empty); each needs at least one."
        )
    return jnp.asarray(w, dtype=dtype)


def _check_batched_finite(data: tuple, weights) -> None:
    """``ValueError`` naming the data set and observation of the first NaN/inf value.

    Observations with zero weight (padding) may hold anything.
    """
    used = None if weights is None else np.asarray(weights) > 0
    for k, a in enumerate(data):
        if not jnp.issubdtype(a.dtype, jnp.inexact):
            continue
        h = np.asarray(a)
        if used is None and np.isfinite(np.sum(h)):  # fast path: no NaN/inf (and no overflow)
            continue
        ok = np.isfinite(h.reshape(a.shape[0], a.shape[1], -1)).all(axis=2)
        bad = ~ok if used is None else (~ok & used)
        if bad.any():
            b, i = (int(v) for v in np.argwhere(bad)[0])
            name = "data" if len(data) == 1 else f"data[{k}]"
            per_set = bad.any(axis=1)
            raise ValueError(
                f"data: {name} has NaN or inf values in {int(per_set.sum())} data set(s) "
                f"(first: data set {b}, observation {i}); remove or impute them, give them "
                "zero weight, or pass check_finite=False to let those fits fail with status "
                "'init_not_finite' while the others run."
            )



def _host_data(data: tuple, weights):
    return tuple(np.asarray(a) for a in data), None if weights is None else np.asarray(weights)


def _flat_used(hdata: tuple, hw) -> tuple:
    """All used observations of all data sets, stacked on one observation axis."""
    if hw is None:
        return tuple(a.reshape((-1,) + a.shape[2:]) for a in hdata)
    used = hw > 0
    return tuple(a[used] for a in hdata)


def _check_model_data(model: AbstractModel, hdata: tuple, hw) -> None:
    """Runs the model's support check on all used observations; names the data set on failure."""
    try:
        model.check_data(*_flat_used(hdata, hw))
    except ValueError:
        for b in range(hdata[0].shape[0]):
            try:
                model.check_data(*(used_rows(a, hw, b) for a in hdata))
            except ValueError as e:
                raise ValueError(f"data set {b}: {e}") from e
        raise
    warn_unobserved_sets(model, hdata, hw)


# ---------------------------------------------------------------------------------------
# The compiled, vmapped fit
# ---------------------------------------------------------------------------------------
@jax.jit
def fill_padding(data: tuple, weights):
    """Replaces zero-weight observations by the first positive-weight one of the same data set.

    A zero weight removes an observation from the NLL exactly, but its log-density still
    enters the gradient as ``0 * grad``, which is NaN when the padding value is outside
    the support (or NaN). A copy of a valid observation makes padding harmless.
    """
    first = jnp.argmax(weights > 0, axis=1)

    def fill(a):
        valid = jnp.take_along_axis(a, first.reshape((-1, 1) + (1,) * (a.ndim - 2)), axis=1)
        keep = (weights > 0).reshape(weights.shape + (1,) * (a.ndim - 2))
        return jnp.where(keep, a, valid)

    return tuple(fill(a) for a in data)


@eqx.debug.assert_max_traces(max_traces=None)  # counts traces (tests: no recompilation)
def _fit_many_traced(
    logp, transforms, solver, spec, u0, data, weights, tol, max_steps, record_history, batched_init
):
    def one(u0, data, w):
        if spec is None:
            f = objective(logp, transforms, data, w)
        else:
            stats = suffstats(spec, data, w)  # once per data set, before the loop
            f = lambda u: -reduced_mean_loglik(spec, constrain(u, transforms), stats)  # noqa: E731
        one_solver = Newton(eig=False) if solver == NEWTON else OptaxSolver(solver)
        u, value, grad, steps, status, hist = iterate(
            one_solver, f, u0, tol, max_steps, record_history
        )
        grad_norm = jnp.max(jnp.stack([jnp.max(jnp.abs(g)) for g in jax.tree.leaves(grad)]))
        return u, value, grad_norm, steps, status, hist, constrain(u, transforms)

    in_axes = (0 if batched_init else None, 0, None if weights is None else 0)
    return jax.vmap(one, in_axes=in_axes)(u0, data, weights)


def _fit_many_static_first(
    logp, transforms, solver, spec, max_steps, record_history, batched_init, u0, data, weights, tol
):
    return _fit_many_traced(
        logp, transforms, solver, spec, u0, data, weights, tol, max_steps, record_history,
        batched_init,
    )


def _fit_many_compiled(static: tuple, dynamic: tuple, params_aval, obs_aval):
    """The batched fit, compiled once per model, options and input shapes (and stored
    with the cache on, see ``mlefit._compiled``).

    ``static = (logp, transforms, solver, spec, max_steps, record_history, batched_init)``,
    ``dynamic = (u0, data, weights, tol)``; the avals are those of ONE fit's parameters
    and ONE observation.
    """
    logp, transforms, solver, spec = static[:4]
    fit_logp = logp if spec is None else Reduced(logp, spec)
    # A small fit per data set (Newton on a few parameters): compiled for compile time,
    # as fit's small programs (10,000 Gamma fits of 200: compile 1.3-1.8 s -> 0.85-0.95 s,
    # steady 0.041-0.050 s -> 0.046-0.070 s, loaded 2-core machine).
    data = dynamic[1]
    per_set = sum(int(np.prod(a.shape[1:])) for a in data)
    p = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params_aval))
    return compiled_call(
        _fit_many_static_first, static, dynamic,
        lambda: fit_fingerprint(fit_logp, transforms, solver, static[4:], params_aval, obs_aval),
        opt_level=0 if solver == NEWTON and per_set * max(p, 1) <= 1 << 16 else None,
    )



def _count_params(u0, batched: bool) -> int:
    return sum(
        int(np.prod(x.shape[1:] if batched else x.shape)) for x in jax.tree_util.tree_leaves(u0)
    )


def _choose_solver(optimizer, n_obs: int, n_params: int):
    if optimizer is None:
        return NEWTON if use_newton(n_obs, n_params) else None
    if isinstance(optimizer, str):
        if optimizer not in (NEWTON, LBFGS):
            raise ValueError(
                f"optimizer: the named optimizers of fit_many are 'newton' and 'lbfgs', got "
                f"{optimizer!r}")
        return NEWTON if optimizer == NEWTON else None
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            "optimizer: expected 'newton', an optax GradientTransformation (e.g. optax.lbfgs()) "
            f"or None, got {type(optimizer).__name__}"
        )
    return optimizer


def _common_total_weight(penalty, n: int, weights) -> float:
    """``W``, the total weight every data set shares (``n`` without weights), for a
    penalty's ``f / W``; ``ValueError`` naming two data sets whose totals differ."""
    if penalty is None or weights is None:
        return float(n)
    totals = np.asarray(jnp.sum(weights, axis=1), dtype=float)
    differ = np.flatnonzero(np.abs(totals - totals[0]) > 1e-12 * abs(totals[0]))
    if differ.size:
        b = int(differ[0])
        raise ValueError(
            "penalty: fit_many adds f(params) / W to every data set's mean NLL, so the data "
            f"sets must share their total weight W; data set 0 has {totals[0]:g} and data "
            f"set {b} has {totals[b]:g}. Fit such data sets one by one with mlefit.fit."
        )
    return float(totals[0])


def fit_many(
    model,
    data,
    init=None,
    *,
    weights=None,
    weights_kind: str | None = None,
    mask=None,
    batched_init: bool = False,
    optimizer=None,
    max_steps: int | None = None,
    tol: float | None = None,
    history: bool = False,
    check_finite: bool = True,
    use_suffstats: bool = True,
    penalty=None,
    log_prior=None,
) -> FitResult:
    """Fits one model to B independent data sets in one compiled call; returns a batched FitResult.

    For each data set ``b``: ``w*_b = argmin_w -(sum_i v_bi log p(obs_bi; w)) / sum_i v_bi``,
    the fit of :func:`mlefit.fit` under ``jax.vmap`` (compiled once per shapes and model).
    The result's fields carry a leading axis B (``res.params["mu"].shape == (B,)``,
    ``res.status``, ``res.converged``, ``res.stderr`` per fit); ``res[b]`` is the b-th fit
    as an ordinary :class:`FitResult` (``summary()`` and all).

    Convergence is per fit: each member stops on its own test, with its own ``max_steps``
    budget, and keeps its values while the others run; the call ends with the slowest
    member. A data set that cannot be fitted (all values equal, a divergent likelihood)
    ends with its own status (``stalled``, ``max_steps``, ``non_finite``,
    ``not_at_minimum``) and does not affect the others' estimates. With a ready-made
    model, a data set whose data-driven start fails (all values equal: no MLE) is not
    fitted at all (a warning names it and the reason; status ``init_not_finite``, NaN
    parameters), so it cannot hold up the batch either.

    Args:
        model: as for :func:`mlefit.fit`: ``log_prob(params, *obs)``, an equinox Module
            (shared start), or a ready-made model (its data-driven ``init`` runs per data
            set, on the used observations only).
        data: an array ``(B, n, ...)`` or a tuple of them: B data sets of n observations.
        init: starting parameters. Shared by all data sets (default), or one per data set
            with ``batched_init=True`` (every leaf, or constraint value, has a leading
            axis B). Shapes alone cannot tell the two apart, hence the flag.
        weights: ``(B, n)`` non-negative observation weights; a zero weight is padding,
            so ragged data sets are padded to a common n (the padded values may be
            anything, even NaN). ``res.n_obs[b] = sum_i weights[b, i]``.
        weights_kind: ``"frequency"`` (default; non-integer weights are warned about
            when the kind is not given) or ``"variance"`` (rescaled per data set to sum
            to its number of positive weights, which is then ``res.n_obs[b]``): what
            the weights mean for the covariance, AIC/BIC and LR tests, as in ``fit``.
        mask: ``(B, n)`` boolean, False = padding (the same as 0/1 weights; multiplied
            into ``weights`` when both are given).
        batched_init: whether ``init`` has a leading data-set axis.
        optimizer: ``"newton"`` (damped Newton with the exact Hessian,
            :func:`mlefit._newton.newton_loop`), an optax ``GradientTransformation``
            (e.g. ``optax.lbfgs()``, the loop of ``fit``), or None: Newton for up to 32
            free parameters, else ``fit``'s default L-BFGS. Measured on 10,000 Gamma fits
            of 200 observations (same start, 2-core CPU): Newton 7x faster than vmapped
            optax L-BFGS on sufficient statistics, 2.8x on the raw observations (about
            as many steps, no nested line-search loop for the batch to wait on).
        max_steps: step budget per data set (default 100 for Newton, 2,000 otherwise).
        tol: gradient max-norm tolerance on each mean NLL (default as ``fit``).
        history: record each fit's mean NLL per step (a ``(B, max_steps + 1)`` buffer).
        check_finite: raise ``ValueError`` (naming data set and observation) for NaN/inf
            in used observations, like ``fit``. With False those fits end with status
            ``init_not_finite`` and the others are fitted as usual.
        use_suffstats: when the log-density is affine in data features (exponential
            families: Normal, Gamma, Beta, LogNormal, ...), found automatically by
            :mod:`mlefit._suffstats`, fit from per-data-set feature means computed once
            instead of the raw observations in every step (same NLL to rounding; 10k
            Gamma fits: see the module docs). False always uses the observations.
        penalty: ``f(params) -> scalar`` added to each data set's TOTAL NLL, as in
            :func:`mlefit.fit`: each fit minimises ``nll_b(w) + f(w) / W`` with ``W`` the
            data sets' common total weight (``n`` without weights; data sets whose total
            weights differ are refused). ``res.penalty`` is ``f`` at each estimate, and
            ``res.loglik`` the likelihood alone.
        log_prior: ``log pi(params)``, the same as ``penalty = -log_prior`` (MAP).

    Returns:
        A batched :class:`FitResult`. Its ``data`` holds the data with padding replaced by
        a copy of a valid observation of the same data set (zero weight, no effect).

    Example:
        >>> import jax.numpy as jnp, jax.scipy.stats as st, mlefit
        >>> normal = lambda p, x: st.norm.logpdf(x, p["mu"], p["sigma"])
        >>> x = jnp.array([[1.0, 2.0, 4.0], [0.0, 1.0, 2.0]])
        >>> res = mlefit.fit_many(normal, x, {"mu": 0.0, "sigma": mlefit.Positive(1.0)})
        >>> [round(float(m), 4) for m in res.params["mu"]]
        [2.3333, 1.0]
    """
    data = check_batched_data(data)
    B, n = data[0].shape[:2]
    dtype = float_dtype(data)
    warn_if_float32(dtype)
    check_weights_kind(weights_kind, weights)
    weights = check_batched_weights(weights, mask, (B, n), dtype)
    weights_kind = resolve_weights_kind(weights_kind, weights)
    weights = effective_weights(weights, weights_kind)  # per data set
    if check_finite:
        _check_batched_finite(data, weights)
    if not isinstance(batched_init, bool):
        raise TypeError(f"batched_init: expected True or False, got {batched_init!r}")

    one_set = tuple(jax.ShapeDtypeStruct(a.shape[1:], a.dtype) for a in data)  # one data set
    bad_starts = None  # data sets whose model start failed
    if isinstance(model, AbstractModel):
        hdata, hw = _host_data(data, weights)
        _check_model_data(model, hdata, hw)
        problem = Problem(logp=model.log_prob, name=model.name, source=model,
                          fixed=model.fixed if isinstance(model, FixedModel) else None)
        if init is None:
            init, bad_starts = batched_model_init(model, data, weights, hdata, hw)
            batched_init = True
    else:
        problem, init = as_problem(model, init, one_set)
        if batched_init and init is not None and problem.module_static is not None:
            raise ValueError("batched_init: an equinox Module model is its own (shared) start.")

    penalty = check_penalty(penalty, log_prior)
    u0, transforms = split_init(init, dtype)
    if batched_init:
        check_batched_u0(u0, B)
        u0 = nan_starts(u0, bad_starts)
    solver = _choose_solver(optimizer, n, _count_params(u0, batched_init))
    if max_steps is None:
        max_steps = DEFAULT_MAX_STEPS_MANY_NEWTON if solver == NEWTON else DEFAULT_MAX_STEPS_MANY
    opts = check_options(
        n, dtype, None if solver == NEWTON else solver, None, None, None, max_steps, tol, history
    )
    if solver != NEWTON:
        solver = opts.optimizer  # fit's default L-BFGS when none was given
    u0_one = jax.tree.map(lambda x: x[0], u0) if batched_init else u0
    # Constrained parameters have the shapes and dtypes of u: checks need no values.
    params_aval = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), u0_one)
    check_model_output(problem.logp, params_aval, one_set)
    problem = penalised(problem, penalty, _common_total_weight(penalty, n, weights),
                        params_aval)
    one_obs = tuple(jax.ShapeDtypeStruct(a.shape[2:], a.dtype) for a in data)
    if weights is not None:
        data = fill_padding(data, weights)

    spec = None
    if use_suffstats:
        plan = plan_for(problem.logp, params_aval, one_obs)
        spec = None if plan is None else specialise(plan, data, weights)
    u, value, grad_norm, steps, status, hist, params = _fit_many_compiled(
        (problem.logp, transforms, solver, spec, opts.max_steps, opts.history, batched_init),
        (u0, data, weights, np.asarray(opts.tol, dtype)),
        params_aval,
        one_obs,
    )
    codes = np.asarray(status)
    if (codes == Status.INIT_NOT_FINITE).all():
        u0_first = u0_one
        first = tuple(a[0] for a in data)
        msg = _init_not_finite_message(problem, init, u0_first, transforms, first)
        raise ValueError(f"every data set failed at the start; data set 0: {msg}")
    if weights is None:
        n_obs = jax.device_put(np.full((B,), n, dtype))
    elif weights_kind == "variance":  # the count of positive weights, exactly
        n_obs = jnp.sum(weights > 0, axis=1).astype(dtype)
    else:
        n_obs = jnp.sum(weights, axis=1)
    f = problem.penalty
    return FitResult(
        penalty=None if f is None else jax.vmap(lambda v: penalty_value(f, transforms, v))(u),
        params=problem.finalize(params, batch_shape=(B,)),
        u=u,
        nll=value,
        n_obs=n_obs,
        status_code=status,
        steps=steps,
        grad_norm=grad_norm,
        history_buffer=hist,
        data=data,
        weights=weights,
        problem=problem,
        transforms=transforms,
        minibatch=False,
        tol=float(opts.tol),
        weights_kind=weights_kind,
    )
