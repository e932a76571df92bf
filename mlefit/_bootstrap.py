"""Parametric bootstrap: simulate from the fitted model, refit every replicate with fit_many."""

from __future__ import annotations

import copy
import inspect
import warnings
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.flatten_util import ravel_pytree

from ._constraints import constrain, is_constraint
from ._inference import param_order_of
from ._labelled import LabelledArray, optional_pandas
from ._many import fit_many
from ._report import CONFINT_COLUMNS
from ._result import FitResult
from ._status import Status

__all__ = ["bootstrap", "Bootstrap"]


class Bootstrap(NamedTuple):
    """The result of :func:`bootstrap` (NumPy arrays; pytrees shaped like ``res.params``).

    Attributes:
        stderr: bootstrap standard errors, the standard deviation (``ddof=1``) of the
            converged replicate estimates, per parameter.
        intervals: percentile intervals at ``level``, each leaf of shape
            ``param.shape + (2,)`` (``[..., 0]`` lower, ``[..., 1]`` upper). Formerly the
            attribute ``confint``, which is now a method as on :class:`FitResult`.
        estimates: the replicate estimates, a leading axis of size ``n``.
        converged: ``(n,)`` whether each refit converged (only those enter the statistics).
        n_failed: number of refits that did not converge.
        level: the coverage of ``intervals`` and the default of ``confint``.
        fits: the batched :class:`FitResult` of the refits.
        param_names: the names of the scalar parameters, as ``res.param_names``.
        estimate: ``(p,)`` the original fit's estimate, in ``param_names`` order.
        order: ``(p,)`` the flat (``ravel_pytree``) index of each of ``param_names``.
    """

    stderr: Any
    intervals: Any
    estimates: Any
    converged: np.ndarray
    n_failed: int
    level: float
    fits: FitResult
    param_names: list
    estimate: np.ndarray
    order: np.ndarray

    def replicates(self) -> np.ndarray:
        """The converged replicate estimates as ``(n_converged, p)``, columns in
        ``param_names`` order."""
        flat = [np.asarray(x).reshape(x.shape[0], -1) for x in jax.tree.leaves(self.estimates)]
        return np.concatenate(flat, axis=1)[self.converged][:, self.order]

    def confint(self, level: float | None = None, params=None) -> LabelledArray:
        """Returns percentile intervals ``(k, 2)``, one ``(lower, upper)`` row per parameter.

        ``[q_{(1-level)/2}, q_{(1+level)/2}]`` of the converged replicates; a
        :class:`~mlefit.LabelledArray` like ``FitResult.confint`` (``ci["loc"]``).

        Args:
            level: coverage in (0, 1); default the ``level`` given to ``bootstrap``.
            params: parameter names to report; default all, in ``param_names`` order.
        """
        level = self.level if level is None else _check_level(level)
        idx = _param_index(self.param_names, params)
        reps = self.replicates()[:, idx]
        if reps.shape[0] < 2:
            ci = np.full((len(idx), 2), np.nan)
        else:
            q = ((1.0 - level) / 2.0, (1.0 + level) / 2.0)
            ci = np.quantile(reps, q, axis=0).T
        names = tuple(self.param_names[i] for i in idx)
        return LabelledArray(ci, (names, CONFINT_COLUMNS))

    def to_frame(self, level: float | None = None):
        """Returns the table of the bootstrap: one row per parameter (``param_names``).

        Columns ``estimate`` (the original fit), ``stderr`` (bootstrap SD), ``ci_low``,
        ``ci_high`` (percentile interval at ``level``). A pandas DataFrame when pandas
        is installed, else a :class:`~mlefit.LabelledArray` with those rows and columns.
        """
        reps = self.replicates()
        se = np.std(reps, axis=0, ddof=1) if reps.shape[0] >= 2 else np.full(reps.shape[1], np.nan)
        ci = np.asarray(self.confint(level))
        table = LabelledArray(
            np.column_stack([self.estimate, se, ci[:, 0], ci[:, 1]]),
            (tuple(self.param_names), ("estimate", "stderr", "ci_low", "ci_high")),
        )
        return table.to_pandas() if optional_pandas() is not None else table

    def __repr__(self) -> str:
        se = jax.tree.map(lambda x: np.round(x, 6).tolist(), self.stderr)
        ci = jax.tree.map(lambda x: np.round(x, 6).tolist(), self.intervals)
        return (
            f"Bootstrap(n={self.converged.size}, n_failed={self.n_failed}, stderr={se}, "
            f"confint({self.level:g})={ci})"
        )


