"""The compiled program of a full-batch fit and its driver.

One program runs the solver's loop (:mod:`mlefit._iterate`) on the padded data
(:mod:`mlefit._padding`); a long fit continues in chunks (a second program), between
which a progress bar moves and Ctrl-C returns the best point so far. Where the solver is
Newton the program also returns its last Hessian, analysed on the host.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ._checks import (
    float_dtype,
)
from ._compiled import compiled_call, model_fingerprint
from ._constraints import constrain
from ._defaults import RUNNING
from ._inference import HESSIAN_ERRORS
from ._information import analyse_hessian, flat_bounds, flat_transform
from ._iterate import iterate_finish, iterate_init, iterate_run
from ._newton import Newton
from ._objective import objective
from ._padding import pad_observations
from ._progress import progress_bar
from ._solver_optax import OptaxSolver, default_optimizer, lbfgs_optimizer
from ._solver_subsampled import SubsampledNewton, bind_subsample, on_shards
from ._status import Status

__all__ = ["full_batch", "run_with_fallback", "fit_fingerprint", "avals"]

# The first compiled chunk of an L-BFGS fit: at most this many steps (later chunks are
# sized to take about _CHUNK_SECONDS each, so Ctrl-C and progress bars respond).
_FIRST_CHUNK = 100
_CHUNK_SECONDS = 0.5


def _with_inference(solver) -> bool:
    """Inference in the fit's program: where Newton runs (its last Hessian is the one
    inference needs, ``n_w`` times the mean NLL's)."""
    return isinstance(solver, Newton)


def run_with_fallback(run, solver, chosen: bool, first_order=None):
    """``run(solver)``, or with L-BFGS where a second-order solver cannot work for this model.

    Two models cannot be fitted by Newton or subsampled Newton: one JAX differentiates
    once but not twice (no second-derivative rule, a ``custom_vjp``, a host callback:
    found while tracing, before anything compiles), and one whose Hessian is not finite
    anywhere Newton looked (an ordered model with +-inf end cut points: Newton stalls at
    its start). Where the default chose the solver (``chosen``), such a model is fitted
    by L-BFGS instead, and so is one where subsampled Newton stalled; where the user
    asked for the solver, the first raises an error that says so, once ``first_order()``
    (tracing the gradient alone, nothing compiled) has shown that the model is
    differentiable once: an error there is the model's own and is raised as it is.
    """
    if not isinstance(solver, (Newton, SubsampledNewton)):
        return run(solver)[:2]
    lbfgs = OptaxSolver(default_optimizer())
    name = "newton" if isinstance(solver, Newton) else "subsampled"
    try:
        out, inference, hess_finite = run(solver)
    except HESSIAN_ERRORS as e:
        if not chosen:
            if first_order is not None:
                first_order()  # a model that fails at first order: its own error
            raise ValueError(
                f"optimizer: {name!r} needs second derivatives of the model, which JAX "
                f"cannot take here ({type(e).__name__}: {e}); use the default or an optax "
                "optimizer (first derivatives only)."
            ) from e
        return run(lbfgs)[:2]
    if chosen and not hess_finite and int(out[4]) != Status.CONVERGED:
        return run(lbfgs)[:2]
    if chosen and isinstance(solver, SubsampledNewton) and int(out[4]) == Status.STALLED:
        return run(lbfgs)[:2]  # the subsample's curvature could not find a descent
    return out, inference


