"""Fits and likelihood sums over a stream of chunks (see :mod:`mlefit._sources`).

- Minibatch SGD, ``fit(model, source, batch_size=B, optimizer=...)``: each chunk goes to
  the device once and one compiled program runs the optimiser steps over its batches
  (the step is ``mlefit``'s one ``sgd_step``). Every chunk has one shape, so nothing
  recompiles.
- Full batch, ``fit(model, source)``: L-BFGS on the host whose every NLL/gradient
  evaluation streams all chunks through one compiled chunk kernel (a Python loop over
  chunks; the optimiser's direction is optax's ``scale_by_lbfgs``, the step length a
  weak-Wolfe bisection line search). It cannot be a solver of the compiled loop
  (:mod:`mlefit._iterate`): every evaluation is a Python loop over chunks read from disk.
  It shares the loop's stopping constants (:mod:`mlefit._defaults`).
- Sums over a source with bounded memory: :func:`stream_nll`,
  :func:`stream_value_and_grad`, :func:`stream_hessian` (the Hessian of the total NLL,
  for standard errors). At most two chunks are in flight on the device.
"""

from __future__ import annotations

import functools
import math
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ._checkpoint import (
    CheckpointWriter,
    check_checkpoint_options,
    fit_identity,
    resume_state,
    saved_state,
)
from ._checks import check_data, check_model_output, float_dtype
from ._constraints import Identity, constrain, split_init
from ._defaults import NO_PROGRESS_PATIENCE as _PATIENCE
from ._defaults import STALL_TOL_FACTOR as _STALL_TOL_FACTOR
from ._diagnose import init_not_finite_message
from ._fingerprint import fingerprint, source_fingerprint
from ._information import Inference, hessian_total, inference_from_sums, information_sums
from ._likelihood import _resolve, penalised, penalty_at, total_loglik
from ._minibatch import MinibatchState, sgd_step
from ._model import AbstractModel, _ModuleLogProb, as_problem
from ._options import check_options
from ._precision import warn_if_float32
from ._progress import progress_bar
from ._result import FitResult
from ._solver_optax import LBFGS
from ._sources import ArrayStream, _as_source, _IterableSource
from ._status import Status
from ._trees import all_finite as _all_finite
from ._trees import max_norm as _max_norm
from ._trees import vdot as _vdot

__all__ = ["stream_nll", "stream_value_and_grad", "stream_hessian", "fit_source"]

# Line search of the streamed L-BFGS (weak Wolfe conditions, bisection).
_C1, _C2, _MAX_TRIALS = 1e-4, 0.9, 30

# -- compiled chunk kernels -------------------------------------------------------------
@eqx.filter_jit
def _sgd_chunk(logp, transforms, opt, carry, acc, obs, w, order, batch_size: int):
    """The optimiser steps over one chunk's batches; ``acc += (sum value*wsum, sum w)``.

    ``order`` (or ``None``: as stored) is the order of the rows; batches are consecutive.
    """
    rows = w.shape[0]
    if order is not None:
        obs, w = tuple(a[order] for a in obs), w[order]
    nb = rows // batch_size
    obs = tuple(a.reshape((nb, batch_size) + a.shape[1:]) for a in obs)
    w = w.reshape(nb, batch_size)
    opt = optax.with_extra_args_support(opt)
    carry, weighted = jax.lax.scan(
        lambda c, b: sgd_step(logp, transforms, opt, c, b[0], b[1]), carry, (obs, w)
    )
    add = lambda a, b: (a + b).astype(a.dtype)  # noqa: E731 - one dtype, one compile
    return carry, (add(acc[0], jnp.sum(weighted)), add(acc[1], jnp.sum(w)))


@eqx.filter_jit
def _sum_chunk(logp, transforms, u, obs, w, acc, order: int):
    """``acc +`` the chunk's total NLL (order 0), and its gradient in ``u`` (order 1)."""
    f = lambda v: -total_loglik(logp, constrain(v, transforms), obs, w)  # noqa: E731
    add = lambda a, b: (a + b).astype(a.dtype)  # noqa: E731 - one dtype, one compile
    if order == 0:
        return (add(acc[0], f(u)), add(acc[1], jnp.sum(w)))
    value, grad = jax.value_and_grad(f)(u)
    return (add(acc[0], value), add(acc[1], jnp.sum(w)), jax.tree.map(add, acc[2], grad))