def _check_level(level) -> float:
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
        raise ValueError(f"level: must be strictly between 0 and 1 (e.g. 0.95), got {level!r}")
    return float(level)


def _param_index(names: list, params) -> list[int]:
    if params is None:
        return list(range(len(names)))
    if isinstance(params, str):
        params = [params]
    unknown = [p for p in params if p not in names]
    if unknown:
        raise ValueError(f"params: unknown parameter name {unknown[0]!r}; the fit has "
                         f"{', '.join(map(repr, names[:12]))}")
    return [names.index(p) for p in params]


def _sampler(model, data: tuple, n_obs: int, fitted: str):
    """``key -> simulated data tuple``; conditional models keep their covariates fixed.
    ``fitted``: the fit's model name, for a message about a model that is a function."""
    sample = getattr(model, "sample", None)
    name = fitted if model is None else (
        getattr(model, "name", None) or getattr(model, "__name__", type(model).__name__))
    if sample is None or not callable(sample):
        raise TypeError(
            f"model: {name!r} cannot simulate data, so there is no parametric bootstrap for "
            "it; use a ready-made model from mlefit.models (they have "
            "sample(key, params, n)), or pass model= an object with such a method."
        )
    try:
        takes_design = "X" in inspect.signature(sample).parameters
    except (TypeError, ValueError):
        takes_design = False
    if len(data) > 1 and takes_design:
        return lambda key, params: sample(key, params, X=data[0])
    return lambda key, params: sample(key, params, n_obs)


def unweighted_data(res: FitResult, what: str) -> tuple:
    """The fitted data as an unweighted sample of a definite size, which a parametric
    bootstrap simulates and refits: integer frequency weights expanded (row ``i``
    repeated ``weights[i]`` times, the fit's meaning of them); variance weights only where
    they are all equal (rows of weight 0 dropped), since otherwise each observation has
    its own distribution. ``ValueError`` naming the first offending weight otherwise;
    ``what`` (e.g. ``"gof"``) names the caller in it."""
    if res.weights is None:
        return res.data
    w = np.asarray(res.weights, dtype=float)
    if getattr(res, "weights_kind", "frequency") == "variance":
        positive = w[w > 0]
        if positive.size and not np.all(positive == positive[0]):
            i = int(np.flatnonzero(w > 0)[np.argmax(positive != positive[0])])
            raise ValueError(
                "res: the fit has variance weights (weights_kind='variance') that differ "
                f"(weights[{i}] = {float(w[i])!r} against {float(positive[0])!r}): each "
                f"observation then has its own distribution, which {what} cannot simulate "
                "as one sample. Refit unweighted, or with integer frequency weights "
                "(weights_kind='frequency')."
            )
        return tuple(np.asarray(a)[w > 0] for a in res.data)
    if not np.all(w == np.round(w)):
        i = int(np.argmax(w != np.round(w)))
        raise ValueError(
            f"res: the fit has non-integer weights (weights[{i}] = {float(w[i])!r}); {what} "
            "takes frequency weights only (each observation repeated weights[i] times), "
            "since a bootstrap replicate must be a sample of a definite size. Refit "
            "unweighted, or with integer counts."
        )
    counts = w.astype(np.int64)
    return tuple(np.repeat(np.asarray(a), counts, axis=0) for a in res.data)


def _start_at(res: FitResult):
    """The fitted estimate as a start with the fit's constraints (Positive, Interval)."""
    leaves, treedef = jax.tree_util.tree_flatten(constrain(res.u, res.transforms))
    out = []
    for t, c in zip(res.transforms, leaves, strict=True):
        if is_constraint(t):
            t = copy.copy(t)
            t.value = c
            out.append(t)
        else:
            out.append(c)
    return treedef.unflatten(out)


def with_penalty(res, fit_options: dict) -> dict:
    """``fit_options`` with the fit's own penalty (a penalised or MAP fit's replicates are
    refitted by the same estimator), unless they name a penalty or prior themselves."""
    f = res.problem.penalty
    if f is None or "penalty" in fit_options or "log_prior" in fit_options:
        return fit_options
    return {**fit_options, "penalty": f}


def _check(res, n, level):
    if not isinstance(res, FitResult):
        raise TypeError(f"res: expected a FitResult from mlefit.fit, got {type(res).__name__}")
    if res.batch_shape:
        raise TypeError("res: expected a single fit, got a batched result; index it first (res[i])")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"n: the number of replicates must be an int >= 2, got {n!r}")
    _check_level(level)
    if res.status != Status.CONVERGED:
        warnings.warn(f"bootstrap: the original fit has status {res.status}", stacklevel=3)


