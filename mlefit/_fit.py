"""The fit engine: minimise the mean NLL with optax, the whole loop in one compiled call.

Full batch: ``lax.while_loop`` over optimiser steps (L-BFGS with a weak-Wolfe line
search by default), stopping when ``max_j |d nll / d u_j| <= tol``. Minibatch: ``lax.scan``
over epochs and, inside, over shuffled batches. Both call the one likelihood kernel.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax

from ._checks import check_data, check_model_output, check_weights, float_dtype, host_view
from ._constraints import constrain, split_init
from ._data import column_names
from ._likelihood import logpdfs, mean_nll
from ._linesearch import scale_by_wolfe_linesearch
from ._model import as_problem
from ._newton import NEWTON, newton_loop
from ._result import FitResult
from ._status import Status
from ._trees import all_finite as _all_finite
from ._trees import max_norm as _max_norm

__all__ = ["fit", "default_optimizer", "default_tol", "DEFAULT_MAX_STEPS"]

DEFAULT_MAX_STEPS = 10_000
# optimizer="newton": each step evaluates the exact Hessian.
DEFAULT_MAX_STEPS_NEWTON = 1_000
_RUNNING = -1
# Steps in a row without a change of the NLL beyond rounding before the fit stops.
_NO_PROGRESS_PATIENCE = 5
# A stalled fit still counts as converged when its gradient is within this factor of tol.
_STALL_TOL_FACTOR = 100.0
# Newton polish: at most this many steps, for problems with n_obs * n_params^2 below the budget.
_POLISH_MAX_ITER = 20
_POLISH_BUDGET = 5e7
# Refit from the start by Newton when L-BFGS converged where the Hessian is not positive
# definite: problems with n_obs * n_params^2 up to this (a Hessian costs about as much).
_SECOND_OPINION_BUDGET = 1e6


@functools.cache
def default_optimizer() -> optax.GradientTransformationExtraArgs:
    """Full-batch L-BFGS: ``optax.lbfgs`` (memory 10) with mlefit's weak-Wolfe line search
    (:func:`mlefit._linesearch.scale_by_wolfe_linesearch`); built once so fits reuse it."""
    return optax.lbfgs(linesearch=scale_by_wolfe_linesearch())


def default_tol(dtype) -> float:
    """Default gradient tolerance: ``1e-9`` in float64, ``1e-5`` in float32 (max-norm)."""
    return 1e-9 if jnp.dtype(dtype) == jnp.float64 else 1e-5


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
    from ._suffstats import plan_for, specialise

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
    from ._fastgrad import fast_objective  # same value and gradient, faster formulation

    if isinstance(logp, Reduced):
        from ._suffstats import reduced_mean_loglik, suffstats

        stats = suffstats(logp.spec, data, weights)  # once per compiled call
        return lambda u: -reduced_mean_loglik(logp.spec, constrain(u, transforms), stats)

    def loss(u, data, weights):
        return mean_nll(logp, constrain(u, transforms), data, weights)

    return fast_objective(loss, data, weights)


def _reduce_enabled() -> bool:
    """Sufficient-statistics reduction of full-batch fits; ``MLEFIT_SUFFSTATS=0`` turns it off."""
    return os.environ.get("MLEFIT_SUFFSTATS", "1") != "0"


def _has_value_in_state(opt, u0) -> bool:
    state = jax.eval_shape(opt.init, u0)
    return optax.tree.get(state, "value") is not None and optax.tree.get(state, "grad") is not None


class _Carry(NamedTuple):
    u: Any
    state: Any
    value: jax.Array
    grad: Any
    best_u: Any
    best_value: jax.Array
    best_grad: Any
    step: jax.Array
    status: jax.Array
    stuck: jax.Array
    history: jax.Array | None


def _where(pred, a, b):
    return jax.tree.map(lambda x, y: jnp.where(pred, x, y), a, b)


def full_batch_loop(f, opt, u0, tol, max_steps: int, record_history: bool, polish: bool = True):
    """Minimises ``f`` from ``u0`` with ``opt`` inside one ``lax.while_loop``.

    Returns ``(u, value, grad, steps, status, history)`` with ``u`` the converged (else
    the best finite) iterate. With ``polish``, :func:`newton_polish` refines the end
    point (small problems only: the caller decides, since it costs a Hessian).
    Composed of :func:`loop_start`, :func:`loop_run` and :func:`loop_finish`, which a
    caller can also run separately (between compiled chunks of steps).
    """
    carry = loop_start(f, opt, u0, tol, max_steps, record_history)
    carry = loop_run(f, opt, carry, tol, max_steps, max_steps)
    return loop_finish(f, carry, tol, polish)


def _opt_with_value(opt, u0):
    opt = optax.with_extra_args_support(opt)
    return opt, _has_value_in_state(opt, u0)


def loop_start(f, opt, u0, tol, max_steps: int, record_history: bool) -> _Carry:
    """The loop's state at the start: value and gradient at ``u0`` and the initial status."""
    opt, _ = _opt_with_value(opt, u0)
    value0, grad0 = jax.value_and_grad(f)(u0)
    finite0 = _all_finite(value0, grad0)
    status0 = jnp.where(
        ~finite0,
        Status.INIT_NOT_FINITE,
        jnp.where(
            _max_norm(grad0) <= tol,
            Status.CONVERGED,
            jnp.where(max_steps <= 0, Status.MAX_STEPS, _RUNNING),
        ),
    ).astype(jnp.int32)
    hist0 = None
    if record_history:
        hist0 = jnp.full((max_steps + 1,), jnp.nan, value0.dtype).at[0].set(value0)
    zero = jnp.asarray(0, jnp.int32)
    best0 = jnp.where(finite0, value0, jnp.inf)
    return _Carry(u0, opt.init(u0), value0, grad0, u0, best0, grad0, zero, status0, zero, hist0)