@eqx.filter_jit
def _hessian_chunk(logp, transforms, u, obs, w, acc):
    h = hessian_total(logp, transforms, u, obs, w, chunk_size=w.shape[0])
    return acc + h


@eqx.filter_jit
def _information_chunk(logp, transforms, u, obs, w, acc, kind: str):
    """``acc +`` the chunk's ``(g_c, h_c, b_c)`` (:func:`mlefit._information.information_sums`)."""
    part = information_sums(logp, transforms, u, obs, w, kind=kind)
    return jax.tree.map(jnp.add, acc, part)


@eqx.filter_jit
def _inference_compiled(transforms, u, sums, kind: str) -> Inference:
    return inference_from_sums(transforms, u, *sums, kind=kind)


class StreamedData:
    """What a streamed :class:`~mlefit.FitResult` keeps of its data (``res.source``): the
    stream, read again for inference.

    ``analyse`` sums ``g_c``, ``h_c`` (and ``b_c`` for ``"opg"``/``"sandwich"``) chunk by
    chunk, the sums :func:`mlefit._information.analyse` takes over data in memory, then
    finishes as it does: the same covariances, standard errors and diagnostics, with
    memory for a few chunks plus ``p x p``.
    """

    def __init__(self, src):
        self.src = src

    def analyse(self, logp, transforms, u, kind: str = "observed") -> Inference:
        """Returns the :class:`~mlefit._information.Inference` at ``u`` by one pass."""
        if self.src.one_shot:
            raise ValueError(
                "data: this fit read a one-shot iterator, which cannot be read again for the "
                "Hessian that standard errors need; fit a re-iterable (a list of batches, a "
                "class with __iter__, or mlefit.ArrayStream), or call "
                "mlefit.stream_hessian(model, res.params, source) on a fresh source."
            )
        p = sum(np.size(x) for x in jax.tree_util.tree_leaves(u))
        dtype = jnp.result_type(*jax.tree_util.tree_leaves(u))
        zeros = jnp.zeros((p, p), dtype)
        acc = (jnp.zeros((p,), dtype), zeros, None if kind == "observed" else zeros)
        prev = None
        for ch in self.src.chunks(_rows_for(self.src, None)):
            acc = _information_chunk(logp, transforms, u, ch.obs, ch.w, acc, kind)
            prev = _in_flight(prev, acc[1])
        return _inference_compiled(transforms, u, acc, kind)

    def __repr__(self) -> str:
        return f"StreamedData({type(self.src).__name__}, n_obs={self.src.n_obs})"


def _in_flight(prev, new):
    """Waits for the chunk before ``new``: at most two chunks queued on the device."""
    if prev is not None:
        jax.block_until_ready(prev)
    return new


def _stream_sums(logp, transforms, u, src, rows: int, order: int):
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(u))
    zero = jnp.zeros((), dtype)
    acc = (zero, zero) if order == 0 else (zero, zero, jax.tree.map(jnp.zeros_like, u))
    prev = None
    for ch in src.chunks(rows):
        acc = _sum_chunk(logp, transforms, u, ch.obs, ch.w, acc, order)
        prev = _in_flight(prev, acc[0])
    return acc


