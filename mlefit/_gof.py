"""Goodness of fit: EDF statistics with parametric-bootstrap p-values, refits by fit_many.

The p-value of an EDF statistic (Kolmogorov-Smirnov, Cramer-von Mises, Anderson-Darling)
from its textbook table assumes the parameters are known. With estimated parameters the
fitted CDF follows the data, the statistic comes out smaller, and the tabled p-value is
far too large (Lilliefors). The correct reference distribution is that of the statistic
when the data come from the fitted model AND the parameters are estimated again: draw B
samples from ``p(. ; w_hat)``, refit each, compute the statistic of each sample against
its own refitted CDF. :func:`mlefit.fit_many` refits all B samples in one compiled call.
"""

from __future__ import annotations

import functools
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._bootstrap import unweighted_data, with_penalty
from ._many import fit_many
from ._model import unfixed
from ._status import Status
from .models import Beta, Exponential, Gamma, Laplace, LogNormal, Normal, StudentT, Weibull

__all__ = ["GoodnessOfFit", "gof", "edf_statistics", "STATISTICS"]

STATISTICS = ("ks", "cvm", "ad")
_TITLES = {
    "ks": "Kolmogorov-Smirnov D",
    "cvm": "Cramer-von Mises W^2",
    "ad": "Anderson-Darling A^2",
}

# Continuous univariate models with a closed-form CDF (``cdf``/``sf``) and ``sample``.
SUPPORTED = (Normal, LogNormal, Exponential, Gamma, Weibull, Beta, StudentT, Laplace)
# Likelihoods with a kink at the MLE: the fit keeps its closed-form start (the MLE) and
# reports STALLED or HESSIAN_NOT_POSITIVE_DEFINITE (see Laplace's docstring); such a
# refit is the MLE all the same.
_KINKED = (Laplace,)
_KINKED_OK = (Status.CONVERGED, Status.STALLED, Status.HESSIAN_NOT_POSITIVE_DEFINITE)


class GoodnessOfFit(NamedTuple):
    """The result of :meth:`mlefit.FitResult.gof`: EDF statistics and bootstrap p-values.

    With ``u_i = F(x_(i); w_hat)`` at the sorted observations ``x_(1) <= ... <= x_(n)``:

    - Kolmogorov-Smirnov ``D = sup_x |F_n(x) - F(x)| = max_i max(i/n - u_i, u_i - (i-1)/n)``;
    - Cramer-von Mises ``W^2 = 1/(12 n) + sum_i (u_i - (2i - 1)/(2n))^2``;
    - Anderson-Darling ``A^2 = -n - (1/n) sum_i (2i - 1) [log u_i + log(1 - u_(n+1-i))]``
      (``log(1 - u)`` from the model's survival function, accurate in the upper tail).

    ``pvalue = (1 + #{b : T_b >= T}) / (1 + n_boot)`` over the ``n_boot`` bootstrap
    replicates ``T_b`` whose refit converged (parametric bootstrap with refitting).

    Attributes:
        statistic: ``{"ks": D, "cvm": W^2, "ad": A^2}`` (the statistics asked for).
        pvalue: the bootstrap p-value of each statistic.
        n_boot: number of replicates used (their refits converged).
        n_failed: number of replicates left out (refit not converged).
        null_statistics: the replicates' statistics ``T_b``, one array per statistic.
        model_name: the fitted model.
        n_obs: the sample size ``n``.
    """

    statistic: dict
    pvalue: dict
    n_boot: int
    n_failed: int
    null_statistics: dict
    model_name: str
    n_obs: int

    def __repr__(self) -> str:
        rows = [
            f"  {_TITLES[k]:<22s} {self.statistic[k]:10.5g}   p = {self.pvalue[k]:.4g}"
            for k in self.statistic
        ]
        head = (
            f"GoodnessOfFit({self.model_name}, n = {self.n_obs}; parametric bootstrap, "
            f"{self.n_boot} refits used, {self.n_failed} failed)"
        )
        return "\n".join([head, *rows])


def edf_statistics(u: jax.Array, log_cdf: jax.Array, log_sf: jax.Array) -> dict:
    """Returns ``{"ks": D, "cvm": W^2, "ad": A^2}`` of one sample (formulas in
    :class:`GoodnessOfFit`).

    Args:
        u: ``F(x_(i))`` at the SORTED observations, shape ``(n,)``.
        log_cdf: ``log F(x_(i))``; log_sf: ``log(1 - F(x_(i)))`` (same order).
    """
    n = u.shape[-1]
    i = jnp.arange(1, n + 1, dtype=u.dtype)
    d = jnp.maximum(jnp.max(i / n - u), jnp.max(u - (i - 1) / n))
    w2 = 1.0 / (12 * n) + jnp.sum((u - (2 * i - 1) / (2 * n)) ** 2)
    a2 = -n - jnp.sum((2 * i - 1) * (log_cdf + log_sf[::-1])) / n
    return {"ks": d, "cvm": w2, "ad": a2}


@functools.partial(jax.jit, static_argnums=0)
def _statistics(model, params, x):
    """EDF statistics of the sample ``x`` (n,) against the model's CDF at ``params``."""
    x = jnp.sort(x)
    F, S = model.cdf(params, x), model.sf(params, x)
    return edf_statistics(F, jnp.log(F), jnp.log(S))


@functools.partial(jax.jit, static_argnums=(0, 2))
def _simulate(model, params, n: int, keys):
    return jax.vmap(lambda k: model.sample(k, params, n))(keys)


@functools.partial(jax.jit, static_argnums=0)
def _many_statistics(model, params, x):
    return jax.vmap(lambda p, xb: _statistics(model, p, xb))(params, x)


def _supported_names() -> str:
    return ", ".join(c.__name__ for c in SUPPORTED)