def loop_run(f, opt, carry: _Carry, tol, max_steps: int, limit) -> _Carry:
    """Runs optimiser steps while the status is running and ``step < limit``.

    The continue flag is computed in the body and carried: under ``vmap`` a condition
    that recomputes a float comparison can disagree with the masking and never stop.
    """
    opt, reuse = _opt_with_value(opt, carry.u)
    vg = jax.value_and_grad(f)
    eps = jnp.finfo(carry.value.dtype).eps

    def body(c: _Carry) -> _Carry:
        updates, state = opt.update(c.grad, c.state, c.u, value=c.value, grad=c.grad, value_fn=f)
        u = optax.apply_updates(c.u, updates)
        if reuse:  # the line search evaluated f at u: take its value and gradient
            # (not optax.value_and_grad_from_state: its fallback, re-evaluating f where
            # the stored value is not finite, would compile f once more and give the
            # same non-finite value, which the status below reports)
            value, grad = optax.tree.get(state, "value"), optax.tree.get(state, "grad")
            # in the carry's dtypes (the state's may be wider than f's output)
            value = value.astype(c.value.dtype)
            grad = jax.tree.map(lambda x, ref: x.astype(ref.dtype), grad, c.grad)
        else:
            value, grad = vg(u)
        step = c.step + 1
        finite = _all_finite(u, value, grad)
        unchanged = jnp.abs(value - c.value) <= 4 * eps * jnp.maximum(jnp.abs(c.value), 1.0)
        stuck = jnp.where(unchanged, c.stuck + 1, 0)
        better = finite & (value <= c.best_value)
        best_u, best_value, best_grad = _where(
            better, (u, value, grad), (c.best_u, c.best_value, c.best_grad)
        )
        stalled = jnp.where(
            _max_norm(best_grad) <= _STALL_TOL_FACTOR * tol, Status.CONVERGED, Status.STALLED
        )
        status = jnp.where(
            ~finite,
            Status.NON_FINITE,
            jnp.where(
                _max_norm(grad) <= tol,
                Status.CONVERGED,
                jnp.where(
                    stuck >= _NO_PROGRESS_PATIENCE,
                    stalled,
                    jnp.where(step >= max_steps, Status.MAX_STEPS, _RUNNING),
                ),
            ),
        ).astype(jnp.int32)
        history = c.history
        if history is not None:
            history = history.at[step].set(jnp.where(finite, value, jnp.nan))
        # On a non-finite step keep the last finite iterate in the running state too.
        u, value, grad = _where(finite, (u, value, grad), (c.u, c.value, c.grad))
        return _Carry(
            u, state, value, grad, best_u, best_value, best_grad, step, status, stuck, history
        )

    return jax.lax.while_loop(lambda c: (c.status == _RUNNING) & (c.step < limit), body, carry)


def loop_finish(f, c: _Carry, tol, polish: bool):
    """``(u, value, grad, steps, status, history)`` from the final loop state.

    A converged final iterate is returned as is (its status describes it); otherwise the
    best finite one. A fit still running (interrupted between chunks) keeps its status.
    """
    # A fit that "converged" by stalling near tol returns its best point, not the last.
    take_last = ((c.status == Status.CONVERGED) & (_max_norm(c.grad) <= tol)) | (
        c.status == Status.INIT_NOT_FINITE
    )
    u, value, grad = _where(
        take_last, (c.u, c.value, c.grad), (c.best_u, c.best_value, c.best_grad)
    )
    status = c.status
    if polish:
        u, value, grad, status = newton_polish(f, u, value, grad, status, tol)
    return u, value, grad, c.step, status, c.history


