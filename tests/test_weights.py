"""Weights with a declared meaning: frequency and variance weights, against statsmodels GLM.

statsmodels' ``freq_weights`` and ``var_weights`` are the peers. Conventions compared:
- frequency: ``n_obs = sum f`` (statsmodels' ``wnobs``), ``loglik = llf``,
  ``BIC = bic_llf = -2 llf + k log(sum f)``;
- variance: ``n_obs`` = the number of observations (statsmodels' ``nobs``), ``BIC =
  bic_llf = -2 llf + k log(n)``. mlefit rescales variance weights to sum to ``n``;
  statsmodels takes them as absolute for Poisson, so the Poisson comparison uses weights
  that already sum to ``n`` (the same test shows mlefit ignores their scale).
- Gaussian: mlefit's ``scale`` is the MLE (``RSS_w / n``), statsmodels' GLM scale is
  ``RSS_w / (n - k)``; statsmodels is given mlefit's scale (``fit(scale=...)``) so that
  the coefficient covariances are comparable.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import statsmodels.api as sm

import mlefit
from mlefit import models

from . import glm_problems as gp
from .helpers import rel_err

RTOL = 1e-6  # both fits converge to ~1e-10; covariances and log-likelihoods are exact


def test_poisson_frequency_weights_match_statsmodels():
    (X, y, _, f, _), _ = gp.poisson()
    res = gp.poisson_weighted("frequency")
    ref = sm.GLM(y, sm.add_constant(X), family=sm.families.Poisson(), freq_weights=f).fit(
        tol=1e-13)
    assert res.weights_kind == "frequency"
    assert float(res.n_obs) == f.sum() == ref.model.wnobs
    assert rel_err(gp.coefs(res), ref.params) < RTOL
    assert gp.cov_err(gp.in_sm_order(res, res.cov), ref.cov_params()) < RTOL
    assert rel_err(res.loglik, ref.llf) < RTOL
    assert rel_err(res.aic, ref.aic) < RTOL
    assert rel_err(res.bic, ref.bic_llf) < RTOL


def test_poisson_variance_weights_match_statsmodels():
    (X, y, _, _, v), _ = gp.poisson()
    res = gp.poisson_weighted("variance")
    # Zero weights remove observations: statsmodels is given the others. It reads Poisson
    # var_weights as absolute; these sum to m, the number of positive weights.
    keep = v > 0
    m = int(keep.sum())
    glm = sm.GLM(y[keep], sm.add_constant(X[keep]), family=sm.families.Poisson(),
                 var_weights=v[keep])
    ref = glm.fit(tol=1e-13)
    assert res.weights_kind == "variance"
    assert float(res.n_obs) == m == ref.nobs
    assert rel_err(gp.coefs(res), ref.params) < RTOL
    assert gp.cov_err(gp.in_sm_order(res, res.cov), ref.cov_params()) < RTOL
    assert rel_err(res.loglik, ref.llf) < RTOL
    assert rel_err(res.bic, ref.bic_llf) < RTOL
    # Robust covariances take the scores as v_i s_i (statsmodels' HC0 with var_weights,
    # which does not depend on the weights' scale).
    hc0 = glm.fit(tol=1e-13, cov_type="HC0").cov_params()
    assert gp.cov_err(gp.in_sm_order(res, res.covariance("HC0")), hc0) < RTOL
    # Only the ratios of variance weights matter: weights normalised to sum to 1 give
    # the same n_obs, covariance and log-likelihood (and no warning: the kind is given).
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res1 = mlefit.fit(models.PoissonRegression(), (X, y), weights=v / v.sum(),
                          weights_kind="variance")
    assert float(res1.n_obs) == m
    assert gp.cov_err(res1.cov, res.cov) < RTOL
    assert rel_err(res1.loglik, res.loglik) < RTOL


def test_gaussian_variance_and_frequency_weights_match_statsmodels():
    (X, y, _, v), _ = gp.linear()
    n = X.shape[0]
    Xc = sm.add_constant(X)
    res = gp.linear_weighted("variance")
    s2 = float(res.params["scale"]) ** 2  # MLE: sum v' r^2 / n with v' = n v / sum v
    # statsmodels' dispersion for var_weights v is phi = sum v r^2 / (n - k); the model
    # Var(y_i) = phi / v_i is mlefit's Var(y_i) = scale^2 / v'_i: phi_MLE = s2 sum v / n.
    ref = sm.GLM(y, Xc, var_weights=v).fit(tol=1e-13, scale=s2 * v.sum() / n)
    assert float(res.n_obs) == n
    assert rel_err(gp.coefs(res), ref.params) < RTOL
    assert gp.cov_err(gp.in_sm_order(res, res.cov), ref.cov_params()) < RTOL
    # statsmodels' llf is the heteroskedastic Gaussian log-likelihood
    # sum_i log N(y_i; mu_i, phi / v_i); mlefit's is sum_i v'_i log N(y_i; mu_i, scale),
    # which differs by the parameter-free (1/2) sum_i log v'_i.
    v_eff = v * n / v.sum()
    assert rel_err(res.loglik + 0.5 * np.log(v_eff).sum(), ref.llf) < RTOL

    f = np.round(2 * v) + 1
    resf = gp.linear_weighted("frequency")
    s2f = float(resf.params["scale"]) ** 2  # sum f r^2 / sum f, statsmodels: / (sum f - k)
    reff = sm.GLM(y, Xc, freq_weights=f).fit(tol=1e-13, scale=s2f)
    assert float(resf.n_obs) == f.sum()
    assert rel_err(gp.coefs(resf), reff.params) < RTOL
    assert gp.cov_err(gp.in_sm_order(resf, resf.cov), reff.cov_params()) < RTOL
    assert rel_err(resf.loglik, reff.llf) < RTOL


def test_normalised_weights_warn_as_frequency_and_are_right_as_variance():
    # The example: 5 weights normalised to sum to 1, read as counts, give n_obs = 1
    # and standard errors sqrt(5) times too large. Silently no longer.
    x = gp.normal_sample()
    w = np.full(5, 0.2)
    plain = mlefit.fit(models.Normal(), x)
    with pytest.warns(UserWarning, match=r"weights: read as frequency weights .*weights\[0\] "
                      r"= 0\.2 is not a whole number.*weights_kind='variance'"):
        freq = mlefit.fit(models.Normal(), x, weights=w)
    assert float(freq.n_obs) == pytest.approx(1.0, rel=1e-12)
    assert rel_err(freq.stderr["loc"], np.sqrt(5) * plain.stderr["loc"]) < 1e-9
    var = mlefit.fit(models.Normal(), x, weights=w, weights_kind="variance")
    assert float(var.n_obs) == 5
    assert rel_err(var.stderr["loc"], plain.stderr["loc"]) < 1e-9
    assert rel_err(var.bic, plain.bic) < 1e-9
    # Given explicitly, frequency weights that are not counts are taken without a warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mlefit.fit(models.Normal(), x, weights=w, weights_kind="frequency")


def test_weights_kind_bad_input():
    x = gp.normal_sample()
    with pytest.raises(ValueError, match=r"weights_kind: expected one of 'frequency', "
                       r"'variance' \(or None\), got 'analytic'"):
        mlefit.fit(models.Normal(), x, weights=np.ones(5), weights_kind="analytic")
    with pytest.raises(ValueError, match="weights_kind: 'variance' describes observation "
                       "weights, but no weights were given"):
        mlefit.fit(models.Normal(), x, weights_kind="variance")
    stream = mlefit.ArrayStream(x, weights=np.ones(5))
    with pytest.raises(ValueError, match="weights_kind: a data stream takes frequency weights"):
        mlefit.fit(models.Normal(), stream, weights_kind="variance")