def _rows_for(src, batch_size: int | None) -> int:
    if isinstance(src, ArrayStream):
        rows = src.chunk_size
        return rows if batch_size is None else -(-rows // batch_size) * batch_size
    if not hasattr(src, "first_rows"):
        src.sample()
    rows = src.first_rows
    return rows if batch_size is None else -(-rows // batch_size) * batch_size


def _identity_problem(model, params, src):
    """``(logp, transforms, params)`` for sums at given (constrained) parameters."""

    if isinstance(model, eqx.Module) and not isinstance(model, AbstractModel) \
            and hasattr(model, "log_prob"):
        params, static = eqx.partition(model if params is None else params,
                                       eqx.is_inexact_array)
        logp = _ModuleLogProb(static)
    else:
        logp, params = _resolve(model, params)
    dtype = float_dtype(src.sample())

    def as_float(x):
        x = jnp.asarray(x)
        return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(dtype)

    params = jax.tree.map(as_float, params)
    transforms = tuple(Identity() for _ in jax.tree_util.tree_leaves(params))
    return logp, transforms, params


# -- public sums ------------------------------------------------------------------------
def stream_nll(model, params, source) -> jax.Array:
    """Returns the mean NLL of all observations of ``source``, read chunk by chunk.

    ``nll(w) = -(sum_i v_i log p(obs_i; w)) / (sum_i v_i)``, as :func:`mlefit.nll` on the
    whole data, with memory for a few chunks only (one compiled kernel per chunk shape).

    Args:
        model: as in :func:`mlefit.nll` (a function ``log_prob(params, *obs)``, an mlefit
            model, or an equinox Module; then ``params`` may be ``None``).
        params: constrained parameters.
        source: an :class:`ArrayStream` or a re-iterable of batches.

    Example:
        >>> import jax.numpy as jnp, jax.scipy.stats as st, numpy as np, mlefit
        >>> f = lambda p, x: st.norm.logpdf(x, p["mu"], 1.0)
        >>> s = mlefit.ArrayStream(np.zeros(10), chunk_size=4)
        >>> float(mlefit.stream_nll(f, {"mu": 0.0}, s))  # = log(2 pi) / 2
        0.9189385...
    """
    src = _as_source(source)
    logp, transforms, params = _identity_problem(model, params, src)
    total, wsum = _stream_sums(logp, transforms, params, src, _rows_for(src, None), 0)
    return total / wsum


def stream_value_and_grad(model, params, source):
    """Returns ``(nll, grad)``: the mean NLL over ``source`` and its gradient in ``params``.

    ``grad = d nll / d params`` (a pytree like ``params``), summed chunk by chunk:
    ``nll = N / V`` and ``grad = (sum_chunks dN_k / dw) / V`` with ``N`` the total NLL and
    ``V = sum_i v_i``. Arguments as :func:`stream_nll`.

    Example:
        >>> import jax.scipy.stats as st, numpy as np, mlefit
        >>> f = lambda p, x: st.norm.logpdf(x, p["mu"], 1.0)
        >>> v, g = mlefit.stream_value_and_grad(f, {"mu": 0.0}, mlefit.ArrayStream(np.ones(6)))
        >>> float(g["mu"])  # d/dmu of mean (x - mu)^2 / 2 at mu = 0, x = 1
        -1.0
    """
    src = _as_source(source)
    logp, transforms, params = _identity_problem(model, params, src)
    total, wsum, grad = _stream_sums(logp, transforms, params, src, _rows_for(src, None), 1)
    return total / wsum, jax.tree.map(lambda g: g / wsum, grad)


def stream_hessian(model, params, source) -> jax.Array:
    """Returns the ``(p, p)`` Hessian of the TOTAL NLL over ``source``, summed chunk by chunk.

    ``H = d^2/dw^2 [-sum_i v_i log p(obs_i; w)]`` with ``w`` the parameters flattened by
    ``jax.flatten_util.ravel_pytree`` (JAX's order: dict keys sorted, which
    ``res.param_names`` need not follow; it follows ``init``); at the MLE its
    inverse is the covariance (observed Fisher information): ``cov = inv(H)``,
    ``stderr = sqrt(diag(cov))``. Each chunk runs ``mlefit``'s inference kernel; memory is
    a few chunks plus ``p x p``. Arguments as :func:`stream_nll`.

    Example:
        >>> import jax.scipy.stats as st, numpy as np, mlefit
        >>> f = lambda p, x: st.norm.logpdf(x, p["mu"], 2.0)
        >>> h = mlefit.stream_hessian(f, {"mu": 0.0}, mlefit.ArrayStream(np.zeros(16)))
        >>> float(h[0, 0])  # n / sigma^2
        4.0
    """
    src = _as_source(source)
    logp, transforms, params = _identity_problem(model, params, src)
    p = sum(np.size(x) for x in jax.tree_util.tree_leaves(params))
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(params))
    acc = jnp.zeros((p, p), dtype)
    prev = None
    for ch in src.chunks(_rows_for(src, None)):
        acc = _hessian_chunk(logp, transforms, params, ch.obs, ch.w, acc)
        prev = _in_flight(prev, acc)
    return acc


# -- full-batch fit over a stream: L-BFGS on the host ------------------------------------
@functools.cache
def _lbfgs_direction(memory: int):
    tx = optax.scale_by_lbfgs(memory)
    return tx, jax.jit(tx.update)


@jax.jit
def _axpy(t, d, u):
    return jax.tree.map(lambda x, y: y - t * x, d, u)


def lbfgs_host(value_and_grad, u0, tol: float, max_steps: int, memory: int = 10):
    """Minimises ``value_and_grad`` (a host function, e.g. a streamed pass) by L-BFGS.

    Direction from ``optax.scale_by_lbfgs``; step length by bisection until the weak
    Wolfe conditions hold (``f(u + t d) <= f + c1 t g.d`` and ``g(u + t d).d >= c2 g.d``).
    Returns ``(u, value, grad, steps, status, history)``; ``u`` is the best finite point.
    """
    tx, direction = _lbfgs_direction(memory)
    state = tx.init(u0)
    u = u0
    f, g = value_and_grad(u)
    history = [float(f)]
    if not bool(_all_finite(f, g)):
        return u, f, g, 0, Status.INIT_NOT_FINITE, history
    eps = float(jnp.finfo(jnp.result_type(f)).eps)
    status, stuck, step = None, 0, 0
    while status is None:
        if float(_max_norm(g)) <= tol:
            status = Status.CONVERGED
            break
        if step >= max_steps:
            status = Status.MAX_STEPS
            break
        d, state = direction(g, state, u)
        slope = -float(_vdot(g, d))
        if not slope < 0:  # not a descent direction: restart from the gradient
            state = tx.init(u)
            d, state = direction(g, state, u)
            slope = -float(_vdot(g, d))
        t, lo, hi = 1.0, 0.0, math.inf
        accepted = None
        for _ in range(_MAX_TRIALS):
            un = _axpy(t, d, u)
            fn, gn = value_and_grad(un)
            fnf = float(fn)
            slack = 4 * eps * max(abs(float(f)), 1.0)
            if not np.isfinite(fnf) or not bool(_all_finite(gn)) \
                    or fnf > float(f) + _C1 * t * slope + slack:
                hi = t
            elif -float(_vdot(gn, d)) < _C2 * slope:
                lo, accepted = t, (un, fn, gn)
            else:
                accepted = (un, fn, gn)
                break
            t = 0.5 * (lo + hi) if hi < math.inf else 2.0 * lo
        step += 1
        if accepted is None:
            gnorm = float(_max_norm(g))
            status = Status.CONVERGED if gnorm <= _STALL_TOL_FACTOR * tol else Status.STALLED
            break
        unchanged = abs(float(accepted[1]) - float(f)) <= 4 * eps * max(abs(float(f)), 1.0)
        u, f, g = accepted
        history.append(float(f))
        stuck = stuck + 1 if unchanged else 0
        if stuck >= _PATIENCE:
            gnorm = float(_max_norm(g))
            status = Status.CONVERGED if gnorm <= _STALL_TOL_FACTOR * tol else Status.STALLED
    return u, f, g, step, status, history


# -- fit over a source ---------------------------------------------------------------------
def _fit_options(src, sample, dtype, optimizer, batch_size, epochs, key, max_steps, tol,
                 history):
    if batch_size is None and optimizer == LBFGS:
        optimizer = None  # what a full-batch fit over a stream runs anyway
    if batch_size is None and optimizer is not None:
        raise ValueError(
            "optimizer: a full-batch fit over a stream uses mlefit's host L-BFGS (each "
            "evaluation streams the data); give batch_size for minibatch SGD with optimizer."
        )
    n = src.n_obs if src.n_obs is not None else np.iinfo(np.int64).max
    return check_options(n, dtype, optimizer, batch_size, epochs, key, max_steps, tol, history)


def fit_source(model, source, init, *, weights=None, optimizer=None, batch_size=None,
               epochs=None, key=None, max_steps=None, tol=None, history=True, mesh=None,
               checkpoint=None, checkpoint_every=1, resume_from=None,
               progress=False, resume_check="all", fixed=None, penalty=None) -> FitResult:
    """``mlefit.fit`` over a stream (see :func:`mlefit.fit` and :class:`ArrayStream`).

    SGD with ``progress`` shows a bar over the observations read; Ctrl-C between chunks
    ends the fit with status ``INTERRUPTED``, the last parameters, and NaN for the NLL
    and gradient norm (their full pass is skipped); a checkpoint already written stays.
    """

    if weights is not None:
        raise ValueError("weights: for a stream, give the weights to the source: "
                         "mlefit.ArrayStream(data, weights=w).")
    if mesh is not None:
        raise ValueError("mesh: a streamed fit runs on one device; shard in-memory data "
                         "with mesh=, or split the stream across processes yourself.")
    one_shot = isinstance(source, _IterableSource) and source.one_shot
    if one_shot and (batch_size is None or (epochs or 10) > 1):
        raise ValueError(
            "data: a one-shot iterator can be read only once, but this fit needs "
            f"{'several passes (full batch)' if batch_size is None else f'{epochs or 10} epochs'}"
            "; pass a re-iterable (mlefit.batches of a list of batches or of a class with "
            "__iter__, or mlefit.ArrayStream), or epochs=1 with batch_size."
        )
    src = _as_source(source)
    sample = check_data(src.sample())
    problem, init = as_problem(model, init, sample, fixed=fixed)
    dtype = float_dtype(sample)
    warn_if_float32(dtype)
    u0, transforms = split_init(init, dtype)
    opts = _fit_options(src, sample, dtype, optimizer, batch_size, epochs, key, max_steps, tol,
                        history)
    check_checkpoint_options(checkpoint, checkpoint_every, resume_from, batch_size is not None,
                             resume_check)
    check_model_output(problem.logp, u0, sample)  # abstract: constrained params have u's shapes
    if penalty is not None:  # W, the stream's total weight, read before the fit
        problem = penalised(problem, penalty, src.total_weight(),
                            jax.eval_shape(lambda u: constrain(u, transforms), u0))
    logp = problem.logp

    last = {}

    def value_and_grad(u):
        total, wsum, grad = _stream_sums(logp, transforms, u, src, rows_full, 1)
        last["wsum"] = wsum
        return total / wsum, jax.tree.map(lambda g: g / wsum, grad)

    rows_full = _rows_for(src, None)
    if opts.batch_size is None and progress:
        raise ValueError("progress: a streamed full-batch fit has no progress bar yet; "
                         "use it with batch_size (SGD).")
    if opts.batch_size is None:
        u, value, grad, steps, status, hist = lbfgs_host(value_and_grad, u0, opts.tol,
                                                         opts.max_steps)
        if status == Status.INIT_NOT_FINITE:
            raise ValueError(_stream_init_message(problem, u0, transforms, src))
        hist = jnp.asarray(hist, dtype) if opts.history else None
        n_obs = last["wsum"]
    else:
        u, hist, steps, bad, interrupted = _sgd_stream(
            problem, transforms, opts, u0, src, sample, checkpoint, checkpoint_every,
            resume_from, key, progress, resume_check,
        )
        hist = hist if opts.history else None
        nan = jnp.asarray(jnp.nan, hist.dtype if hist is not None else dtype)
        if interrupted:
            value, grad, n_obs = nan, jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), u), nan
            status = Status.INTERRUPTED
        elif one_shot:  # its one pass was the epoch: no pass is left for the NLL at u
            value, grad = nan, jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), u)
            n_obs = jnp.asarray(float(src.rows_read or 0), dtype)
            status = Status.NON_FINITE if bad else Status.MAX_STEPS
            warnings.warn(
                "data: a one-shot iterator was read once, for the epoch; the NLL and "
                "gradient at the estimate need another pass, so res.nll, loglik, AIC and "
                "BIC are NaN and the status is max_steps (no convergence test). Pass a "
                "re-iterable (mlefit.batches of a list, or mlefit.ArrayStream) to get them.",
                UserWarning, stacklevel=3)
        else:
            value, grad = value_and_grad(u)
            n_obs = last["wsum"]
            status = (Status.NON_FINITE if bad or not bool(_all_finite(value, grad))
                      else Status.CONVERGED if float(_max_norm(grad)) <= opts.tol
                      else Status.MAX_STEPS)
    return penalty_at(FitResult(
        params=problem.finalize(constrain(u, transforms)),
        u=u,
        nll=value,
        n_obs=n_obs,
        status_code=jnp.asarray(int(status), jnp.int32),
        steps=jnp.asarray(steps, jnp.int32),
        grad_norm=_max_norm(grad),
        history_buffer=hist,
        data=None,
        weights=None,
        problem=problem,
        transforms=transforms,
        minibatch=opts.batch_size is not None,
        tol=float(opts.tol),
        source=StreamedData(src),
    ))