def _observations(res) -> np.ndarray:
    """The fitted sample, unweighted (:func:`mlefit._bootstrap.unweighted_data`)."""
    return np.asarray(unweighted_data(res, "gof")[0])


def _check(res, statistics, n_boot) -> tuple:
    if not hasattr(res, "problem") or not hasattr(res, "batch_shape"):
        raise TypeError(f"res: expected a FitResult from mlefit.fit, got {type(res).__name__}")
    if res.batch_shape:
        raise TypeError("res: gof takes a single fit, got a batched result; index it (res[i])")
    model = res.problem.source
    base = unfixed(model)  # fit(..., fixed=...)
    if not isinstance(base, SUPPORTED):
        name = res.model_name if base is None else getattr(base, "name", type(base).__name__)
        raise TypeError(
            f"res: gof supports the continuous univariate ready-made models "
            f"({_supported_names()}), not {name!r}: the EDF statistics compare the sample "
            "with a continuous CDF (the model's cdf method), and the bootstrap p-value "
            "needs the model's sample method and its data-driven start to refit each "
            "replicate. Discrete models have ties, for which these statistics do not apply."
        )
    if isinstance(statistics, str):
        statistics = (statistics,)
    statistics = tuple(statistics)
    bad = [s for s in statistics if s not in STATISTICS]
    if bad or not statistics:
        raise ValueError(f"statistics: expected names among {STATISTICS}, got {statistics!r}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot: the number of bootstrap replicates must be an int >= 1, "
                         f"got {n_boot!r}")
    return model, base, statistics


def gof(
    res, statistics=STATISTICS, n_boot: int = 1000, *, key: jax.Array, **fit_options
) -> GoodnessOfFit:
    """Returns EDF goodness-of-fit statistics of a fit and their parametric-bootstrap p-values.

    The statistics (KS ``D``, Cramer-von Mises ``W^2``, Anderson-Darling ``A^2``; formulas
    in :class:`GoodnessOfFit`) compare the sample with the fitted CDF ``F(. ; w_hat)``.
    Their null distribution, with estimated parameters, is simulated: ``n_boot`` samples
    ``x*_b`` of size ``n`` from ``p(. ; w_hat)``, each refitted (one
    :func:`mlefit.fit_many` call, from the model's own data-driven start, as ``fit``),
    and ``T_b`` computed against its own refitted CDF ``F(. ; w*_b)``. Then
    ``p = (1 + #{T_b >= T}) / (1 + B)`` over the ``B`` replicates whose refit converged
    (the others are counted in ``n_failed``; a Laplace refit that keeps its closed-form
    start, status ``stalled``, is the MLE and counts as converged). Same procedure as
    ``scipy.stats.goodness_of_fit``, which refits in a Python loop.

    Args:
        res: a single fit of Normal, LogNormal, Exponential, Gamma, Weibull, Beta,
            StudentT or Laplace. Integer frequency weights expand the sample (each
            observation repeated ``weights[i]`` times); variance weights are accepted only
            where they are all equal; other weights are refused. Parameters held fixed
            (``fit(..., fixed=...)``) stay fixed in the refits, and a penalised or MAP
            fit's refits use its penalty: the null distribution is that of the estimator
            that was used.
        statistics: names among ``"ks"``, ``"cvm"``, ``"ad"``.
        n_boot: number of bootstrap samples.
        key: a PRNG key, e.g. ``jax.random.key(0)``.
        **fit_options: passed to :func:`mlefit.fit_many` (``optimizer``, ``max_steps``, ``tol``).

    Example:
        >>> import jax, numpy as np, mlefit
        >>> x = np.random.default_rng(0).lognormal(0.0, 0.5, 300)
        >>> res = mlefit.fit(mlefit.models.Normal(), x)
        >>> g = res.gof(n_boot=199, key=jax.random.key(0))
        >>> g.pvalue["ad"] < 0.01  # a skewed sample is not normal
        True
    """
    model, base, statistics = _check(res, statistics, n_boot)
    x = _observations(res)
    dtype = jnp.asarray(res.nll).dtype
    if res.status not in (_KINKED_OK if isinstance(base, _KINKED) else (Status.CONVERGED,)):
        warnings.warn(f"gof: the fit has status {res.status}; the statistics are taken at "
                      "its parameters all the same", stacklevel=3)
    params = jax.tree.map(lambda p: jnp.asarray(p, dtype), res.params)
    observed = _statistics(base, params, jnp.asarray(x, dtype))
    keys = jax.random.split(key, int(n_boot))
    sims = _simulate(base, params, int(x.shape[0]), keys)
    # refitted as the fit was: the same fixed values (model) and penalty
    fits = fit_many(model, sims, **with_penalty(res, fit_options))
    if isinstance(base, _KINKED):
        ok = np.isin(np.asarray(fits.status, dtype=int), [int(s) for s in _KINKED_OK])
    else:
        ok = np.asarray(fits.converged, dtype=bool)
    ok = ok & np.all([np.isfinite(np.asarray(v)) for v in jax.tree.leaves(fits.params)], axis=0)
    null = _many_statistics(model, fits.params, sims)  # a FixedModel merges fixed values
    used = int(ok.sum())
    if used == 0:
        warnings.warn(f"gof: none of the {n_boot} refits converged; the p-values are NaN",
                      stacklevel=2)
    stat, pval, nulls = {}, {}, {}
    for s in statistics:
        t = float(observed[s])
        tb = np.asarray(null[s], dtype=float)[ok]
        stat[s] = t
        pval[s] = (1.0 + float(np.sum(tb >= t))) / (1.0 + used) if used else float("nan")
        nulls[s] = tb
    return GoodnessOfFit(stat, pval, used, int(n_boot) - used, nulls, res.model_name, x.size)
