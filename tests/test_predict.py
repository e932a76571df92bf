"""Predictions of the conditional models with delta-method standard errors.

Peers: statsmodels ``GLM(...).fit().get_prediction(X)`` (``predicted_mean``, ``se_mean``
and ``summary_frame``'s intervals, which a GLM computes on the linear-predictor scale)
and ``OLS``, whose ``se_mean`` uses the scale ``RSS / (n - k)`` where mlefit's MLE uses
``RSS / n``: mlefit's = statsmodels' x sqrt((n - k) / n).
"""

from __future__ import annotations

import jax.numpy as jnp
import jax.scipy.stats as jst
import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

import mlefit
from mlefit import models

from . import glm_problems as gp
from .helpers import rel_err

RTOL = 1e-6  # both fits converge to ~1e-10; the delta method is an exact formula here


X_NEW = np.random.default_rng(31).normal(size=(7, 2))  # rows not in the fits' data


def glm_of(problem: str):
    """``(res, X, y, statsmodels family)``."""
    if problem == "poisson":
        (X, y, *_), res = gp.poisson()
        return res, X, y, sm.families.Poisson()
    (X, y, _), res = gp.logistic()
    return res, X, y, sm.families.Binomial()


@pytest.mark.parametrize("problem", ["poisson", "logistic"])
def test_glm_prediction_matches_statsmodels(problem):
    res, X, y, family = glm_of(problem)
    X_new = X_NEW
    ref = sm.GLM(y, sm.add_constant(X), family=family).fit(tol=1e-13)
    frame = ref.get_prediction(sm.add_constant(X_new)).summary_frame(alpha=0.1)
    pred = res.predict(X_new)
    assert rel_err(pred.mean, frame["mean"]) < RTOL
    assert rel_err(pred.se, frame["mean_se"]) < RTOL
    ci = pred.confint(0.9)
    assert rel_err(ci[:, 0], frame["mean_ci_lower"]) < RTOL
    assert rel_err(ci[:, 1], frame["mean_ci_upper"]) < RTOL
    # The model's own predict gives the mean; a DataFrame design gives the same.
    assert rel_err(res.problem.source.predict(res.params, X_new), frame["mean"]) < RTOL
    df = pd.DataFrame(X_new, columns=["a", "b"])
    assert rel_err(res.predict(df).se, pred.se) < 1e-12


def test_linear_prediction_matches_ols():
    (X, y, *_), res = gp.linear()
    (n, k), X_new = (X.shape[0], 3), X_NEW
    ref = sm.OLS(y, sm.add_constant(X)).fit().get_prediction(sm.add_constant(X_new))
    pred = res.predict(X_new)
    assert pred.scale == "identity"
    assert rel_err(pred.mean, ref.predicted_mean) < RTOL
    assert rel_err(pred.se, ref.se_mean * np.sqrt((n - k) / n)) < RTOL
    z = 1.959963984540054
    ci = pred.confint()
    assert rel_err(ci[:, 1], pred.mean + z * pred.se) < 1e-12


def test_robust_prediction_errors_use_that_covariance():
    # Poisson: d mu / d (intercept, coef) = mu (1, x); se^2 = g^T C g for C of kind HC1.
    _, res = gp.poisson()
    X_new = X_NEW
    pred = res.predict(X_new, kind="HC1")
    names = res.param_names
    G = np.zeros((X_new.shape[0], len(names)))
    mu = np.asarray(pred.mean)
    G[:, names.index("intercept")] = mu
    G[:, names.index("coef[0]")] = mu * X_new[:, 0]
    G[:, names.index("coef[1]")] = mu * X_new[:, 1]
    cov = np.asarray(res.covariance("HC1"))
    assert rel_err(pred.se, np.sqrt(np.einsum("ij,jk,ik->i", G, cov, G))) < 1e-10


def test_softmax_probabilities_and_errors():
    rng = np.random.default_rng(34)
    n, K = 200, 3
    X = rng.normal(size=(n, 2))
    logits = np.column_stack([np.zeros(n), 0.3 + X @ [1.0, -0.5], -0.2 + X @ [-0.7, 0.8]])
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.array([rng.choice(K, p=row) for row in p])
    res = mlefit.fit(models.Softmax(K), (X, y))
    X_new = X_NEW[:4]
    pred = res.predict(X_new)
    ref = sm.MNLogit(y, sm.add_constant(X)).fit(method="newton", tol=1e-12, disp=0)
    assert pred.mean.shape == pred.se.shape == (4, K)
    assert rel_err(pred.mean, ref.predict(sm.add_constant(X_new))) < RTOL
    # Delta method by hand: d p_k / d eta_j = p_k (delta_kj - p_j) for the K - 1 free
    # logits, d eta_j / d (intercept_j, coef[:, j]) = (1, x).
    names = res.param_names
    cov = np.asarray(res.cov)
    for i, x in enumerate(X_new):
        pk = pred.mean[i]
        G = np.zeros((K, len(names)))
        for j in range(1, K):
            dp = pk * ((np.arange(K) == j) - pk[j])
            G[:, names.index(f"intercept[{j - 1}]")] = dp
            for c in range(2):
                G[:, names.index(f"coef[{c},{j - 1}]")] = dp * x[c]
        assert rel_err(pred.se[i], np.sqrt(np.einsum("kj,jl,kl->k", G, cov, G))) < 1e-10
    lo, hi = pred.confint(0.95)[..., 0], pred.confint(0.95)[..., 1]
    assert np.all((0 < lo) & (lo < pred.mean) & (pred.mean < hi) & (hi < 1))