def full_batch(solver, logp, transforms, u0, data, weights, tol, max_steps: int,
                record_history: bool, layout, progress):
    """Runs the full-batch fit program; returns ``(out, inference or None, hess_finite)``.

    One compiled program runs the whole fit (Newton: every step; L-BFGS: the first 100
    steps); a fit still running after it continues in chunks of about 0.5 s (a second
    program, compiled when first needed). Between chunks a progress bar is updated and
    Ctrl-C ends the fit with the best point so far (status ``interrupted``).
    """
    dtype = float_dtype(data)
    if layout is None:
        data, weights = pad_observations(data, weights, dtype)
    solver = on_shards(solver, data)  # subsampled Newton: its subsample drawn per shard
    static = (logp, transforms, solver, max_steps, record_history,
              _with_inference(solver))
    params_aval, obs_aval = avals(u0), avals(data, skip=1)
    p = sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(u0))
    # LLVM -O0 for a small fit, -O1 for subsampled Newton (_compiled.compiler_options)
    level = 0 if _is_small(data, p) else (1 if isinstance(solver, SubsampledNewton) else None)

    def call(fn, dynamic):
        fingerprint = lambda: fit_fingerprint(  # noqa: E731
            logp, transforms, solver, static[3:], params_aval, obs_aval
        )
        return _wait(compiled_call(fn, static, dynamic, fingerprint, opt_level=level))

    bar = progress_bar(progress, unit="step")
    if bar is not None:
        first = min(max_steps, 8)
    elif isinstance(solver, Newton):
        first = max_steps
    else:
        first = min(max_steps, _FIRST_CHUNK)
    out = inference = None
    try:
        t0 = time.perf_counter()
        carry, out, inference = call(_program, (u0, data, weights, tol, _steps(first)))
        chunk = first
        while int(carry.status) == RUNNING:
            step = int(carry.step)
            if bar is not None:
                bar.update(step - bar.n)
                bar.set_postfix(nll=f"{float(carry.best_value):.8g}")
            elapsed = max(time.perf_counter() - t0, 1e-4)
            chunk = int(np.clip(chunk * _CHUNK_SECONDS / elapsed, max(chunk // 2, 1), chunk * 4))
            t0 = time.perf_counter()
            carry, out, inference = call(
                _program_continue, (u0, data, weights, tol, _steps(step + chunk), carry)
            )
    except KeyboardInterrupt:
        if out is None:  # nothing finished yet: nothing to return
            raise
        out = (*out[:4], jnp.asarray(Status.INTERRUPTED, jnp.int32), *out[5:])
        inference = None
    finally:
        if bar is not None:
            if out is not None:
                bar.update(int(out[3]) - bar.n)
            bar.close()
    hess_finite = True
    if inference is not None:  # analysed on the host: p <= 64, no program to compile
        hess, grad, c_flat, jac, d2, ready, hess_finite = jax.device_get(inference)
        low, high = flat_bounds(transforms, u0, c_flat.dtype)
        inference = analyse_hessian(hess, grad, c_flat, jac, d2, low, high) if ready else None
        hess_finite = bool(hess_finite)
    return out, inference, hess_finite


def _is_small(data, p: int) -> bool:
    """A fit whose steps take well under a millisecond: compiled for compile time (see
    :func:`mlefit._compiled.compiler_options`): ``n * p <= 2^16`` data elements per pass
    (with ``p`` the parameter count, so that a Hessian stays cheap too)."""
    size = sum(int(np.prod(a.shape)) for a in data)
    return size * max(p, 1) <= 1 << 16


def _steps(k: int):
    return np.asarray(k, np.int32)


def _wait(tree):
    """Blocks until a compiled call's results are ready, in Python: Ctrl-C is handled at
    once (a call blocked in XLA would hold it until the call returns)."""
    leaves = [x for x in jax.tree_util.tree_leaves(tree) if isinstance(x, jax.Array)]
    if leaves:
        probe, pause = leaves[0], 5e-5
        while not probe.is_ready():
            time.sleep(pause)
            pause = min(2 * pause, 2e-3)
    return tree


def _program(logp, transforms, solver, max_steps, record_history, with_inference,
             u0, data, weights, tol, limit):
    """The fit's compiled program: start, steps up to ``limit``, outputs, inference."""
    return _program_continue(logp, transforms, solver, max_steps, record_history,
                             with_inference, u0, data, weights, tol, limit, None)


def _program_continue(logp, transforms, solver, max_steps, record_history, with_inference,
                      u0, data, weights, tol, limit, carry):
    """Continues a fit from ``carry`` (or starts it, ``carry=None``) up to ``limit`` steps.

    Returns ``(carry, out, inference)`` with ``out = (u, value, grad, steps, status,
    history, params, grad_norm)`` of the iterate so far (the best one unless converged)
    and the :class:`~mlefit._information.Inference` at it (NaN while still running) or
    ``None`` (``with_inference`` False).
    """
    f = objective(logp, transforms, data, weights)
    x0, unravel = ravel_pytree(u0)
    ff = lambda x: f(unravel(x))  # noqa: E731
    if isinstance(solver, SubsampledNewton):  # its subsample objective, drawn in-program
        solver = bind_subsample(solver, logp, transforms, unravel, x0.size, data, weights)
    if carry is None:
        carry = iterate_init(solver, ff, x0, tol, max_steps, record_history)
    carry = iterate_run(solver, ff, carry, tol, max_steps, limit)
    x, value, grad, steps, status, hist = iterate_finish(solver, carry)
    u = unravel(x)
    grad_norm = jnp.max(jnp.abs(grad)) if grad.size else jnp.zeros((), grad.dtype)
    out = (u, value, unravel(grad), steps, status, hist, constrain(u, transforms), grad_norm)
    inference = None
    if with_inference:  # Newton's Hessian at its last iterate, the one returned
        hess, exact = solver.hessian(carry.state)
        total = jnp.sum(weights) if weights is not None else data[0].shape[0]
        current = solver.current(carry.state)[0]  # the Hessian is the current iterate's
        ready = (status != RUNNING) & exact & jnp.all(current == x)
        inference = (total * hess, total * grad, *flat_transform(transforms, u), ready, exact)
    return carry, out, inference


def fit_fingerprint(logp, transforms, solver, options: tuple, params, obs):
    """The static part of a compiled fit as a string (``mlefit._compiled``), or ``None``
    for what cannot be described: an optimiser other than mlefit's own.

    ``params``, ``obs``: shapes and dtypes of ONE fit's parameters and ONE observation.
    """
    if isinstance(solver, (Newton, SubsampledNewton)):
        solver_desc = repr(solver)
    elif isinstance(solver, str):
        solver_desc = solver
    else:
        opt = solver.optimizer if isinstance(solver, OptaxSolver) else solver
        if opt == default_optimizer():
            solver_desc = "default"
        elif opt == lbfgs_optimizer():
            solver_desc = "lbfgs"
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


