"""Robust covariances HC0-HC3 and cluster-robust, against statsmodels (and R's definitions).

statsmodels 0.15's GLM maps ``cov_type="HC1"``, ``"HC2"`` and ``"HC3"`` to HC0 (its GLM
results have no ``cov_HCx``; ``get_robustcov_results`` falls back to
``cov_white_simple(use_correction=False)``). So for the GLMs the references are: HC0 and
cluster from statsmodels directly, HC1 = statsmodels' HC0 x n / (n - k), and HC2/HC3
built from statsmodels' own pieces (``score_obs``, ``hessian``, the IRLS hat values
``get_hat_matrix_diag``) with R ``sandwich::vcovHC``'s definitions. For linear
regression statsmodels' ``OLS``/``WLS`` implement all four, and are used as they are.
Each covariance kind compiles once per model and shape (about 1 s): every kind is checked
on the linear model, a subset of them elsewhere.
"""

from __future__ import annotations

import numpy as np
import pytest
import statsmodels.api as sm

from . import glm_problems as gp

RTOL = 1e-6  # both fits converge to ~1e-10; the covariances are exact formulas


def hc_reference(glm_res, power: int) -> np.ndarray:
    """R sandwich's HC2 (power 1) / HC3 (power 2) for a GLM from statsmodels' pieces."""
    model, params = glm_res.model, glm_res.params
    h = glm_res.get_hat_matrix_diag()
    s = model.score_obs(params)
    bread = np.linalg.inv(-model.hessian(params))
    return bread @ ((s / (1.0 - h)[:, None] ** power).T @ s) @ bread


def codes(labels):
    return np.unique(labels, return_inverse=True)[1]


def glm_of(problem: str):
    """``(res, statsmodels GLM, groups)``."""
    if problem == "poisson":
        (X, y, groups, _, _), res = gp.poisson()
        family = sm.families.Poisson()
    else:
        (X, y, groups), res = gp.logistic()
        family = sm.families.Binomial()
    return res, sm.GLM(y, sm.add_constant(X), family=family), groups


@pytest.mark.parametrize("problem,kinds", [
    ("poisson", ("HC0", "HC2", "HC3")),
    ("logistic", ("HC1", "HC3")),
])
def test_glm_hc_kinds_match_statsmodels(problem, kinds):
    res, glm, _ = glm_of(problem)
    ref = glm.fit(tol=1e-13)
    hc0 = glm.fit(tol=1e-13, cov_type="HC0").cov_params()
    n, k = glm.exog.shape
    expect = {
        "HC0": hc0,
        "HC1": hc0 * n / (n - k),
        "HC2": hc_reference(ref, 1),
        "HC3": hc_reference(ref, 2),
    }
    for kind in kinds:
        assert gp.cov_err(gp.in_sm_order(res, res.covariance(kind)), expect[kind]) < RTOL, kind
    if "HC0" in kinds:  # "sandwich" is the HC0 of before
        assert gp.cov_err(res.covariance("sandwich"), res.covariance("HC0")) < 1e-14


@pytest.mark.parametrize("problem", ["poisson", "logistic"])
def test_glm_cluster_matches_statsmodels(problem):
    res, glm, groups = glm_of(problem)
    # statsmodels' default: use_correction=True, c = G/(G-1) (n-1)/(n-k).
    ref = glm.fit(tol=1e-13, cov_type="cluster", cov_kwds={"groups": codes(groups)})
    cov = res.covariance("cluster", groups=groups)
    assert gp.cov_err(gp.in_sm_order(res, cov), ref.cov_params()) < RTOL
    # The interval and the summary use it too.
    ci = res.confint(0.95, kind="cluster", groups=groups, params=["coef[0]"])[0]
    j = res.param_names.index("coef[0]")
    half = 1.959963984540054 * np.sqrt(np.asarray(cov)[j, j])
    assert np.allclose(ci, float(res.params["coef"][0]) + np.array([-half, half]), rtol=1e-12)
    assert "Covariance:     cluster" in res.summary(kind="cluster", groups=groups)