def test_mlp_predict_is_predict_proba():
    model = models.MLPClassifier(in_size=3, num_classes=4, width_size=5)
    params = model.init(None, None)
    X = np.random.default_rng(35).normal(size=(6, 3))
    assert np.allclose(model.predict(params, X), model.predict_proba(params, X), rtol=1e-14)
    with pytest.raises(ValueError, match=r"X: expected shape \(n, 3\)"):
        model.predict(params, X[:, :2])


def test_predict_bad_input():
    (X, *_), res = gp.poisson()
    with pytest.raises(ValueError, match=r"X: expected shape \(n, 2\) \(PoissonRegression was "
                       r"fitted with 2 column\(s\)\), got shape \(4, 3\)"):
        res.predict(np.ones((4, 3)))
    with pytest.raises(ValueError, match=r"got shape \(2,\) \(one row: X.reshape\(1, -1\)\)"):
        res.predict(np.ones(2))
    with pytest.raises(ValueError, match="X: expected a numeric array"):
        res.predict(np.array([["a", "b"]]))
    normal = mlefit.fit(models.Normal(), gp.normal_sample())
    with pytest.raises(TypeError, match="predict: Normal is an unconditional model"):
        normal.predict(X)
    user = mlefit.fit(
        lambda p, x: jst.norm.logpdf(x, p["m"], 1.0), jnp.asarray(gp.normal_sample()), {"m": 0.0}
    )
    with pytest.raises(TypeError, match="user function or Module without predict"):
        user.predict(X)


def test_prediction_with_a_fixed_intercept_is_the_offset_model():
    # Holding the intercept at c is a regression with offset c: statsmodels' OLS of y - c
    # (no constant) and GLM with offset c are the references; the fixed intercept has
    # no variance, so only the coefficients' covariance enters the standard errors.
    (X, y, *_), _ = gp.linear()
    n, c = X.shape[0], 0.7
    res = mlefit.fit(models.LinearGaussian(), (X, y), fixed={"intercept": c})
    ref = sm.OLS(y - c, X).fit().get_prediction(X_NEW)
    pred = res.predict(X_NEW)
    assert rel_err(pred.mean, c + ref.predicted_mean) < RTOL
    assert rel_err(pred.se, ref.se_mean * np.sqrt((n - 2) / n)) < RTOL
    # the same through model.fix
    again = mlefit.fit(models.LinearGaussian().fix(intercept=c), (X, y)).predict(X_NEW)
    assert rel_err(again.se, pred.se) < 1e-10

    (Xl, yl, _), _ = gp.logistic()
    logit = mlefit.fit(models.Logistic(), (Xl, yl), fixed={"intercept": -0.2})
    glm = sm.GLM(yl, Xl, family=sm.families.Binomial(), offset=np.full(len(yl), -0.2))
    frame = glm.fit(tol=1e-13).get_prediction(
        X_NEW, offset=np.full(len(X_NEW), -0.2)).summary_frame()
    pl = logit.predict(X_NEW)
    assert rel_err(pl.mean, frame["mean"]) < RTOL
    assert rel_err(pl.se, frame["mean_se"]) < RTOL


def test_dataframe_design_is_matched_by_column_name():
    (X, y, *_), _ = gp.linear()
    df = pd.DataFrame(X, columns=["age", "dose"])
    res = mlefit.fit(models.LinearGaussian(), (df, pd.Series(y, name="y")))
    new = pd.DataFrame(X_NEW, columns=["age", "dose"])
    expected = res.predict(X_NEW)  # an array: by position, the fit's order
    for frame in (new[["dose", "age"]], new.assign(y=1.0, note="x")):
        got = res.predict(frame)
        assert rel_err(got.mean, expected.mean) < 1e-12 and rel_err(got.se, expected.se) < 1e-12
    with pytest.raises(ValueError, match=r"X: column\(s\) \['dose'\] missing; LinearGaussian "
                       r"was fitted with columns \['age', 'dose'\], X has \['age', 'y'\]"):
        res.predict(new.assign(y=1.0)[["age", "y"]])
