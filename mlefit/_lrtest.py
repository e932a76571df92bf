"""The likelihood-ratio test of nested fits, with its guards (same data, nesting)."""

from __future__ import annotations

import hashlib
import math
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._checks import host_view
from ._inference import n_params
from ._nesting import fewer_components, restriction_of
from ._status import Status


# ---------------------------------------------------------------------------------------
# Model comparison
# ---------------------------------------------------------------------------------------
class LRTest(NamedTuple):
    """Likelihood-ratio test result: ``statistic``, degrees of freedom ``df``, ``pvalue``."""

    statistic: float
    df: int
    pvalue: float


def lr_test(restricted, full) -> LRTest:
    """Returns the likelihood-ratio test of a restricted model nested in a full one.

    ``statistic = 2 (loglik_full - loglik_restricted)``, ``df = k_full - k_restricted``
    (free scalar parameters; fixed ones do not count), ``pvalue = P(chi2_df >= statistic)``.
    Valid when the restricted model is the full one with ``df`` parameters fixed at
    interior values, both fitted by maximum likelihood to the same data.

    Guards (``ValueError`` before any p-value): the fits must be on the same data
    (:func:`data_fingerprint`: ``n_obs``, the weights, and each data array of equal
    shape, checked from a strided sample; design matrices with different numbers of
    columns, as in nested regressions, are not compared); the restricted model must
    have fewer free parameters and must not fit better than the full one beyond rounding
    (``loglik_r - loglik_f > sqrt(eps) max(|loglik_f|, 1)``: not nested, or the full
    fit missed its maximum). Warns (``UserWarning``) for a known pair whose restriction
    is on the boundary of the parameter space (Normal in StudentT as ``df -> infinity``,
    Poisson in NegativeBinomial: see :mod:`mlefit._nesting`; the chi2 p-value is then
    conservative, twice the correct one for one parameter), for a Mixture against one with
    fewer components (no chi2 reference at all: the extra components are not identified
    under the restricted model), for penalised fits, and for fits that did not converge.

    Args:
        restricted: the ``FitResult`` of the smaller model.
        full: the ``FitResult`` of the larger model, fitted to the same data.

    Example:
        >>> import jax.numpy as jnp, jax.scipy.stats as st, mlefit
        >>> x = jnp.array([0.1, 1.9, 2.2, 3.8, 1.5])
        >>> m0 = lambda p, x: st.norm.logpdf(x, 0.0, p["s"])
        >>> m1 = lambda p, x: st.norm.logpdf(x, p["mu"], p["s"])
        >>> r0 = mlefit.fit(m0, x, {"s": mlefit.Positive(1.0)})
        >>> r1 = mlefit.fit(m1, x, {"mu": 0.0, "s": mlefit.Positive(1.0)})
        >>> mlefit.lr_test(r0, r1).df
        1
    """
    for name, r in (("restricted", restricted), ("full", full)):
        if not hasattr(r, "loglik") or not hasattr(r, "u"):
            raise TypeError(f"{name}: expected a FitResult, got {type(r).__name__}")
        if r.batch_shape:
            raise TypeError(f"{name}: expected a single fit, got a batched result; index it first")
    k0, k1 = n_params(restricted), n_params(full)
    if k0 >= k1:
        raise ValueError(
            f"restricted: has {k0} free parameters but full has {k1}; the restricted model "
            "must have fewer (pass lr_test(restricted, full) in that order)."
        )
    n0, n1 = float(restricted.n_obs), float(full.n_obs)
    if not np.isclose(n0, n1, rtol=1e-12, atol=0.0):
        raise ValueError(
            f"full: n_obs={n1:g} differs from restricted n_obs={n0:g}; both models must be "
            "fitted to the same data."
        )
    _check_same_data(restricted, full)
    ll0, ll1 = float(restricted.loglik), float(full.loglik)
    eps = float(np.finfo(np.asarray(full.nll).dtype).eps)
    if ll0 - ll1 > math.sqrt(eps) * max(abs(ll1), 1.0):
        raise ValueError(
            f"restricted: its log-likelihood {ll0:.10g} is higher than the full model's "
            f"{ll1:.10g}; a model nested in another cannot fit better, so the pair is not "
            "nested (or the full fit did not reach its maximum: refit it from the "
            "restricted estimate)."
        )
    for name, r in (("restricted", restricted), ("full", full)):
        if r.status != Status.CONVERGED:
            warnings.warn(f"lr_test: the {name} fit has status {r.status}", stacklevel=2)
        if getattr(r, "penalty", None) is not None:
            warnings.warn(
                f"lr_test: the {name} fit is penalised; the chi2 reference assumes maximum-"
                "likelihood estimates", stacklevel=2,
            )
    nested = restriction_of(restricted.problem.source, full.problem.source)
    if nested is not None and nested.boundary:
        warnings.warn(
            f"lr_test: {restricted.model_name} is {full.model_name} with {nested.what}, a "
            "restriction on the boundary of the parameter space: the chi-square reference "
            "does not hold (Self & Liang 1987) and the p-value is conservative (for one "
            "parameter the reference is the 50:50 mixture of chi2_0 and chi2_1, whose "
            "p-value is half of this one).",
            stacklevel=2,
        )
    orders = fewer_components(restricted.problem.source, full.problem.source)
    if orders is not None:
        warnings.warn(
            f"lr_test: {restricted.model_name} has {orders[0]} mixture component(s) and "
            f"{full.model_name} {orders[1]}: under the smaller model the extra components' "
            "weights are 0 and their parameters are not identified, so the statistic has "
            "no chi-square reference (Hartigan 1985; McLachlan 1987) and this p-value is "
            "not valid. Calibrate the statistic by a parametric bootstrap: simulate from "
            "the restricted fit (model.sample), refit both models, compare.",
            stacklevel=2,
        )
    stat = 2.0 * (ll1 - ll0)
    df = k1 - k0
    pvalue = float(jax.scipy.stats.chi2.sf(max(stat, 0.0), df))
    return LRTest(stat, df, pvalue)


