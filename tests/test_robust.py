"""Robust covariances HC0-HC3 and cluster-robust, against statsmodels (and R's definitions).

statsmodels 0.15's GLM maps ``cov_type="HC1"``, ``"HC2"`` and ``"HC3"`` to HC0 (its GLM
results have no ``cov_HCx``; ``get_robustcov_results`` falls back to
``cov_white_simple(use_correction=False)``). So for the GLMs the references are: HC0 and
cluster from statsmodels directly, HC1 = statsmodels' HC0 x n / (n - k), and HC2/HC3
built from statsmodels' own pieces (``score_obs``, ``hessian``, the IRLS hat values
``get_hat_matrix_diag``) with R ``sandwich::vcovHC``'s definitions. For linear
regression statsmodels' ``OLS``/``WLS`` implement all four, and are used as they are.
"""

from __future__ import annotations

import numpy as np
import pytest
import statsmodels.api as sm

import mlefit
from mlefit import models

from .helpers import rel_err

RTOL = 1e-6  # both fits converge to ~1e-10; the covariances are exact formulas
# Each covariance kind compiles once per model and shape (about 1 s): the tests below
# check every kind on the Poisson GLM and the linear model, and a subset elsewhere.
SM_ORDER = ["intercept", "coef[0]", "coef[1]"]  # statsmodels' [const, x1, x2]
N_CLUSTERS = 17


def cov_err(a, b) -> float:
    """``max|a - b| / max|b|``: relative to the largest entry (a near-zero covariance
    carries the absolute error of the estimates, not a relative one)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def in_sm_order(res, cov):
    """The (intercept, coef) block of ``cov`` in statsmodels' column order."""
    idx = [res.param_names.index(name) for name in SM_ORDER]
    return np.asarray(cov)[np.ix_(idx, idx)]


def hc_reference(glm_res, power: int) -> np.ndarray:
    """R sandwich's HC2 (power 1) / HC3 (power 2) for a GLM from statsmodels' pieces."""
    model, params = glm_res.model, glm_res.params
    h = glm_res.get_hat_matrix_diag()
    s = model.score_obs(params)
    bread = np.linalg.inv(-model.hessian(params))
    return bread @ ((s / (1.0 - h)[:, None] ** power).T @ s) @ bread


def make_groups(n: int, rng) -> np.ndarray:
    """Cluster labels of unequal sizes (strings, to test non-integer labels)."""
    return np.array([f"g{k}" for k in rng.integers(0, N_CLUSTERS, n)])


@pytest.fixture(scope="module")
def poisson():
    rng = np.random.default_rng(11)
    n = 90
    X = rng.normal(size=(n, 2))
    y = rng.poisson(np.exp(0.3 + X @ np.array([0.5, -0.3])))
    groups = make_groups(n, rng)
    res = mlefit.fit(models.PoissonRegression(), (X, y))
    glm = sm.GLM(y, sm.add_constant(X), family=sm.families.Poisson())
    return res, glm, groups


@pytest.fixture(scope="module")
def logistic():
    rng = np.random.default_rng(12)
    n = 140
    X = rng.normal(size=(n, 2))
    y = rng.binomial(1, 1.0 / (1.0 + np.exp(-(0.2 + X @ np.array([1.0, -0.7])))))
    groups = make_groups(n, rng)
    res = mlefit.fit(models.Logistic(), (X, y))
    glm = sm.GLM(y, sm.add_constant(X), family=sm.families.Binomial())
    return res, glm, groups


@pytest.fixture(scope="module")
def linear():
    rng = np.random.default_rng(13)
    n = 70
    X = rng.normal(size=(n, 2))
    # Heteroskedastic noise, so that the robust kinds differ from the model-based one.
    y = 1.0 + X @ np.array([2.0, -1.0]) + rng.normal(size=n) * (0.5 + np.abs(X[:, 0]))
    groups = make_groups(n, rng)
    res = mlefit.fit(models.LinearGaussian(), (X, y))
    return res, sm.OLS(y, sm.add_constant(X)), groups


@pytest.mark.parametrize("problem,kinds", [
    ("poisson", ("HC0", "HC1", "HC2", "HC3")),
    ("logistic", ("HC1", "HC3")),
])
def test_glm_hc_kinds_match_statsmodels(problem, kinds, request):
    res, glm, _ = request.getfixturevalue(problem)
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
        assert cov_err(in_sm_order(res, res.covariance(kind)), expect[kind]) < RTOL, kind
    if "HC0" in kinds:  # "sandwich" is the HC0 of before
        assert cov_err(res.covariance("sandwich"), res.covariance("HC0")) < 1e-14