def test_linear_regression_matches_ols_hc_and_cluster():
    (X, y, groups, _), res = gp.linear()
    ols = sm.OLS(y, sm.add_constant(X))
    ref = ols.fit()
    for kind in ("HC0", "HC1", "HC2", "HC3"):
        # The scale is a nuisance parameter: the coefficient block equals OLS's, with
        # k = 3 coefficients in HC1 and leverages from the coefficients only.
        got = gp.in_sm_order(res, res.covariance(kind))
        assert gp.cov_err(got, getattr(ref, f"cov_{kind}")) < RTOL, kind
    cl = ols.fit(cov_type="cluster", cov_kwds={"groups": codes(groups)}).cov_params()
    assert gp.cov_err(gp.in_sm_order(res, res.covariance("cluster", groups=groups)), cl) < RTOL
    assert "HC3" in res.summary(kind="HC3")


def test_frequency_weights_are_repeated_rows():
    # Frequency weights: the robust kinds equal statsmodels' on the expanded data.
    (X, y, _, f, _), _ = gp.poisson()
    res = gp.poisson_weighted("frequency")
    Xe, ye = np.repeat(X, f, axis=0), np.repeat(y, f)
    glm = sm.GLM(ye, sm.add_constant(Xe), family=sm.families.Poisson())
    ref = glm.fit(tol=1e-13)
    m, k = glm.exog.shape
    hc0 = glm.fit(tol=1e-13, cov_type="HC0").cov_params()
    assert float(res.n_obs) == m
    assert gp.cov_err(gp.in_sm_order(res, res.covariance("HC1")), hc0 * m / (m - k)) < RTOL
    assert gp.cov_err(gp.in_sm_order(res, res.covariance("HC3")), hc_reference(ref, 2)) < RTOL
    # (The cluster sums S_g = sum_i v_i s_i are the same code for both kinds of weights:
    # checked with variance weights below.)


def test_variance_weights_match_wls():
    # Variance weights: WLS's HC kinds (wexog = sqrt(w) X) and its cluster covariance.
    (X, y, groups, v), _ = gp.linear()
    res = gp.linear_weighted("variance")
    wls = sm.WLS(y, sm.add_constant(X), weights=v)
    ref = wls.fit()
    got = gp.in_sm_order(res, res.covariance("HC3"))
    assert gp.cov_err(got, ref.cov_HC3) < RTOL
    cl = wls.fit(cov_type="cluster", cov_kwds={"groups": codes(groups)}).cov_params()
    assert gp.cov_err(gp.in_sm_order(res, res.covariance("cluster", groups=groups)), cl) < RTOL


def test_robust_kinds_bad_input():
    (_, _, groups, _, _), res = gp.poisson()
    with pytest.raises(ValueError, match=r"kind: expected one of .*'HC3'.*got 'HC4'"):
        res.covariance("HC4")
    with pytest.raises(ValueError, match=r"groups: expected one cluster label per observation, "
                       r"shape \(90,\), got shape \(89,\)"):
        res.covariance("cluster", groups=groups[:-1])
    with pytest.raises(ValueError, match="groups: all observations are in a single cluster"):
        res.covariance("cluster", groups=np.zeros(90))
    with pytest.raises(ValueError, match="groups: kind='cluster' needs"):
        res.covariance("cluster")
    with pytest.raises(ValueError, match="groups: only used with kind='cluster'"):
        res.confint(kind="HC1", groups=groups)
    with pytest.raises(ValueError, match=r"groups: labels must be finite; groups\[3\]"):
        res.covariance("cluster", groups=np.where(np.arange(90) == 3, np.nan, 1.0))
    with pytest.raises(ValueError, match="kind: expected one of"):
        res.summary(kind="hc1")