def newton_polish(f, u, value, grad, status, tol, max_iter: int = _POLISH_MAX_ITER):
    """Refines an optimum with exact-Hessian Newton steps; returns ``(u, value, grad, status)``.

    ``d = -H^-1 g`` with ``H`` the autodiff Hessian of ``f`` (Jacobi-scaled, by
    eigendecomposition; negative curvature is flipped so the step still descends). Near an
    optimum the mean NLL changes by less than its rounding error, so values alone cannot
    judge a step:
    a step is taken when ``f`` drops by more than rounding, or stays within rounding
    while the gradient shrinks (backtracking on a genuine rise). The polish stops when
    neither holds. The fit counts as converged when ``max|g| <= tol`` or when the
    Newton decrement ``g^T H^-1 g / 2`` (the predicted remaining decrease) is below the
    rounding level of ``f`` at a positive definite Hessian; that last full Newton step is
    still taken when ``f`` stays within rounding (the values cannot judge it, the gradient
    and Hessian place it: on an ill-conditioned regression it gains 3-4 digits in the
    coefficients). ``INIT_NOT_FINITE`` and
    ``NON_FINITE`` fits are not touched.
    """
    x0, unravel = jax.flatten_util.ravel_pytree(u)
    ff = lambda x: f(unravel(x))  # noqa: E731
    vg = jax.value_and_grad(ff)
    eps = jnp.finfo(x0.dtype).eps
    g0 = jax.flatten_util.ravel_pytree(grad)[0]

    def slack(v):
        return 8 * eps * jnp.maximum(jnp.abs(v), 1.0)

    def body(c):
        x, v, g, it, _, resolved = c
        H = jax.hessian(ff)(x)
        # Jacobi scaling: unscaled columns square the condition number of H, and
        # Cholesky of D H D handles what Cholesky of H cannot.
        dh = jnp.diag(H)
        scale = jnp.where(dh > 0, 1.0 / jnp.sqrt(jnp.where(dh > 0, dh, 1.0)), 1.0)
        # Eigenvalues of the scaled Hessian: where it is not positive definite (away
        # from the optimum, or a saddle), |lambda| floored gives a descent direction.
        lam, V = jnp.linalg.eigh(scale[:, None] * H * scale[None, :])
        pd = jnp.all(lam > 0) & jnp.all(dh > 0)
        lam = jnp.maximum(jnp.abs(lam), 1e3 * eps * jnp.max(jnp.abs(lam)))
        d = -scale * (V @ ((V.T @ (scale * g)) / lam))
        ok_h = jnp.all(jnp.isfinite(d))
        d = jnp.where(ok_h, d, 0.0)
        decrement = -jnp.dot(g, d)
        resolved = pd & (0.5 * decrement <= slack(v))
        gn = jnp.max(jnp.abs(g))

        def try_step(t):
            xn = x + t * d
            vn, gn_ = vg(xn)
            ok = jnp.isfinite(vn) & jnp.all(jnp.isfinite(gn_))
            drop = vn < v - slack(v)
            flat = (vn <= v + slack(v)) & (jnp.max(jnp.abs(gn_)) < gn)
            # Resolved: the full step is the optimum to the gradient's precision, and
            # the values cannot tell (both within rounding): take it once, then stop.
            final = resolved & (t == 1) & (vn <= v + slack(v))
            return xn, vn, gn_, ok & (drop | flat | final), ~ok | (vn > v + slack(v))

        def ls_body(s):
            t, _, _, _, _, _, k = s
            t = t * 0.5
            xn, vn, gn_, acc, rise = try_step(t)
            return t, xn, vn, gn_, acc, rise, k + 1

        # One traced trial step: the loop starts at t = 2 and halves before each trial.
        two = jnp.asarray(2.0, x.dtype)
        s0 = (two, x, v, g, jnp.asarray(False), jnp.asarray(True), 0)
        _, xn, vn, gn_, acc, _, _ = jax.lax.while_loop(
            lambda s: ~s[4] & s[5] & (s[6] < 31), ls_body, s0
        )
        take = ok_h & acc
        x, v, g = _where(take, (xn, vn, gn_), (x, v, g))
        return x, v, g, it + 1, take & ~resolved, resolved

    active = (
        (status != Status.NON_FINITE) & (status != Status.INIT_NOT_FINITE) & (status != _RUNNING)
    )
    c0 = (x0, value, g0, jnp.asarray(0), active, jnp.asarray(False))
    x, v, g, _, _, resolved = jax.lax.while_loop(lambda c: c[4] & (c[3] < max_iter), body, c0)
    better = jnp.max(jnp.abs(g)) <= tol
    status = jnp.where(active & (better | resolved), Status.CONVERGED, status).astype(status.dtype)
    return unravel(x), v, unravel(g), status