# Elements of each array sampled for the data fingerprint (strided over the array).
_FINGERPRINT_SAMPLE = 4096


def data_fingerprint(a) -> tuple:
    """``(shape, digest)`` of an array: its shape and a SHA-1 of up to 4096 elements taken
    at a regular stride (as float64), computed on the host. Two arrays with different
    fingerprints differ; equal ones agree in shape and in the sampled elements."""
    shape = tuple(np.shape(a))
    host = host_view(a) if isinstance(a, jax.Array) else np.asarray(a)
    size = int(np.prod(shape)) if shape else 1
    step = max(1, size // _FINGERPRINT_SAMPLE)
    if host is not None:
        sample = np.asarray(host).reshape(-1)[::step]
    else:  # on an accelerator: bring back only the sample
        sample = np.asarray(jnp.ravel(a)[::step])
    sample = np.ascontiguousarray(sample, dtype=np.float64)
    return shape, hashlib.sha1(sample.tobytes()).hexdigest()


def _check_same_data(restricted, full) -> None:
    """``ValueError`` when two fits can be seen to be on different data (see ``lr_test``)."""
    d0, d1 = tuple(restricted.data or ()), tuple(full.data or ())
    if not d0 or not d1:
        return  # streamed fits keep no data
    pairs = list(zip(d0, d1, strict=True)) if len(d0) == len(d1) else [(d0[-1], d1[-1])]
    w0, w1 = restricted.weights, full.weights
    if (w0 is None) != (w1 is None):
        raise ValueError("full: one fit has observation weights and the other has none; "
                         "both models must be fitted to the same (weighted) data.")
    if w0 is not None:
        pairs.append((w0, w1))
    for k, (a, b) in enumerate(pairs):
        if np.shape(a)[1:] != np.shape(b)[1:]:
            continue  # e.g. design matrices of nested regressions
        if data_fingerprint(a) != data_fingerprint(b):
            what = "the weights" if w0 is not None and k == len(pairs) - 1 else (
                f"data[{k}]" if len(d0) == len(d1) else "the last data array"
            )
            raise ValueError(
                f"full: {what} differs from the restricted fit's (same shape, different "
                "values); a likelihood-ratio test compares two models on the same data."
            )