def bootstrap(
    res: FitResult, model=None, n: int = 1000, *, key: jax.Array, level: float = 0.95, **fit_options
) -> Bootstrap:
    """Returns parametric-bootstrap standard errors and percentile intervals of a fit.

    Draws ``n`` data sets of the fit's size from the fitted model,
    ``x*_r ~ p(. ; w_hat)`` (conditional models: ``y*_r ~ p(. | X; w_hat)`` with the
    fit's covariates ``X`` fixed), refits them all with :func:`mlefit.fit_many` in one
    compiled call, starting from ``w_hat``, and summarises the converged replicates
    ``w*_r``: ``stderr = sd(w*_r)`` (``ddof=1``) and the ``(1 -/+ level) / 2``
    percentiles (``intervals``; ``confint(level)`` as a labelled ``(k, 2)`` array like
    ``FitResult.confint``, ``to_frame()`` as a table). Replicates that do not converge
    are counted in ``n_failed`` and left out.

    Args:
        res: a single fit (``mlefit.fit``, or ``res_many[i]``) of an unweighted data set.
        model: the model to simulate from and refit; default the fitted model. It needs
            ``sample(key, params, n)`` (every model in :mod:`mlefit.models` has one).
        n: number of bootstrap replicates.
        key: a PRNG key, e.g. ``jax.random.key(0)``.
        level: coverage of the percentile intervals.
        **fit_options: passed to :func:`mlefit.fit_many` (``optimizer``, ``max_steps``, ``tol``).
            A penalised or MAP fit's replicates are refitted with its penalty (the
            bootstrap of the estimator that was used), unless ``penalty=`` or
            ``log_prior=`` is given here.

    Example:
        >>> import jax, numpy as np, mlefit
        >>> x = np.random.default_rng(0).normal(1.0, 2.0, 100)
        >>> res = mlefit.fit(mlefit.models.Normal(), x)
        >>> bs = mlefit.bootstrap(res, n=500, key=jax.random.key(0))
        >>> bool(abs(bs.stderr["loc"] / (x.std() / 10) - 1) < 0.15)  # sigma / sqrt(n)
        True
    """
    _check(res, n, level)
    model = res.problem.source if model is None else model
    data = unweighted_data(res, "a parametric bootstrap")
    n_obs = int(data[0].shape[0])
    draw = _sampler(model, data, n_obs, res.model_name)
    params = constrain(res.u, res.transforms)
    keys = jax.random.split(key, int(n))
    try:
        sims = jax.vmap(lambda k: draw(k, params))(keys)
    except TypeError as e:
        raise TypeError(f"model: simulating with {type(model).__name__}.sample failed: {e}") from e
    sims = tuple(sims) if isinstance(sims, (tuple, list)) else (sims,)
    if len(sims) != len(data):
        raise ValueError(
            f"model: sample returned {len(sims)} array(s) per data set but the fit has "
            f"{len(data)} data array(s)."
        )
    fits = fit_many(model, sims, _start_at(res), **with_penalty(res, fit_options))
    converged = np.asarray(fits.converged)
    n_failed = int(converged.size - converged.sum())
    if converged.sum() < 2:
        warnings.warn(
            f"bootstrap: only {int(converged.sum())} of {n} refits converged; no statistics.",
            stacklevel=2,
        )
    estimates = jax.tree.map(np.asarray, fits.params)
    q = ((1.0 - level) / 2.0, (1.0 + level) / 2.0)

    def sd(x):
        ok = x[converged]
        return np.std(ok, axis=0, ddof=1) if ok.shape[0] >= 2 else np.full(x.shape[1:], np.nan)

    def interval(x):
        ok = x[converged]
        if ok.shape[0] < 2:
            return np.full(x.shape[1:] + (2,), np.nan)
        return np.moveaxis(np.quantile(ok, q, axis=0), 0, -1)

    return Bootstrap(
        stderr=jax.tree.map(sd, estimates),
        intervals=jax.tree.map(interval, estimates),
        estimates=estimates,
        converged=converged,
        n_failed=n_failed,
        level=float(level),
        fits=fits,
        param_names=res.param_names,
        estimate=np.asarray(ravel_pytree(params)[0])[param_order_of(res)],
        order=param_order_of(res),
    )