def epoch_batches(key, epoch, n: int, batch_size: int, dtype=jnp.float32):
    """Batches of epoch ``epoch``: ``(idx, mask)``, each ``(n_batches, batch_size)``.

    ``idx`` is a permutation of ``range(n)`` drawn from ``fold_in(key, epoch)``, padded
    with index 0 where ``mask`` is 0, so every observation appears once per epoch.
    """
    n_batches = -(-n // batch_size)
    pad = n_batches * batch_size - n
    perm = jax.random.permutation(jax.random.fold_in(key, epoch), n)
    idx = jnp.concatenate([perm, jnp.zeros((pad,), perm.dtype)]).reshape(n_batches, batch_size)
    mask = jnp.concatenate([jnp.ones((n,), dtype), jnp.zeros((pad,), dtype)])
    return idx, mask.reshape(n_batches, batch_size)


def sgd_step(logp, transforms, opt, carry, obs: tuple, w):
    """One minibatch step on the batch ``(obs, w)``; ``carry = (u, opt_state, bad)``.

    Returns ``(carry, value * sum(w))``. A batch whose weights are all zero (padding) is
    skipped: its mean NLL is 0/0. A non-finite value, gradient or update freezes the fit
    and sets ``bad``. ``opt`` must accept extra args (``optax.with_extra_args_support``).
    Shared by in-memory, sharded and streamed minibatch fits: one step, one kernel.
    """
    u, state, bad = carry
    f = lambda v: mean_nll(logp, constrain(v, transforms), obs, w)  # noqa: E731
    value, grad = jax.value_and_grad(f)(u)
    wsum = jnp.sum(w)
    updates, new_state = opt.update(grad, state, u, value=value, grad=grad, value_fn=f)
    new_u = optax.apply_updates(u, updates)
    take = wsum > 0
    ok = ~bad & _all_finite(value, grad, new_u)
    u, state = _where(take & ok, (new_u, new_state), (u, state))
    return (u, state, bad | (take & ~ok)), jnp.where(take, value * wsum, 0.0)


class MinibatchState(NamedTuple):
    """A minibatch fit between epochs (what a checkpoint stores, with the key)."""

    u: Any
    opt_state: Any
    bad: jax.Array
    history: jax.Array  # mean NLL of each epoch; NaN for epochs not run yet


def minibatch_init(opt, u0, epochs: int, dtype) -> MinibatchState:
    opt = optax.with_extra_args_support(opt)
    return MinibatchState(u0, opt.init(u0), jnp.asarray(False), jnp.full((epochs,), jnp.nan, dtype))


def minibatch_epochs(
    logp,
    transforms,
    opt,
    state: MinibatchState,
    data,
    weights,
    key,
    batch_size: int,
    start,
    stop,
    layout=None,
) -> MinibatchState:
    """Runs epochs ``start <= e < stop`` of a minibatch fit from ``state``.

    Epoch ``e`` visits every observation once, in the order ``epoch_batches(key, e)``,
    so a fit run in chunks of epochs (checkpointing) takes the steps of one run.
    ``start``/``stop`` may be traced: one compiled program serves every chunk.
    ``layout`` (see ``mlefit.shard``) maps observation ``i`` of the unpadded data to its
    row in padded, sharded ``data``: the permutation covers the real observations only,
    so a sharded fit takes the steps of the unsharded one.
    """
    opt = optax.with_extra_args_support(opt)
    n = data[0].shape[0] if layout is None else layout.n_obs
    n_rows = data[0].shape[0]
    w_full = jnp.ones((n_rows,), jnp.result_type(float)) if weights is None else weights

    def step(c, batch):
        idx, mask = batch
        obs = tuple(a[idx] for a in data)
        return sgd_step(logp, transforms, opt, c, obs, mask * w_full[idx])

    def epoch(e, s: MinibatchState) -> MinibatchState:
        idx, mask = epoch_batches(key, e, n, batch_size, w_full.dtype)
        if layout is not None:
            idx = layout(idx)
        (u, opt_state, bad), weighted = jax.lax.scan(step, (s.u, s.opt_state, s.bad), (idx, mask))
        value = jnp.sum(weighted) / jnp.sum(w_full)
        return MinibatchState(u, opt_state, bad, s.history.at[e].set(value.astype(s.history.dtype)))

    _, state = jax.lax.while_loop(
        lambda c: c[0] < stop,
        lambda c: (c[0] + 1, epoch(c[0], c[1])),
        (jnp.asarray(start, jnp.int32), state),
    )
    return state


def minibatch_finish(logp, transforms, state: MinibatchState, data, weights, tol, steps):
    """Full-data NLL and gradient at the last iterate, and the status of a minibatch fit."""
    value, grad = jax.value_and_grad(objective(logp, transforms, data, weights))(state.u)
    finite = _all_finite(value, grad)
    status = jnp.where(
        state.bad | ~finite,
        Status.NON_FINITE,
        jnp.where(_max_norm(grad) <= tol, Status.CONVERGED, Status.MAX_STEPS),
    ).astype(jnp.int32)
    return state.u, value, grad, jnp.asarray(steps, jnp.int32), status, state.history


def minibatch_history_dtype(u0, weights):
    return jnp.result_type(
        *jax.tree_util.tree_leaves(u0), jnp.result_type(float) if weights is None else weights
    )


def minibatch_loop(
    logp,
    transforms,
    opt,
    u0,
    data,
    weights,
    key,
    batch_size: int,
    epochs: int,
    tol,
    layout=None,
):
    """Minibatch optimisation: ``epochs`` passes, each a fresh permutation from ``key``.

    Every observation is used exactly once per epoch; the last batch is padded with
    zero-weight entries so all batches share one compiled step.
    """
    state = minibatch_init(opt, u0, epochs, minibatch_history_dtype(u0, weights))
    state = minibatch_epochs(
        logp, transforms, opt, state, data, weights, key, batch_size, 0, epochs, layout
    )
    n = data[0].shape[0] if layout is None else layout.n_obs
    steps = epochs * -(-n // batch_size)
    return minibatch_finish(logp, transforms, state, data, weights, tol, steps)


def use_polish(opt, u0, n_obs: int) -> bool:
    """Newton polish for the default optimiser on problems where a Hessian is cheap."""
    p = sum(x.size for x in jax.tree_util.tree_leaves(u0))
    # == not `is`: jit rebuilds the optimiser NamedTuple from its (static) functions.
    return opt == default_optimizer() and n_obs * p * p <= _POLISH_BUDGET


def with_summary(transforms, out):
    """``out = (u, value, grad, steps, status, history)`` plus the constrained estimate and
    the gradient's max-norm: computed inside the compiled fit, not eagerly after it (each
    eager operation is a small program of its own to compile or look up)."""
    return (*out, constrain(out[0], transforms), _max_norm(out[2]))


def _fit_full(logp, transforms, opt, max_steps, record_history, u0, data, weights, tol):
    f = objective(logp, transforms, data, weights)
    if opt == NEWTON:
        out = newton_loop(f, u0, tol, max_steps, record_history, eig=True)
    else:
        out = full_batch_loop(f, opt, u0, tol, max_steps, record_history, polish=False)
    return with_summary(transforms, out)


def fit_fingerprint(logp, transforms, solver, options: tuple, params, obs):
    """The static part of a compiled fit as a string (``mlefit._compiled``), or ``None``
    for what cannot be described: an optimiser other than mlefit's own.

    ``params``, ``obs``: shapes and dtypes of ONE fit's parameters and ONE observation.
    """
    from ._compiled import model_fingerprint

    if isinstance(solver, str):
        solver_desc = solver
    elif solver == default_optimizer():
        solver_desc = "default"
    else:
        return None
    model = model_fingerprint(logp, params, obs)
    if model is None:
        return None
    kinds = [(type(t).__qualname__, getattr(t, "low", None), getattr(t, "high", None))
             for t in transforms]
    return repr((model, kinds, solver_desc, options))


def avals(tree, skip: int = 0):
    """Shapes and dtypes of the leaves of ``tree``, without the first ``skip`` axes."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x)[skip:], x.dtype), tree)


def _fit_full_compiled(logp, transforms, opt, u0, data, weights, tol, max_steps, record_history):
    """The full-batch fit, compiled once per model, options and input shapes."""
    from ._compiled import compiled_call

    static = (logp, transforms, opt, max_steps, record_history)
    return compiled_call(
        _fit_full, static, (u0, data, weights, tol),
        lambda: fit_fingerprint(
            logp, transforms, opt, static[3:], avals(u0), avals(data, skip=1)
        ),
    )


@eqx.filter_jit
def _polish_compiled(logp, transforms, out, data, weights, tol):
    f = objective(logp, transforms, data, weights)
    u, value, grad, steps, status, hist = out[:6]
    u, value, grad, status = newton_polish(f, u, value, grad, status, tol)
    return with_summary(transforms, (u, value, grad, steps, status, hist))


def _maybe_polish(logp, transforms, opt, out, data, weights, tol, u0, refit: bool):
    """A default fit that stalled or ran out of steps on a small problem: Newton-polished;
    if that does not converge and ``refit`` (the caller did not cap ``max_steps``),
    refitted from ``u0`` with ``optimizer="newton"``. The refit is returned (its own
    steps and history) when it reached a lower NLL, or converged at the same NLL within
    rounding. Both are compiled on demand, so fits that converge pay nothing.

    L-BFGS stalls where parameters have very different scales or the NLL is a narrow
    curved valley (NIST's Nelson, MGH10, MGH17, Lanczos3, Misra1b/c); damped Newton with
    Marquardt's scaling does not (see tests/test_nist.py).
    """
    u, status = out[0], out[4]
    if int(status) not in (Status.STALLED, Status.MAX_STEPS) or not use_polish(
        opt, u, data[0].shape[0]
    ):
        return out
    out = _polish_compiled(logp, transforms, out, data, weights, tol)
    if int(out[4]) == Status.CONVERGED or not refit:
        return out
    new = _fit_full_compiled(
        logp, transforms, NEWTON, u0, data, weights, tol, DEFAULT_MAX_STEPS_NEWTON,
        out[5] is not None,
    )
    v_old, v_new = float(out[1]), float(new[1])
    rounding = 8 * np.finfo(np.asarray(out[1]).dtype).eps * max(abs(v_old), 1.0)
    if v_new < v_old - rounding or (int(new[4]) == Status.CONVERGED and v_new <= v_old + rounding):
        return new
    return out


@eqx.filter_jit
def _start_compiled(logp, transforms, opt, u0, data, weights, tol, max_steps, record_history):
    f = objective(logp, transforms, data, weights)
    return loop_start(f, opt, u0, tol, max_steps, record_history)


@eqx.filter_jit
def _run_compiled(logp, transforms, opt, carry, data, weights, tol, max_steps, limit):
    f = objective(logp, transforms, data, weights)
    return loop_run(f, opt, carry, tol, max_steps, limit)


@eqx.filter_jit
def _finish_compiled(logp, transforms, opt, carry, data, weights, tol):
    f = objective(logp, transforms, data, weights)
    return with_summary(transforms, loop_finish(f, carry, tol, polish=False))


def _fit_full_chunked(
    logp, transforms, opt, u0, data, weights, tol, max_steps, record_history, progress, refit
):
    """The full-batch fit run as compiled chunks of steps, with a progress bar between them.

    Chunks grow until each takes about 0.2 s, so the bar costs nothing measurable. Ctrl-C
    between or during a chunk ends the fit with the best point so far and status
    ``INTERRUPTED``.
    """
    static = (logp, transforms, opt)
    data, weights = jax.device_put((data, weights))  # once, not once per chunk
    carry = _start_compiled(*static, u0, data, weights, tol, max_steps, record_history)
    bar = _progress_bar(progress, unit="step")
    chunk, interrupted = 8, False
    try:
        while int(carry.status) == _RUNNING:
            t0 = time.perf_counter()
            limit = jnp.asarray(int(carry.step) + chunk, jnp.int32)
            before = int(carry.step)
            carry = _run_compiled(*static, carry, data, weights, tol, max_steps, limit)
            step = int(carry.step)
            if bar is not None:
                bar.update(step - before)
                bar.set_postfix(
                    nll=f"{float(carry.value):.8g}", grad=f"{float(_max_norm(carry.grad)):.2e}"
                )
            if time.perf_counter() - t0 < 0.1:
                chunk *= 2
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if bar is not None:
            bar.close()
    out = _finish_compiled(*static, carry, data, weights, tol)
    if not interrupted:
        out = _maybe_polish(logp, transforms, opt, out, data, weights, tol, u0, refit)
    if interrupted:
        out = (*out[:4], jnp.asarray(Status.INTERRUPTED, jnp.int32), *out[5:])
    return out


def _progress_bar(progress, unit):
    """A tqdm bar (``progress=True`` or a dict of tqdm options), or ``None``."""
    if not progress:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "progress=True needs tqdm: pip install 'mlefit[progress]' (or tqdm)"
        ) from e
    options = {"desc": "mlefit", "unit": unit, "leave": False}
    if isinstance(progress, dict):
        options.update(progress)
    return tqdm(**options)


@eqx.filter_jit
def _fit_minibatch_compiled(logp, transforms, opt, u0, data, weights, key, tol, batch_size, epochs):
    out = minibatch_loop(logp, transforms, opt, u0, data, weights, key, batch_size, epochs, tol)
    return with_summary(transforms, out)


class FitOptions(NamedTuple):
    """Validated, normalised options of a fit (shared by ``fit`` and batched fits)."""

    optimizer: Any
    batch_size: int | None
    epochs: int | None
    key: Any
    max_steps: int
    tol: float
    history: bool


def check_options(n, dtype, optimizer, batch_size, epochs, key, max_steps, tol, history):
    if optimizer is None:
        optimizer = default_optimizer()
    elif not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            f"optimizer: expected an optax GradientTransformation (e.g. optax.adam(1e-2)), "
            f"got {type(optimizer).__name__}"
        )
    if batch_size is None:
        if epochs is not None:
            raise ValueError(
                "epochs: only minibatch fits count epochs; give batch_size too, or use "
                "max_steps for a full-batch fit."
            )
    else:
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
            raise TypeError(f"batch_size: expected an int, got {type(batch_size).__name__}")
        if not 1 <= batch_size <= n:
            raise ValueError(f"batch_size: must be between 1 and n_obs={n}, got {batch_size}")
        epochs = 10 if epochs is None else epochs
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
            raise ValueError(f"epochs: must be a positive int, got {epochs!r}")
        if key is None:
            key = jax.random.key(0)
        elif not (
            isinstance(key, jax.Array)
            and (jnp.issubdtype(key.dtype, jax.dtypes.prng_key) or key.shape == (2,))
        ):
            raise TypeError("key: expected a PRNG key such as jax.random.key(0)")
    if max_steps is None:
        max_steps = DEFAULT_MAX_STEPS
    if isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer)) or max_steps < 0:
        raise ValueError(f"max_steps: must be a non-negative int, got {max_steps!r}")
    if tol is None:
        tol = default_tol(dtype)
    if not (np.isscalar(tol) and np.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol: must be a finite number >= 0, got {tol!r}")
    return FitOptions(
        optimizer,
        batch_size and int(batch_size),
        epochs and int(epochs),
        key,
        int(max_steps),
        float(tol),
        bool(history),
    )


def fit(
    model,
    data,
    init=None,
    *,
    weights=None,
    optimizer: optax.GradientTransformation | str | None = None,
    batch_size: int | None = None,
    epochs: int | None = None,
    key: jax.Array | None = None,
    max_steps: int | None = None,
    tol: float | None = None,
    history: bool = True,
    progress: bool | dict = False,
    mesh=None,
    checkpoint=None,
    checkpoint_every: int = 1,
    resume_from=None,
) -> FitResult:
    """Maximum-likelihood fit: minimises the mean NLL of ``data`` under ``model``.

    ``w* = argmin_w  nll(w),  nll(w) = -(sum_i v_i log p(obs_i; w)) / (sum_i v_i)``

    Args:
        model: ``log_prob(params, *obs) -> scalar`` for ONE observation; or an equinox
            Module with ``log_prob(self, *obs)`` (the module is the parameters; the fitted
            Module is returned); or a ready-made model from :mod:`mlefit.models`.
        data: an array (unconditional, ``log p(x)``) or a tuple ``(X, Y, ...)``
            (conditional, ``log p(y | x)``), observations on the leading axis.
        init: starting parameters (any pytree; ``Positive``/``Interval`` leaves declare
            constraints). Required for a plain function.
        weights: optional non-negative weight per observation (weighted mean NLL; a
            zero weight removes an observation exactly).
        optimizer: any optax ``GradientTransformation``; default full-batch L-BFGS
            (``optax.lbfgs`` with a weak-Wolfe line search, then a Newton polish where
            the Hessian is cheap).
            Build it once and reuse it: a new optimiser object compiles a new fit.
            ``"newton"``: damped Newton with the exact Hessian every step and
            Marquardt's scaling, ``(H + lam diag|H|) d = -g`` (full batch, default
            ``max_steps`` 1,000). For few parameters (tens) it is the robust choice
            where L-BFGS struggles: parameters on very different scales, nonlinear
            regression (NIST's StRD problems). A default fit of a small problem
            (``n_obs * n_params^2 <= 5e7``) that stalls or runs out of steps is
            refitted this way from ``init`` (unless ``max_steps`` is given); the refit
            is returned when its NLL is lower, or equal within rounding and converged.
            So is one with ``n_obs * n_params^2 <= 1e6`` that converges where the
            Hessian of the NLL is not positive definite (a flat region or a saddle);
            one that converges short of its minimum (``not_at_minimum``) takes Newton
            steps from its estimate instead. Either is kept only if it converges with a
            positive definite Hessian. Such small fits compute that Hessian (the one
            ``res.status`` and ``res.stderr`` use, cached in the result) before
            returning.
        batch_size: minibatch size; turns on minibatch SGD, reshuffled each epoch.
        epochs: passes over the data for minibatch fits (default 10).
        key: PRNG key for the shuffles (default ``jax.random.key(0)``).
        max_steps: step budget of a full-batch fit (default 10,000).
        tol: stop when the max-norm of the gradient of the mean NLL (with respect to the
            unconstrained parameters) is ``<= tol``; default 1e-9 (float64), 1e-5 (float32).
        history: record the mean NLL of every step (epoch for minibatch fits).
        progress: show a tqdm progress bar (``True``, or a dict of tqdm options such as
            ``{"delay": 1.0}``). The fit then runs as compiled chunks of steps, and
            Ctrl-C returns the best point so far with status ``INTERRUPTED``.
        mesh: a ``jax.sharding.Mesh``: shard the observations over its devices (padding
            with zero-weight copies of a real observation); parameters are replicated.
            Data already sharded, or made by ``mlefit.shard``/``mlefit.shard_local``
            (several processes), need no ``mesh``.
        checkpoint: minibatch fits: a file to save the state to every
            ``checkpoint_every`` epochs (written to a temporary file, then renamed).
        checkpoint_every: epochs between checkpoints (default 1).
        resume_from: a checkpoint file of this same fit to continue from; the resumed
            fit ends bitwise where an uninterrupted one ends.

    ``data`` may also be a stream of batches (``mlefit.ArrayStream`` over arrays or
    ``.npy`` files, or any re-iterable of batches): see ``mlefit.ArrayStream``.

    Returns:
        A :class:`FitResult`. A fit that does not converge says so in ``status``; its
        ``params`` are the best finite iterate, never NaN.

    Example:
        >>> import jax.numpy as jnp, jax.scipy.stats as st, mlefit
        >>> normal = lambda p, x: st.norm.logpdf(x, p["mu"], p["sigma"])
        >>> x = jnp.array([1.0, 2.0, 4.0])
        >>> res = mlefit.fit(normal, x, init={"mu": 0.0, "sigma": mlefit.Positive(1.0)})
        >>> round(float(res.params["mu"]), 4)
        2.3333
    """
    # Streams, sharding and checkpoints live in _stream.py, _distributed.py, _checkpoint.py.
    from ._checkpoint import check_checkpoint_options, run_minibatch
    from ._distributed import as_sharded, model_data
    from ._stream import fit_source, is_source

    newton = _check_named_optimizer(optimizer, batch_size, progress, is_source(data))
    if newton:
        optimizer = None
        max_steps = DEFAULT_MAX_STEPS_NEWTON if max_steps is None else max_steps

    if is_source(data):
        return fit_source(
            model,
            data,
            init,
            weights=weights,
            optimizer=optimizer,
            batch_size=batch_size,
            epochs=epochs,
            key=key,
            max_steps=max_steps,
            tol=tol,
            history=history,
            mesh=mesh,
            checkpoint=checkpoint,
            checkpoint_every=checkpoint_every,
            resume_from=resume_from,
            progress=progress,
        )
    columns = column_names(data)  # DataFrame/Series names: they name the parameters
    data, weights, layout = as_sharded(data, weights, mesh)
    data = check_data(data)
    n = data[0].shape[0] if layout is None else layout.n_obs
    problem, init = as_problem(model, init, model_data(model, data, layout), columns=columns)
    dtype = float_dtype(data)
    u0, transforms = split_init(init, dtype)
    opts = check_options(n, dtype, optimizer, batch_size, epochs, key, max_steps, tol, history)
    if newton:
        opts = opts._replace(optimizer=NEWTON)
    check_checkpoint_options(checkpoint, checkpoint_every, resume_from, batch_size is not None)
    check_model_output(problem.logp, u0, data)  # abstract: constrained params have u's shapes
    weights = check_weights(weights, data[0].shape[0], dtype)
    tol_arr = np.asarray(opts.tol, dtype)
    # Full batch on one device: exponential families fit from sufficient statistics.
    full_logp = problem.logp
    # (Only in the default float dtype: float32 data under x64 mixes dtypes in the plan.)
    if (
        opts.batch_size is None
        and layout is None
        and _reduce_enabled()
        and dtype == jnp.dtype(jnp.result_type(float))
    ):
        full_logp = reduce_logp(problem.logp, u0, transforms, data, weights)
    if opts.batch_size is None:
        args = (full_logp, transforms, opts.optimizer, u0, data, weights, tol_arr)
        if progress:
            out = _fit_full_chunked(
                *args, opts.max_steps, opts.history, progress, refit=max_steps is None
            )
        else:
            out = _maybe_polish(
                full_logp, transforms, opts.optimizer,
                _fit_full_compiled(*args, opts.max_steps, opts.history), data, weights, tol_arr,
                u0, refit=max_steps is None,
            )
    elif checkpoint is None and resume_from is None and layout is None and not progress:
        out = _fit_minibatch_compiled(
            problem.logp,
            transforms,
            opts.optimizer,
            u0,
            data,
            weights,
            opts.key,
            tol_arr,
            opts.batch_size,
            opts.epochs,
        )
    else:  # in chunks of epochs, the same steps: checkpoints, progress, padded sharded data
        out = with_summary(transforms, run_minibatch(
            problem,
            transforms,
            opts,
            u0,
            data,
            weights,
            tol_arr,
            layout=layout,
            checkpoint=checkpoint,
            checkpoint_every=checkpoint_every,
            resume_from=resume_from,
            user_key=key,
            progress=progress,
        ))
    def result(out) -> FitResult:
        u, value, _, steps, status, hist, params, grad_norm = out
        if opts.batch_size is not None and not opts.history:
            hist = None
        if int(status) == Status.INIT_NOT_FINITE:
            raise ValueError(_init_not_finite_message(problem, init, u0, transforms, data))
        return FitResult(
            params=problem.finalize(params),
            u=u,
            nll=value,
            n_obs=n_obs(n, weights, dtype),
            status_code=status,
            steps=steps,
            grad_norm=grad_norm,
            history_buffer=hist,
            data=data,
            weights=weights,
            problem=problem,
            transforms=transforms,
            minibatch=opts.batch_size is not None,
            tol=float(opts.tol),
        )

    res = result(out)
    if opts.batch_size is None and layout is None and max_steps is None and (
        opts.optimizer == default_optimizer()
    ):
        res = _second_opinion(
            res, n,
            polish=lambda: result(
                _polish_compiled(full_logp, transforms, out, data, weights, tol_arr)
            ),
            refit=lambda: result(_fit_full_compiled(
                full_logp, transforms, NEWTON, u0, data, weights, tol_arr,
                DEFAULT_MAX_STEPS_NEWTON, opts.history,
            )),
        )
    return res


def _second_opinion(res: FitResult, n: int, polish, refit) -> FitResult:
    """Newton's second opinion on a default (L-BFGS) fit of a small problem that converged.

    - Where the Hessian of the NLL is not positive definite (a flat region or a saddle),
      the fit is redone from its start by damped Newton (``refit()``).
    - Where it is positive definite but a Newton step would still gain beyond rounding
      (status ``not_at_minimum``: e.g. a parameter in large units, whose small curvature
      lets the gradient pass ``tol`` early), exact-Hessian Newton steps continue from the
      estimate (``polish()``).

    The new fit replaces the old one only when it converged with a positive definite
    Hessian, is not short of its minimum, and its NLL is no higher, within rounding.
    L-BFGS ends on flat regions where its curvature model never saw the direction
    Newton's exact Hessian takes (NIST's BoxBOD from both starts, Rat43 and Lanczos2 from
    one). The Hessian computed here is the one ``res.status`` and ``res.stderr`` need,
    cached in the result; a fit whose status is never read pays its compilation (about
    0.3-0.7 s per model and shape), and one whose Hessian is singular by construction
    (a non-identifiable model) also pays for a refit that cannot be kept.
    """
    from ._inference import HESSIAN_ERRORS, inference_of, n_params, short_of_minimum

    p = n_params(res)
    if int(res.status_code) != Status.CONVERGED or n * p * p > _SECOND_OPINION_BUDGET:
        return res
    try:
        inf = inference_of(res)
    except HESSIAN_ERRORS:  # JAX cannot differentiate the model twice
        return res
    if bool(inf.positive_definite):
        if not bool(short_of_minimum(res, inf)):
            return res
        new = polish()
    else:
        new = refit()
    rounding = 8 * np.finfo(np.asarray(res.nll).dtype).eps * max(abs(float(res.nll)), 1.0)
    if int(new.status_code) != Status.CONVERGED or float(new.nll) > float(res.nll) + rounding:
        return res
    inf_new = inference_of(new)
    if bool(inf_new.positive_definite) and not bool(short_of_minimum(new, inf_new)):
        return new
    return res


def _check_named_optimizer(optimizer, batch_size, progress, stream: bool) -> bool:
    """Whether ``optimizer`` is ``"newton"``; ``ValueError`` for what it cannot be combined with."""
    if not isinstance(optimizer, str):
        return False
    if optimizer != NEWTON:
        raise ValueError(
            f"optimizer: the only named optimizer is 'newton', got {optimizer!r}; "
            "otherwise pass an optax GradientTransformation (e.g. optax.adam(1e-2))."
        )
    for given, what in (
        (batch_size is not None, "batch_size (minibatch fits)"),
        (bool(progress), "progress"),
        (stream, "a data stream"),
    ):
        if given:
            raise ValueError(
                f"optimizer: 'newton' is a full-batch method on data in memory (an exact "
                f"Hessian every step) and does not combine with {what}; use the default "
                "L-BFGS or an optax optimiser instead."
            )
    return True


def n_obs(n: int, weights, dtype) -> jax.Array:
    """``n``, or the sum of the weights: computed on the host where the weights are."""
    if weights is None:
        return jax.device_put(np.asarray(n, dtype))
    host = host_view(weights)
    return jnp.sum(weights) if host is None else jax.device_put(host.sum(dtype=dtype))


def _init_not_finite_message(problem, init, u0, transforms, data) -> str:
    params = constrain(u0, transforms)
    lp = np.asarray(jax.jit(logpdfs, static_argnums=0)(problem.logp, params, data))
    bad = ~np.isfinite(lp)
    where = (
        f"log p is not finite for {int(bad.sum())} of {bad.size} observations "
        f"(first at index {int(np.argmax(bad))})"
        if bad.any()
        else "the gradient is not finite"
    )
    named = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = jax.tree_util.keystr(path, simple=True, separator=".") or "<root>"
        v = np.asarray(leaf)
        named.append(f"{name}={v.tolist() if v.size <= 4 else f'<array {v.shape}>'}")
    hint = ""
    nonpos = [
        s
        for s, t in zip(named, transforms, strict=True)
        if type(t).__name__ == "Identity" and "=-" in s or s.endswith("=0.0")
    ]
    if nonpos:
        hint = (
            f" Suspects: {', '.join(nonpos)} (a scale must be > 0: declare it as "
            "mlefit.Positive(value))."
        )
    return (
        f"init: the NLL of model {problem.name!r} at the starting point is not finite: "
        f"{where}. Starting parameters: {', '.join(named)}.{hint}"
    )
