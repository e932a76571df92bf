"""Goodness of fit (mlefit/_gof.py) and the models' cdf/sf, against scipy.stats.

Statistics: scipy's kstest, cramervonmises and goodness_of_fit (every parameter known:
no fitting, the statistic only) at the same parameters, to 1e-10 relative. P-values:
scipy.stats.goodness_of_fit runs the same parametric bootstrap with refitting (in a
Python loop; for the normal it fits the scale with ddof=1, so there the peer is the
procedure written out in NumPy); two Monte Carlo estimates of one p-value differ by at
most 4 binomial standard errors, sqrt(p (1 - p) (1/(B1 + 1) + 1/(B2 + 1))), unless
something is wrong.

One sample size (300) and one n_boot (999) for the Normal tests, so fit_many compiles
once for them.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import scipy.stats as ss

import mlefit
from mlefit import _gof
from mlefit import models as m

N, B = 300, 999


def _mc_tolerance(p: float, b1: int, b2: int) -> float:
    """4 standard errors of the difference of two independent bootstrap p-values."""
    p = min(max(p, 0.02), 0.98)
    return 4.0 * np.sqrt(p * (1.0 - p) * (1.0 / (b1 + 1) + 1.0 / (b2 + 1)))


# -- cdf and sf of the models ------------------------------------------------------------
_X_REAL = np.linspace(-6.0, 12.0, 301)
_X_POS = np.geomspace(1e-6, 60.0, 301)
_X_UNIT = np.linspace(1e-6, 1.0 - 1e-6, 301)
CDF_CASES = [
    (m.Normal(), {"loc": 1.0, "scale": 2.0}, ss.norm(1.0, 2.0), _X_REAL),
    (m.LogNormal(), {"mu": 0.3, "sigma": 0.7}, ss.lognorm(0.7, scale=np.exp(0.3)), _X_POS),
    (m.Exponential(), {"rate": 1.7}, ss.expon(scale=1 / 1.7), _X_POS),
    (m.Gamma(), {"shape": 0.4, "scale": 1.5}, ss.gamma(0.4, scale=1.5), _X_POS),
    (m.Gamma(), {"shape": 7.3, "scale": 0.5}, ss.gamma(7.3, scale=0.5), _X_POS),
    (m.Weibull(), {"shape": 1.4, "scale": 2.0}, ss.weibull_min(1.4, scale=2.0), _X_POS),
    (m.Beta(), {"a": 0.7, "b": 3.0}, ss.beta(0.7, 3.0), _X_UNIT),
    (m.StudentT(), {"df": 3.5, "loc": 1.0, "scale": 0.5}, ss.t(3.5, 1.0, 0.5), _X_REAL),
    (m.StudentT(), {"df": 300.0, "loc": 1.0, "scale": 0.5}, ss.t(300.0, 1.0, 0.5), _X_REAL),
    (m.Laplace(), {"loc": 1.0, "scale": 0.5}, ss.laplace(1.0, 0.5), _X_REAL),
]


@pytest.mark.parametrize("model, params, dist, x", CDF_CASES,
                         ids=[f"{c[0].name}-{i}" for i, c in enumerate(CDF_CASES)])
def test_cdf_and_sf_match_scipy(model, params, dist, x):
    cdf, sf = np.asarray(model.cdf(params, x)), np.asarray(model.sf(params, x))
    # relative error in the tails too: measured <= 3e-12 (t with df = 300, through the
    # incomplete beta function), asserted at 1e-10. Below 1e-80 (a lognormal at z < -19)
    # jax's norm.logcdf is 4e-9 off in relative terms: far below what a test statistic sees.
    np.testing.assert_allclose(cdf, dist.cdf(x), rtol=1e-10, atol=1e-80)
    np.testing.assert_allclose(sf, dist.sf(x), rtol=1e-10, atol=1e-80)


# -- the statistics ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def normal_fit():
    x = np.random.default_rng(0).normal(1.0, 2.0, N)
    return mlefit.fit(m.Normal(), x), x


@pytest.fixture(scope="module")
def normal_gof(normal_fit):
    return normal_fit[0].gof(n_boot=B, key=jax.random.key(0))


def test_statistics_at_the_fitted_parameters_equal_scipys(normal_fit, normal_gof):
    res, x = normal_fit
    mu, sigma = float(res.params["loc"]), float(res.params["scale"])
    cdf = ss.norm(mu, sigma).cdf
    assert normal_gof.statistic["ks"] == pytest.approx(ss.kstest(x, cdf).statistic, rel=1e-10)
    cvm = ss.cramervonmises(x, cdf).statistic
    assert normal_gof.statistic["cvm"] == pytest.approx(cvm, rel=1e-10)
    # the Anderson-Darling formula, evaluated directly with scipy's logcdf and logsf
    z = np.sort(x)
    i = np.arange(1, N + 1)
    a2 = -N - np.sum((2 * i - 1) * (ss.norm.logcdf(z, mu, sigma)
                                    + ss.norm.logsf(z[::-1], mu, sigma))) / N
    assert normal_gof.statistic["ad"] == pytest.approx(a2, rel=1e-10)
    assert normal_gof.n_obs == N and normal_gof.n_boot + normal_gof.n_failed == B


STAT_CASES = [
    (m.Gamma(), {"shape": 2.0, "scale": 1.5}, ss.gamma, {"a": 2.0, "scale": 1.5, "loc": 0.0}),
    (m.Weibull(), {"shape": 1.4, "scale": 2.0}, ss.weibull_min,
     {"c": 1.4, "scale": 2.0, "loc": 0.0}),
    (m.Beta(), {"a": 0.7, "b": 3.0}, ss.beta, {"a": 0.7, "b": 3.0, "loc": 0.0, "scale": 1.0}),
    (m.StudentT(), {"df": 3.5, "loc": 1.0, "scale": 0.5}, ss.t,
     {"df": 3.5, "loc": 1.0, "scale": 0.5}),
    (m.Laplace(), {"loc": 1.0, "scale": 0.5}, ss.laplace, {"loc": 1.0, "scale": 0.5}),
]


@pytest.mark.parametrize("model, params, dist, known", STAT_CASES,
                         ids=[c[0].name for c in STAT_CASES])
@pytest.mark.parametrize("statistic", ["ks", "cvm", "ad"])
def test_statistics_equal_scipys_goodness_of_fit(model, params, dist, known, statistic):
    # a sample off the model, so that the statistics are not tiny
    x = dist.rvs(**{**known, "scale": known.get("scale", 1.0) * 1.2}, size=50,
                 random_state=np.random.default_rng(1))
    x = np.clip(x, 1e-9, 1 - 1e-9) if model.name == "Beta" else x
    ours = _gof._statistics(model, params, x)[statistic]
    # every parameter known: scipy fits nothing and returns the statistic at `known`
    ref = ss.goodness_of_fit(dist, x, known_params=known, statistic=statistic,
                             n_mc_samples=1, rng=0).statistic
    assert float(ours) == pytest.approx(ref, rel=1e-10)


# -- the p-values -----------------------------------------------------------------------
def _normal_statistics(x):
    """KS, CvM and AD of ``x`` against the normal fitted by ML (mean, std with ddof=0)."""
    d = ss.norm(x.mean(), x.std())
    z, n = np.sort(x), x.size
    i = np.arange(1, n + 1)
    ad = -n - np.sum((2 * i - 1) * (d.logcdf(z) + d.logsf(z[::-1]))) / n
    return {"ks": ss.kstest(x, d.cdf).statistic, "cvm": ss.cramervonmises(x, d.cdf).statistic,
            "ad": ad}


def test_normal_pvalues_agree_with_a_numpy_bootstrap(normal_fit, normal_gof):
    # scipy.stats.goodness_of_fit fits the normal scale with ddof=1 (a different statistic),
    # so the peer here is the same procedure written out: draw from the fitted normal,
    # refit in closed form, compare the statistics.
    res, x = normal_fit
    rng = np.random.default_rng(5)
    mu, sigma = float(res.params["loc"]), float(res.params["scale"])
    observed = _normal_statistics(x)
    null = [_normal_statistics(rng.normal(mu, sigma, N)) for _ in range(199)]
    for s in ("ks", "cvm", "ad"):
        ref = (1 + sum(t[s] >= observed[s] for t in null)) / 200
        ours = normal_gof.pvalue[s]
        assert abs(ours - ref) < _mc_tolerance(ref, B, 199), (s, ours, ref)
    # data drawn from the model: no p-value is small
    assert min(normal_gof.pvalue.values()) > 0.05
    assert normal_gof.n_failed == 0  # the normal MLE is closed form: every refit converges


def test_misspecified_model_is_rejected():
    x = np.random.default_rng(2).lognormal(0.0, 0.5, N)  # skewed: not normal
    g = mlefit.fit(m.Normal(), x).gof(n_boot=B, key=jax.random.key(1))
    assert max(g.pvalue.values()) < 0.01
    # no replicate reaches the observed statistic: p is its smallest value 1 / (1 + B)
    assert g.pvalue["ad"] == pytest.approx(1.0 / (1 + g.n_boot))


def test_gamma_pvalues_agree_with_scipy():
    x = np.random.default_rng(3).gamma(2.0, 1.5, 200)
    res = mlefit.fit(m.Gamma(), x)
    g = res.gof(("ad", "cvm"), n_boot=B, key=jax.random.key(2))
    assert set(g.statistic) == {"ad", "cvm"} and g.n_boot > 0.99 * B
    for s in ("ad", "cvm"):
        ref = ss.goodness_of_fit(ss.gamma, x, known_params={"loc": 0.0}, statistic=s,
                                 n_mc_samples=199, rng=4)
        # scipy's own fit (floc=0) on the same data gives the same MLE, hence statistic
        assert g.statistic[s] == pytest.approx(ref.statistic, rel=1e-6)
        assert abs(g.pvalue[s] - ref.pvalue) < _mc_tolerance(ref.pvalue, g.n_boot, 199)


def test_laplace_refits_that_keep_the_closed_form_start_are_used():
    x = np.random.default_rng(4).laplace(1.0, 2.0, 101)  # odd n: a unique median
    res = mlefit.fit(m.Laplace(), x)
    g = res.gof("ad", n_boot=199, key=jax.random.key(3))
    # each refit ends `stalled` at its closed-form start, the MLE (median, mean |x - median|)
    assert g.n_boot == 199 and g.n_failed == 0
    assert np.all(np.isfinite(g.null_statistics["ad"]))
    # scipy's laplace.fit is the same closed form
    ref = ss.goodness_of_fit(ss.laplace, x, statistic="ad", n_mc_samples=199, rng=6)
    assert g.statistic["ad"] == pytest.approx(ref.statistic, rel=1e-10)
    assert abs(g.pvalue["ad"] - ref.pvalue) < _mc_tolerance(ref.pvalue, 199, 199)


def test_frequency_weights_are_expanded(normal_fit, normal_gof):
    _, x = normal_fit
    half = x[: N // 2]
    res_w = mlefit.fit(m.Normal(), half, weights=np.full(N // 2, 2.0))
    g = res_w.gof(n_boot=B, key=jax.random.key(0))
    res_r = mlefit.fit(m.Normal(), np.repeat(half, 2))
    ref = res_r.gof(n_boot=B, key=jax.random.key(0))
    for s in ("ks", "cvm", "ad"):
        assert g.statistic[s] == pytest.approx(ref.statistic[s], rel=1e-10)
    assert g.n_obs == N


# -- bad input --------------------------------------------------------------------------
def test_unsupported_models_and_arguments_are_refused(normal_fit):
    res, x = normal_fit
    pois = mlefit.fit(m.Poisson(), np.array([0.0, 1.0, 3.0, 2.0, 2.0]))
    with pytest.raises(TypeError, match="supports the continuous univariate.*not 'Poisson'"):
        pois.gof(key=jax.random.key(0))

    def my_normal(p, x):
        return jax.scipy.stats.norm.logpdf(x, p["mu"], p["sigma"])
    user = mlefit.fit(my_normal, x, {"mu": 0.0, "sigma": mlefit.Positive(1.0)})
    with pytest.raises(TypeError, match="univariate.*not 'my_normal'"):  # was 'NoneType'
        user.gof(key=jax.random.key(0))
    with pytest.raises(TypeError, match="model: 'my_normal' cannot simulate data"):
        mlefit.bootstrap(user, n=10, key=jax.random.key(0))
    with pytest.raises(ValueError, match="statistics: expected names among"):
        res.gof(("ks", "chi2"), key=jax.random.key(0))
    with pytest.raises(ValueError, match="n_boot: .* int >= 1, got 0"):
        res.gof(n_boot=0, key=jax.random.key(0))
    weighted = mlefit.fit(m.Normal(), x[:5], weights=np.array([0.5, 1.0, 1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match=r"non-integer weights \(weights\[0\] = 0.5\)"):
        weighted.gof(key=jax.random.key(0))


def test_variance_weights_are_not_taken_as_counts(normal_fit, normal_gof):
    """Variance weights are precisions, not repeats: unequal ones are refused (naming the
    kind), equal ones test the sample as it is (the unweighted fit's statistics; rows of
    weight 0 dropped)."""
    _, x = normal_fit
    w = np.ones(20)
    w[3] = 2.0
    unequal = mlefit.fit(m.Normal(), x[:20], weights=w, weights_kind="variance")
    with pytest.raises(ValueError, match=r"variance weights \(weights_kind='variance'\).*"
                                         r"weights\[3\]"):
        unequal.gof(key=jax.random.key(0))
    equal = mlefit.fit(m.Normal(), x, weights=np.full(N, 3.0), weights_kind="variance")
    g = equal.gof(n_boot=B, key=jax.random.key(0))  # the shapes of normal_gof: no compile
    for k in ("ks", "cvm", "ad"):
        assert g.statistic[k] == pytest.approx(normal_gof.statistic[k], rel=1e-10)
    w_eq = np.full(20, 3.0)
    w_eq[5] = 0.0
    dropped = mlefit.fit(m.Normal(), x[:20], weights=w_eq, weights_kind="variance")
    np.testing.assert_array_equal(_gof._observations(dropped), np.delete(x[:20], 5))
