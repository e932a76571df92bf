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

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ._checkpoint import check_checkpoint_options, run_minibatch
from ._checks import (
    check_data,
    check_model_output,
    check_weights,
    data_traced,
    float_dtype,
    is_traced,
)
from ._constraints import constrain, split_init
from ._data import check_aligned, column_names, named_arguments
from ._defaults import DEFAULT_MAX_STEPS_NEWTON
from ._diagnose import _init_not_finite_message
from ._distributed import as_sharded, model_data
from ._fit_traced import fit_traced
from ._inference import expected_information_of, seed_inference
from ._likelihood import check_penalty, penalised, penalty_at
from ._minibatch import minibatch_loop
from ._model import as_problem
from ._objective import objective
from ._options import check_named_optimizer, check_options
from ._precision import warn_if_float32
from ._program import full_batch, run_with_fallback
from ._result import FitResult
from ._solver_subsampled import SubsampledNewton
from ._solvers import choose_solver
from ._sources import is_source
from ._status import Status
from ._stream import fit_source
from ._traced import (
    check_traced_options,
    under_transformation,
)
from ._weights import check_weights_kind, effective_weights, resolve_weights_kind, weighted_n_obs

__all__ = ["fit"]



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
            (``n_obs * p >= 8e7`` and ``n_obs >= 10 m``; ``m = max(20 p, 20,000)``
            sampled rows give the curvature, one full pass over the data per step,
            converging to the MLE of all rows; :mod:`mlefit._solver_subsampled`); else
            L-BFGS (``optax.lbfgs`` with a weak-Wolfe line search). ``"subsampled"``:
            subsampled Newton whatever the size, or ``mlefit.SubsampledNewton(m=...,
            seed=...)`` to choose the subsample's size and draw. ``"lbfgs"``: L-BFGS
            whatever the size.
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
            the model under the same name (a hash of its jaxpr). The optimiser's
            hyperparameters are not checked (its state's structure is): resuming with
            another learning rate continues with it.
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
            ``model.fix(name=value)`` is the same model as an object of its own. Works
            over streams too, as does ``penalty``.
        penalty: ``f(params) -> scalar`` added to the TOTAL NLL: the fit minimises
            ``N(w) + f(w)``, i.e. the mean ``nll(w) + f(w) / n_obs`` (ridge:
            ``f = lam * sum(w**2)``). ``params`` as ``log_prob`` receives them
            (constrained, fixed values merged). ``res.loglik``, AIC and BIC are of the
            likelihood alone; ``res.penalty`` is ``f`` at the estimate, ``res.objective``
            ``N + f``, ``res.nll`` the penalised mean. Standard errors are then the
            inverse Hessian of the penalised objective: the curvature of the posterior
            at its mode (Laplace approximation) for a MAP fit, not the sampling
            covariance of the penalised estimator (which is smaller, and biased).
            Over a stream, ``n_obs`` (the total weight) is read before the fit: a
            one-shot iterator is refused.
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
    if data_traced(data) or is_traced(init, weights, fixed) or under_transformation():
        check_traced_options(
            max_steps=max_steps, tol=tol, history=history, epochs=epochs, key=key,
            weights_kind=weights_kind, checkpoint_every=checkpoint_every,
            batch_size=batch_size, mesh=mesh, checkpoint=checkpoint, resume_from=resume_from,
            progress=progress, stream=is_source(data) or None,
        )
        return fit_traced(model, data, init, weights, weights_kind, optimizer, newton,
                           max_steps, tol, bool(history), fixed, penalty)
    history = True if history is None else history
    if is_source(data):
        return fit_source(
            model, data, init, weights=weights, optimizer=optimizer, batch_size=batch_size,
            epochs=epochs, key=key, max_steps=max_steps, tol=tol, history=history, mesh=mesh,
            checkpoint=checkpoint, checkpoint_every=checkpoint_every, resume_from=resume_from,
            progress=progress, resume_check=resume_check, fixed=fixed, penalty=penalty,
        )
    columns = column_names(data)  # DataFrame/Series names: they name the parameters
    if weights is not None:  # a weights Series pairs with the data's rows by position too
        check_aligned([*named_arguments(data), ("weights", weights)])
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
        run = functools.partial(full_batch, logp=fit_logp, transforms=transforms, u0=u0,
                                data=data, weights=weights, tol=tol_arr,
                                max_steps=opts.max_steps, record_history=opts.history,
                                layout=layout, progress=progress)
        def first_order():
            f = objective(fit_logp, transforms, data, weights)
            jax.eval_shape(jax.grad(f), u0)

        out, inference = run_with_fallback(
            run, solver, chosen=not newton and not isinstance(opts.optimizer, SubsampledNewton),
            first_order=first_order)
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