def _stream_init_message(problem, u0, transforms, src) -> str:
    """The ``init:`` message of a streamed fit whose NLL is not finite at the start: the
    diagnosis of :mod:`mlefit._diagnose` on the first chunk where the NLL or its gradient
    is not finite (the data are finite: every chunk read was checked)."""
    rows, start = _rows_for(src, None), 0
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(u0))
    zero = jnp.zeros((), dtype)
    for c, ch in enumerate(src.chunks(rows)):
        acc = (zero, zero, jax.tree.map(jnp.zeros_like, u0))
        value, _, grad = _sum_chunk(problem.logp, transforms, u0, ch.obs, ch.w, acc, 1)
        if not bool(_all_finite(value, grad)):
            obs = tuple(a[:ch.m] for a in ch.obs)
            where = (f" in chunk {c} of the stream (rows {start} to {start + ch.m - 1}; "
                     "indices below count from the chunk's first row)")
            return init_not_finite_message(problem, u0, transforms, obs, where=where)
        start += ch.m
    return (f"init: the NLL of model {problem.name!r} at the starting point is not finite "
            "over the streamed data, but finite in every chunk: the sum overflows.")


def _sgd_stream(problem, transforms, opts, u0, src, sample, checkpoint, every, resume_from,
                user_key, progress=False, resume_check="all"):
    """SGD epochs over the stream; returns ``(u, history, steps, bad, interrupted)``."""

    opt, batch_size, epochs, key = opts.optimizer, opts.batch_size, opts.epochs, opts.key
    rows = _rows_for(src, batch_size)
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(u0), jnp.result_type(float))
    state = MinibatchState(u0, opt.init(u0), jnp.asarray(False), jnp.full((epochs,), jnp.nan,
                                                                          dtype))
    expected = fit_identity(
        kind="stream", model_name=problem.name, u=u0, transforms=transforms,
        opt_state=state.opt_state, data_shapes=[[list(s), str(d)] for s, d in src.shapes],
        n_obs=src.n_obs or 0, batch_size=batch_size, key=key,
        fingerprint=None if checkpoint is None and resume_from is None else fingerprint(
            problem.logp, u0, sample, source_fingerprint(src, sample)),
    )
    save = CheckpointWriter(checkpoint)
    start, steps = 0, 0
    if resume_from is not None:
        state, start, key, header = resume_state(resume_from, expected, state, epochs, key,
                                                 user_key, resume_check)
        steps = int(header["steps"])
    order = src.shuffle
    bar = progress_bar(progress, unit="obs")
    if bar is not None and src.n_obs is not None:
        bar.reset(total=(epochs - start) * src.n_obs)
    carry, interrupted = (state.u, state.opt_state, state.bad), False
    try:
        for e in range(start, epochs):
            zero = jnp.zeros((), dtype)
            acc, prev = (zero, zero), None
            for ch in src.chunks(rows, order, key, e):
                carry, acc = _sgd_chunk(
                    problem.logp, transforms, opt, carry, acc, ch.obs, ch.w, ch.order,
                    batch_size,
                )
                prev = _in_flight(prev, acc[0])
                steps += -(-ch.m // batch_size)
                if bar is not None:
                    bar.update(ch.m)
            history = state.history.at[e].set((acc[0] / acc[1]).astype(dtype))
            state = MinibatchState(carry[0], carry[1], carry[2], history)
            if bar is not None:
                bar.set_postfix(epoch=e + 1, nll=f"{float(history[e]):.8g}")
            if checkpoint is not None and ((e + 1 - start) % every == 0 or e + 1 == epochs):
                done = {"epoch": e + 1, "epochs": epochs, "steps": steps}
                save(dict(expected, **done), saved_state(state, key, e + 1))
    except KeyboardInterrupt:
        interrupted = True
        state = state._replace(u=carry[0], bad=carry[2])
    finally:
        if bar is not None:
            bar.close()
    return state.u, state.history, steps, bool(state.bad), interrupted