@pytest.mark.parametrize("problem", ["poisson", "logistic"])
def test_glm_cluster_matches_statsmodels(problem, request):
    res, glm, groups = request.getfixturevalue(problem)
    # statsmodels' default: use_correction=True, c = G/(G-1) (n-1)/(n-k).
    ref = glm.fit(tol=1e-13, cov_type="cluster", cov_kwds={"groups": np.unique(
        groups, return_inverse=True)[1]})
    cov = res.covariance("cluster", groups=groups)
    assert cov_err(in_sm_order(res, cov), ref.cov_params()) < RTOL
    # The interval and the summary use it too.
    ci = res.confint(0.95, kind="cluster", groups=groups, params=["coef[0]"])[0]
    j = res.param_names.index("coef[0]")
    half = 1.959963984540054 * np.sqrt(np.asarray(cov)[j, j])
    assert rel_err(ci, float(res.params["coef"][0]) + np.array([-half, half])) < 1e-12
    assert "Covariance:     cluster" in res.summary(kind="cluster", groups=groups)


def test_linear_regression_matches_ols_hc_and_cluster(linear):
    res, ols, groups = linear
    ref = ols.fit()
    for kind in ("HC0", "HC1", "HC2", "HC3"):
        expect = getattr(ref, f"cov_{kind}")
        # The scale is a nuisance parameter: the coefficient block equals OLS's, with
        # k = 3 coefficients in HC1 and leverages from the coefficients only.
        assert cov_err(in_sm_order(res, res.covariance(kind)), expect) < RTOL, kind
    codes = np.unique(groups, return_inverse=True)[1]
    cl = ols.fit(cov_type="cluster", cov_kwds={"groups": codes}).cov_params()
    assert cov_err(in_sm_order(res, res.covariance("cluster", groups=groups)), cl) < RTOL
    assert "HC3" in res.summary(kind="HC3")


def test_frequency_weights_are_repeated_rows():
    # Frequency weights: every robust kind equals statsmodels on the expanded data.
    rng = np.random.default_rng(14)
    n = 50
    X = rng.normal(size=(n, 2))
    y = rng.poisson(np.exp(0.2 + X @ np.array([0.4, 0.3])))
    f = rng.integers(1, 4, n)
    groups = rng.integers(0, 9, n)
    res = mlefit.fit(models.PoissonRegression(), (X, y), weights=f)
    Xe, ye, ge = np.repeat(X, f, axis=0), np.repeat(y, f), np.repeat(groups, f)
    glm = sm.GLM(ye, sm.add_constant(Xe), family=sm.families.Poisson())
    ref = glm.fit(tol=1e-13)
    m, k = glm.exog.shape
    hc0 = glm.fit(tol=1e-13, cov_type="HC0").cov_params()
    assert float(res.n_obs) == m
    assert cov_err(in_sm_order(res, res.covariance("HC1")), hc0 * m / (m - k)) < RTOL
    assert cov_err(in_sm_order(res, res.covariance("HC3")), hc_reference(ref, 2)) < RTOL
    cl = glm.fit(tol=1e-13, cov_type="cluster", cov_kwds={"groups": ge}).cov_params()
    assert cov_err(in_sm_order(res, res.covariance("cluster", groups=groups)), cl) < RTOL


def test_variance_weights_match_wls():
    # Variance weights: WLS's HC kinds (wexog = sqrt(w) X) and its cluster covariance.
    rng = np.random.default_rng(15)
    n = 60
    X = rng.normal(size=(n, 2))
    v = rng.uniform(0.2, 3.0, n)
    y = 1.0 - X @ np.array([1.0, 0.5]) + rng.normal(size=n) * (0.3 + X[:, 1] ** 2) / np.sqrt(v)
    groups = rng.integers(0, 8, n)
    res = mlefit.fit(models.LinearGaussian(), (X, y), weights=v, weights_kind="variance")
    wls = sm.WLS(y, sm.add_constant(X), weights=v).fit()
    for kind in ("HC1", "HC3"):
        assert cov_err(in_sm_order(res, res.covariance(kind)), getattr(wls, f"cov_{kind}")) < RTOL
    cl = sm.WLS(y, sm.add_constant(X), weights=v).fit(
        cov_type="cluster", cov_kwds={"groups": groups}).cov_params()
    assert cov_err(in_sm_order(res, res.covariance("cluster", groups=groups)), cl) < RTOL


def test_robust_kinds_bad_input(poisson):
    res, _, groups = poisson
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
