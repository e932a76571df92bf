"""``fit``: check -> problem -> objective -> run -> result.

A full-batch fit is one compiled program: the solver's loop (:mod:`mlefit._iterate`)
and, where the Hessian is cheap, the inference at the estimate. The default solver is
chosen before compiling from the problem's size (:func:`mlefit._defaults.default_solver`):
exact-Hessian Newton for small problems, subsampled Newton for large data and moderate
parameter counts, L-BFGS otherwise. Observations are padded to
a size bucket (:mod:`mlefit._padding`), so fits of different lengths share a program.
Minibatch fits run epochs of SGD (:mod:`mlefit._minibatch`); streams, sharding and
checkpoints live in :mod:`mlefit._stream`, :mod:`mlefit._distributed` and
:mod:`mlefit._checkpoint`.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from ._checkpoint import check_checkpoint_options, run_minibatch
from ._checks import (
    check_data,
    check_model_output,
    check_weights,
    data_traced,
    float_dtype,
    is_traced,
)
from ._compiled import compiled_call, model_fingerprint
from ._constraints import constrain, split_init
from ._data import column_names
from ._defaults import DEFAULT_MAX_STEPS_NEWTON, RUNNING, default_solver, use_newton
from ._diagnose import _init_not_finite_message
from ._distributed import as_sharded, model_data
from ._implicit import argmin
from ._inference import HESSIAN_ERRORS, expected_information_of, seed_inference
from ._information import analyse_hessian, flat_bounds, flat_transform
from ._iterate import iterate_finish, iterate_init, iterate_run
from ._likelihood import check_penalty, penalised, penalty_at
from ._minibatch import minibatch_loop
from ._model import AbstractModel, as_problem
from ._newton import Newton
from ._objective import Reduced, objective, reduce_enabled, reduce_logp
from ._options import check_named_optimizer, check_options
from ._padding import pad_observations
from ._precision import warn_if_float32
from ._progress import progress_bar
from ._result import FitResult
from ._solver_optax import OptaxSolver, default_optimizer
from ._solver_subsampled import SubsampledNewton, bind_subsample
from ._sources import is_source
from ._status import Status
from ._stream import fit_source
from ._suffstats import (
    plan_for,
    reduced_mean_loglik,
    specialise,
    specialise_traced,
    suffstats,
)
from ._traced import (
    TracedFixed,
    check_traced_options,
    flat_names,
    split_fixed,
    under_transformation,
    unwrap_model,
)
from ._weights import check_weights_kind, effective_weights, resolve_weights_kind, weighted_n_obs

__all__ = ["fit", "choose_solver", "fit_fingerprint"]

# The first compiled chunk of an L-BFGS fit: at most this many steps (later chunks are
# sized to take about _CHUNK_SECONDS each, so Ctrl-C and progress bars respond).
_FIRST_CHUNK = 100
_CHUNK_SECONDS = 0.5


def fit(
    model,
    data,
    init=None,
    *,
    weights=None,
    weights_kind: str | None = None,
    optimizer: optax.GradientTransformation | str | None = None,
    batch_size: int | None = None,
    epochs: int | None = None,
    key: jax.Array | None = None,
    max_steps: int | None = None,
    tol: float | None = None,
    history: bool | None = None,
    progress: bool | dict = False,
    mesh=None,
    checkpoint=None,
    checkpoint_every: int = 1,
    resume_from=None,
    resume_check: str = "all",
    fixed: dict | None = None,
    penalty=None,
    log_prior=None,
) -> FitResult:
    """Maximum-likelihood fit: minimises the mean NLL of ``data`` under ``model``.

    ``w* = argmin_w  nll(w),  nll(w) = -(sum_i v_i log p(obs_i; w)) / (sum_i v_i)``

    (plus ``penalty(w) / sum_i v_i`` for a penalised or MAP fit, see ``penalty``).

    Args:
        model: ``log_prob(params, *obs) -> scalar`` for ONE observation; or an equinox
            Module with ``log_prob(self, *obs)`` (the module is the parameters; the fitted
            Module is returned); or a ready-made model from :mod:`mlefit.models`.
        data: an array (unconditional, ``log p(x)``) or a tuple ``(X, Y, ...)``
            (conditional, ``log p(y | x)``), observations on the leading axis.
        init: starting parameters (any pytree; ``Positive``/``Interval`` leaves declare
            constraints). Required for a plain function.
        weights: optional non-negative weight per observation (weighted mean NLL; a
            zero weight removes an observation exactly). What they mean for ``n_obs``,
            the covariance, AIC/BIC and LR tests is ``weights_kind``'s.
        weights_kind: ``"frequency"`` (the default): ``v_i`` counts repeats of
            observation ``i``; ``n_obs = sum_i v_i``, ``loglik = sum_i v_i log p_i``,
            the covariance is the inverse Hessian of ``-sum_i v_i log p_i`` (as if row
            ``i`` were repeated ``v_i`` times; statsmodels' ``freq_weights``). Left
            unset, weights that are not whole numbers give a warning.
            ``"variance"``: analytic/precision weights, only their ratios matter
            (statsmodels' ``var_weights``, Stata's ``aweight``); they are rescaled to
            ``v'_i = m v_i / sum_j v_j``, ``m`` the number of positive weights;
            ``n_obs = m``, ``loglik = sum_i v'_i log p_i``, the covariance is the inverse
            Hessian of ``-sum_i v'_i log p_i`` and robust covariances take the scores
            as ``v'_i s_i``. AIC and BIC use ``n_obs``. See :mod:`mlefit._weights`.
        optimizer: ``None`` (default): chosen from the problem's size before compiling,
            exact-Hessian Newton where a Hessian is cheap (``p <= 64`` free parameters
            and ``n_obs * p^2 <= 2e7``; ``n_obs`` counts 1 for a fit from sufficient
            statistics); subsampled Newton for large data and ``p <= 64``
            (``n_obs >= 4 m``, ``m = max(20 p, 20,000)`` sampled rows give the curvature,
            one full pass per step, converging to the MLE of all rows;
            :mod:`mlefit._solver_subsampled`); else L-BFGS (``optax.lbfgs`` with a
            weak-Wolfe line search). ``"subsampled"``: subsampled Newton whatever the size.
            ``"newton"``: damped Newton whatever the size (default ``max_steps`` 1,000):
            ``(H + lam diag|H|) d = -g`` with the exact Hessian every step,
            Marquardt's scaling and saddle-free steps where ``H`` is indefinite. Or any
            optax ``GradientTransformation`` (full batch, or minibatch with
            ``batch_size``); build it once and reuse it: a new optimiser object compiles
            a new fit.
        batch_size: minibatch size; turns on minibatch SGD, reshuffled each epoch.
        epochs: passes over the data for minibatch fits (default 10).
        key: PRNG key for the shuffles (default ``jax.random.key(0)``).
        max_steps: step budget of a full-batch fit (default 10,000; Newton 1,000).
            ``0`` returns the start, evaluated, with status ``max_steps`` (or
            ``converged`` if the start is already an optimum).
        tol: stop when the max-norm of the gradient of the mean NLL (with respect to the
            unconstrained parameters) is ``<= tol``; default 1e-9 (float64), 1e-5 (float32).
        history: record the mean NLL of every step (epoch for minibatch fits); default
            True, False inside ``jit``/``vmap``/``grad`` (a ``max_steps + 1`` buffer per fit).
        progress: show a tqdm progress bar (``True``, or a dict of tqdm options such as
            ``{"delay": 1.0}``) between compiled chunks of steps.
        mesh: a ``jax.sharding.Mesh``: shard the observations over its devices (padding
            with zero-weight copies of a real observation); parameters are replicated.
            Data already sharded, or made by ``mlefit.shard``/``mlefit.shard_local``
            (several processes), need no ``mesh``.
        checkpoint: minibatch fits: a file to save the state to every
            ``checkpoint_every`` epochs (written to a temporary file, then renamed).
            Its folder must exist and be writable (checked before compiling); a write
            that fails later gives one ``RuntimeWarning`` and the fit goes on.
        checkpoint_every: epochs between checkpoints (default 1).
        resume_from: a checkpoint file of this same fit to continue from; the resumed
            fit ends bitwise where an uninterrupted one ends. A checkpoint of another
            fit is a ``ValueError`` before fitting: other shapes, other data of the same
            shapes (checksums of strided rows and of all values), or another version of
            the model under the same name (a hash of its jaxpr).
        resume_check: what must agree with the checkpoint besides the shapes: ``"all"``
            (default: data and model), ``"model"`` (the model only: continue on new
            data on purpose), ``"shapes"`` (neither: new data or an edited model).
        fixed: ``{name: value}``: parameters held at a value, not fitted (scipy's
            ``floc``/``fscale``, iminuit's ``fixed``). A name is a whole leaf of ``init``
            (or of a ready-made model's parameters) as in ``res.param_names`` without an
            element index: ``"sigma"``, ``"prior.scale"`` (nested dicts), ``"b"`` for an
            array ``b`` (fix all of it; split ``b`` in two to fix some elements). The
            value has the parameter's shape and lies inside its constraint. Fixed
            parameters appear in ``res.params`` with their value and in ``summary()``
            marked ``(fixed)``, with std err 0 (they are constants); they are not in
            ``param_names``, ``cov``, or the parameter count ``k`` of AIC, BIC and
            ``lr_test``. A new fixed value compiles a new fit. For a ready-made model,
            ``model.fix(name=value)`` is the same model as an object of its own.
        penalty: ``f(params) -> scalar`` added to the TOTAL NLL: the fit minimises
            ``N(w) + f(w)``, i.e. the mean ``nll(w) + f(w) / n_obs`` (ridge:
            ``f = lam * sum(w**2)``). ``params`` as ``log_prob`` receives them
            (constrained, fixed values merged). ``res.loglik``, AIC and BIC are of the
            likelihood alone; ``res.penalty`` is ``f`` at the estimate, ``res.objective``
            ``N + f``, ``res.nll`` the penalised mean. Standard errors are then the
            inverse Hessian of the penalised objective: the curvature of the posterior
            at its mode (Laplace approximation) for a MAP fit, not the sampling
            covariance of the penalised estimator (which is smaller, and biased).
        log_prior: ``log pi(params)``, the same as ``penalty = -log_prior`` (MAP).

    A full-batch fit is one compiled program, shared by fits of the same model on data
    of other lengths (observations are padded with zero weights to a size bucket) and,
    with the compilation cache (on by default), by later processes. Where Newton was
    chosen, the program also returns the inference at the estimate (Hessian, covariance,
    diagnostics), so ``res.status``, ``res.stderr`` and ``res.summary()`` compile
    nothing more. Long fits run as compiled chunks of steps: Ctrl-C returns the best
    point so far with status ``interrupted``.

    ``data`` may also be a stream of batches (``mlefit.ArrayStream`` over arrays or
    ``.npy`` files): see ``mlefit.ArrayStream``.

    ``fit`` composes with JAX: inside ``jax.jit``, ``jax.vmap`` and ``jax.grad`` (traced
    data, weights, ``init`` or fixed values, or a model or penalty closing over traced
    values) it is one traced loop (no padding, chunking or cached executable; host
    checks only on concrete inputs; see :mod:`mlefit._traced`), and the estimate is
    differentiable by the implicit function theorem,
    ``dw*/dtheta = -H^-1 d(grad_w nll)/dtheta`` (:mod:`mlefit._implicit`; NaN, with a
    warning outside ``jit``, for a fit that did not converge or a singular Hessian).
    Methods that need the host (``summary``, ``stderr``, ``status``, ...) are for the
    returned result, outside the transformation.

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
    check_weights_kind(weights_kind, weights, stream=is_source(data))
    newton = check_named_optimizer(optimizer, batch_size, is_source(data))
    if newton:
        optimizer = None
        max_steps = DEFAULT_MAX_STEPS_NEWTON if max_steps is None else max_steps
    penalty = check_penalty(penalty, log_prior)
    if is_source(data) and (fixed or penalty is not None):
        raise ValueError(
            "fixed, penalty: not available for streams of batches yet; fit data in memory, "
            "or write the fixed values or the penalty into log_prob."
        )
    if data_traced(data) or is_traced(init, weights, fixed) or under_transformation():
        check_traced_options(
            max_steps=max_steps, tol=tol, history=history, epochs=epochs, key=key,
            weights_kind=weights_kind, checkpoint_every=checkpoint_every,
            batch_size=batch_size, mesh=mesh, checkpoint=checkpoint, resume_from=resume_from,
            progress=progress, stream=is_source(data) or None,
        )
        return _fit_traced(model, data, init, weights, weights_kind, optimizer, newton,
                           max_steps, tol, bool(history), fixed, penalty)
    history = True if history is None else history
    if is_source(data):
        return fit_source(
            model, data, init, weights=weights, optimizer=optimizer, batch_size=batch_size,
            epochs=epochs, key=key, max_steps=max_steps, tol=tol, history=history, mesh=mesh,
            checkpoint=checkpoint, checkpoint_every=checkpoint_every, resume_from=resume_from,
            progress=progress, resume_check=resume_check,
        )
    columns = column_names(data)  # DataFrame/Series names: they name the parameters
    data, weights, layout = as_sharded(data, weights, mesh)
    data = check_data(data)
    n = data[0].shape[0] if layout is None else layout.n_obs
    problem, init = as_problem(model, init, model_data(model, data, layout), columns=columns,
                                fixed=fixed)
    dtype = float_dtype(data)
    u0, transforms = split_init(init, dtype)
    opts = check_options(n, dtype, optimizer, batch_size, epochs, key, max_steps, tol, history)
    check_checkpoint_options(checkpoint, checkpoint_every, resume_from, batch_size is not None,
                             resume_check)
    check_model_output(problem.logp, u0, data)  # abstract: constrained params have u's shapes
    weights = check_weights(weights, data[0].shape[0], dtype)
    weights_kind = resolve_weights_kind(weights_kind, weights)
    # the fit is the same for weights of any scale; inference needs the effective ones
    weights = effective_weights(weights, weights_kind)
    problem = penalised(
        problem, penalty, float(weighted_n_obs(n, weights, dtype, weights_kind)),
        jax.eval_shape(lambda u: constrain(u, transforms), u0),
    )
    warn_if_float32(dtype)
    tol_arr = np.asarray(opts.tol, dtype)
    inference = None
    if opts.batch_size is None:
        # problem -> objective -> run, one compiled program
        solver, fit_logp = choose_solver(None if newton else opts.optimizer, newton,
                                         problem, u0, transforms, data, weights, layout)
        run = functools.partial(_full_batch, logp=fit_logp, transforms=transforms, u0=u0,
                                data=data, weights=weights, tol=tol_arr,
                                max_steps=opts.max_steps, record_history=opts.history,
                                layout=layout, progress=progress)
        out, inference = _run_with_fallback(run, solver, chosen=not newton)
    elif checkpoint is None and resume_from is None and layout is None and not progress:
        out = _fit_minibatch_compiled(
            problem.logp, transforms, opts.optimizer, u0, data, weights, opts.key, tol_arr,
            opts.batch_size, opts.epochs,
        )
    else:  # in chunks of epochs, the same steps: checkpoints, progress, padded sharded data
        out = with_summary(transforms, run_minibatch(
            problem, transforms, opts, u0, data, weights, tol_arr, layout=layout,
            checkpoint=checkpoint, checkpoint_every=checkpoint_every,
            resume_from=resume_from, user_key=key, progress=progress, resume_check=resume_check,
        ))
    # result
    u, value, _, steps, status, hist, params, grad_norm = out
    if opts.batch_size is not None and not opts.history:
        hist = None
    if int(status) == Status.INIT_NOT_FINITE:
        raise ValueError(_init_not_finite_message(problem, init, u0, transforms, data))
    res = FitResult(
        params=problem.finalize(params), u=u, nll=value,
        n_obs=weighted_n_obs(n, weights, dtype, weights_kind),
        status_code=status, steps=steps, grad_norm=grad_norm, history_buffer=hist,
        data=data, weights=weights, weights_kind=weights_kind, problem=problem,
        transforms=transforms,
        minibatch=opts.batch_size is not None, tol=float(opts.tol),
    )
    if inference is not None and expected_information_of(problem) is None:
        seed_inference(res, inference)
    return penalty_at(res)


def choose_solver(optimizer, newton: bool, problem, u0, transforms, data, weights, layout,
                  reduce: bool = True, n_eff: int | None = None):
    """``(solver, logp)``: the solver of a full-batch fit and the log-density it minimises
    (:class:`~mlefit._objective.Reduced` where sufficient statistics apply).

    ``optimizer=None`` and not ``newton``: :class:`~mlefit._newton.Newton` where
    :func:`~mlefit._defaults.use_newton` says a Hessian is cheap, else L-BFGS; a model
    that declares its likelihood not smooth (``smooth = False``: kinks, where the Hessian
    says nothing) is fitted by L-BFGS; :class:`~mlefit._solver_subsampled.SubsampledNewton`
    only when asked for (``optimizer="subsampled"``). ``reduce``: try the
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
    if default_solver(n_eff, p) == "newton" and getattr(problem.source, "smooth", True):
        return Newton(eig=True, restart=True), fit_logp
    return OptaxSolver(default_optimizer()), fit_logp


def _with_inference(solver) -> bool:
    """Inference in the fit's program: where Newton runs (its last Hessian is the one
    inference needs, ``n_w`` times the mean NLL's)."""
    return isinstance(solver, Newton)


def _run_with_fallback(run, solver, chosen: bool):
    """``run(solver)``, or with L-BFGS where Newton cannot work for this model.

    Two models cannot be fitted by Newton: one JAX differentiates once but not twice (no
    second-derivative rule, a ``custom_vjp``, a host callback: found while tracing, before
    anything compiles), and one whose Hessian is not finite anywhere Newton looked (an
    ordered model with +-inf end cut points: Newton stalls at its start). Where the
    default chose Newton (``chosen``), such a model is fitted by L-BFGS instead; where
    the user asked for Newton, the first raises an error that says so.
    """
    if not isinstance(solver, Newton):
        return run(solver)[:2]
    lbfgs = OptaxSolver(default_optimizer())
    try:
        out, inference, hess_finite = run(solver)
    except HESSIAN_ERRORS as e:
        if not chosen:
            raise ValueError(
                "optimizer: 'newton' needs second derivatives of the model, which JAX "
                f"cannot take here ({type(e).__name__}: {e}); use the default or an optax "
                "optimizer (first derivatives only)."
            ) from e
        return run(lbfgs)[:2]
    if chosen and not hess_finite and int(out[4]) != Status.CONVERGED:
        return run(lbfgs)[:2]
    return out, inference


def _full_batch(solver, logp, transforms, u0, data, weights, tol, max_steps: int,
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
    static = (logp, transforms, solver, max_steps, record_history,
              _with_inference(solver))
    params_aval, obs_aval = avals(u0), avals(data, skip=1)
    p = sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(u0))
    small = _is_small(data, p)

    def call(fn, dynamic):
        fingerprint = lambda: fit_fingerprint(  # noqa: E731
            logp, transforms, solver, static[3:], params_aval, obs_aval
        )
        return _wait(compiled_call(fn, static, dynamic, fingerprint, small=small))

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
        if opt != default_optimizer():
            return None
        solver_desc = "default"
    model = model_fingerprint(logp, params, obs)
    if model is None:
        return None
    kinds = [(type(t).__qualname__, getattr(t, "low", None), getattr(t, "high", None))
             for t in transforms]
    return repr((model, kinds, solver_desc, options))


def avals(tree, skip: int = 0):
    """Shapes and dtypes of the leaves of ``tree``, without the first ``skip`` axes."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x)[skip:], x.dtype), tree)


def with_summary(transforms, out):
    """``out = (u, value, grad, steps, status, history)`` plus the constrained estimate and
    the gradient's max-norm, computed inside the compiled call."""
    grad = out[2]
    norm = jnp.max(jnp.stack([jnp.max(jnp.abs(g)) for g in jax.tree_util.tree_leaves(grad)]))
    return (*out, constrain(out[0], transforms), norm)


@eqx.filter_jit
def _fit_minibatch_compiled(logp, transforms, opt, u0, data, weights, key, tol, batch_size, epochs):
    out = minibatch_loop(logp, transforms, opt, u0, data, weights, key, batch_size, epochs, tol)
    return with_summary(transforms, out)


# ---------------------------------------------------------------------------------------
# The traced fit: inside jit / vmap / grad (see mlefit/_traced.py)
# ---------------------------------------------------------------------------------------
def _fit_traced(model, data, init, weights, weights_kind, optimizer, newton: bool,
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
                              transforms, data, weights, None, reduce=False, n_eff=n_eff)
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
