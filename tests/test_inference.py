"""Inference on a fit: standard errors, intervals, model comparison, diagnostics.

References are closed forms, scipy and statsmodels, never the code under test.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.stats as jst
import numpy as np
import pytest
import scipy.optimize
import scipy.stats
import statsmodels.api as sm

import mlefit
from mlefit import Positive, Status
from mlefit._constraints import Identity
from mlefit._inference import stderr_of
from mlefit._information import hessian_total, opg_total

from .helpers import rel_err

N_GAUSS = 400


def gauss_var(p, x):
    """Normal density parametrised by the VARIANCE v (declared Positive)."""
    return jst.norm.logpdf(x, p["mu"], jnp.sqrt(p["v"]))


@pytest.fixture(scope="module")
def gauss_data():
    return jnp.asarray(np.random.default_rng(0).normal(1.5, 2.0, N_GAUSS))


@pytest.fixture(scope="module")
def gauss_fit(gauss_data):
    return mlefit.fit(gauss_var, gauss_data, {"mu": 0.0, "v": Positive(1.0)})


def _lr_interval_variance(s: float, n: int, level: float):
    """Analytic LR interval of the Gaussian variance (mu profiled out):
    {v : n (s/v - 1 - log(s/v)) <= chi2_1(level)}, solved with brentq."""
    q = scipy.stats.chi2.ppf(level, 1)
    f = lambda v: n * (s / v - 1.0 - np.log(s / v)) - q  # noqa: E731
    return scipy.optimize.brentq(f, s * 1e-3, s, xtol=1e-15), scipy.optimize.brentq(
        f, s, s * 1e3, xtol=1e-15
    )


# -- closed forms ---------------------------------------------------------------------
def test_gaussian_stderr_closed_form(gauss_fit, gauss_data):
    x = np.asarray(gauss_data)
    s = x.var()  # biased variance, the MLE
    assert gauss_fit.status == Status.CONVERGED
    assert bool(gauss_fit.converged)
    se = gauss_fit.stderr
    # Exact Hessian + delta method: only the fit's own precision (grad 1e-9) remains.
    assert rel_err(se["mu"], np.sqrt(s / N_GAUSS)) < 1e-6
    assert rel_err(se["v"], s * np.sqrt(2.0 / N_GAUSS)) < 1e-6
    # cov rows follow param_names; mu and v are uncorrelated at the MLE.
    assert gauss_fit.param_names == ["mu", "v"]
    cov = np.asarray(gauss_fit.cov)
    assert abs(cov[0, 1]) < 1e-9 * np.sqrt(cov[0, 0] * cov[1, 1])


def test_hessian_chunks_and_weights_match_unchunked():
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(1000, 3)))
    y = jnp.asarray(rng.normal(size=1000))
    w = jnp.asarray(rng.integers(0, 3, size=1000).astype(float))
    lp = lambda b, x, y: jst.norm.logpdf(y, x @ b, 1.3)  # noqa: E731
    b = jnp.asarray([0.2, -0.1, 0.4])
    # Gaussian linear model: H = X^T diag(w) X / sigma^2 exactly.
    ref = (np.asarray(x) * np.asarray(w)[:, None]).T @ np.asarray(x) / 1.3**2
    for chunk in (None, 384):  # 1000 = 2 x 384 + 232: a remainder chunk
        h = hessian_total(lp, (Identity(),), b, (x, y), w, chunk_size=chunk)
        assert rel_err(h, ref) < 1e-12  # summation order only
    # OPG = sum_i w_i s_i s_i^T, s_i = x_i (y_i - x_i b) / sigma^2.
    r = (np.asarray(y) - np.asarray(x) @ np.asarray(b)) / 1.3**2
    s = np.asarray(x) * r[:, None]
    ref_b = (s * np.asarray(w)[:, None]).T @ s
    assert rel_err(opg_total(lp, (Identity(),), b, (x, y), w, chunk_size=384), ref_b) < 1e-12


def test_frequency_weights_equal_repeated_data(gauss_data, gauss_fit):
    # 200 observations with weights 1 or 3 (sum 400) against the same data repeated:
    # the repeated data set has the fixture's shape, so its fit is already compiled.
    x = np.asarray(gauss_data)[:200]
    w = np.where(np.arange(200) % 2 == 0, 1, 3)
    init = {"mu": 0.0, "v": Positive(1.0)}
    r_w = mlefit.fit(gauss_var, jnp.asarray(x), init, weights=jnp.asarray(w, float))
    r_rep = mlefit.fit(gauss_var, jnp.asarray(np.repeat(x, w)), init)
    cov_w, cov_rep = np.asarray(r_w.cov), np.asarray(r_rep.cov)
    # Both fits converge to grad 1e-9; off-diagonals are ~0, so compare on the matrix scale.
    assert np.max(np.abs(cov_w - cov_rep)) < 1e-6 * np.max(np.abs(cov_rep))
    assert float(r_w.aic) == pytest.approx(float(r_rep.aic), rel=1e-10)


# -- statsmodels peers ------------------------------------------------------------------
def logistic(b, x, y):
    z = x @ b
    return y * z - jax.nn.softplus(z)


def test_spector_logit_matches_statsmodels():
    data = sm.datasets.spector.load_pandas()
    X = sm.add_constant(data.exog.to_numpy(float), prepend=True)
    y = data.endog.to_numpy(float)
    ref = sm.Logit(y, X).fit(disp=0)
    res = mlefit.fit(logistic, (jnp.asarray(X), jnp.asarray(y)), jnp.zeros(X.shape[1]))
    assert res.status == Status.CONVERGED
    # 1e-5: both optimisers stop at a gradient tolerance; statsmodels' Hessian is analytic.
    assert rel_err(res.params, ref.params) < 1e-5
    assert rel_err(res.stderr, ref.bse) < 1e-5
    assert rel_err(res.loglik, ref.llf) < 1e-5
    assert rel_err(res.aic, ref.aic) < 1e-5
    assert rel_err(res.bic, ref.bic) < 1e-5
    assert res.param_names == [f"theta[{i}]" for i in range(4)]
    assert float(res.hessian_cond) > 1.0


@pytest.fixture(scope="module")
def poisson_problem():
    rng = np.random.default_rng(1)
    n = 400
    X = np.column_stack([np.ones(n), rng.normal(size=(n, 3))])
    y = rng.poisson(np.exp(X @ np.array([0.3, 0.5, -0.2, 0.1]))).astype(float)
    return X, y


def poisson_reg(p, x, y):
    return jst.poisson.logpmf(y, jnp.exp(x @ p["beta"]))


def test_poisson_glm_matches_statsmodels_including_sandwich(poisson_problem):
    X, y = poisson_problem
    glm = sm.GLM(y, X, family=sm.families.Poisson())
    ref, ref_hc0 = glm.fit(tol=1e-12), glm.fit(tol=1e-12, cov_type="HC0")
    res = mlefit.fit(poisson_reg, (jnp.asarray(X), jnp.asarray(y)), {"beta": jnp.zeros(4)})
    assert res.status == Status.CONVERGED
    # 1e-5: IRLS and L-BFGS both stop at tolerances; the covariances are exact formulas.
    assert rel_err(res.params["beta"], ref.params) < 1e-5
    assert rel_err(res.stderr["beta"], ref.bse) < 1e-5
    assert rel_err(res.covariance("sandwich"), ref_hc0.cov_params()) < 1e-5
    # OPG: inverse of the outer product of statsmodels' per-observation scores.
    scores = glm.score_obs(ref.params)
    assert rel_err(res.covariance("opg"), np.linalg.inv(scores.T @ scores)) < 1e-5
    assert res.param_names == ["beta[0]", "beta[1]", "beta[2]", "beta[3]"]
    # A Wald interval of another kind uses that covariance.
    ci = res.confint(0.9, kind="sandwich", params=["beta[1]"])
    z = scipy.stats.norm.ppf(0.95)
    expect = ref.params[1] + np.array([-z, z]) * ref_hc0.bse[1]
    assert rel_err(ci[0], expect) < 1e-5


# -- intervals ------------------------------------------------------------------------
def test_profile_interval_of_variance_is_the_analytic_lr_interval(gauss_fit, gauss_data):
    x = np.asarray(gauss_data)
    lo, hi = _lr_interval_variance(x.var(), N_GAUSS, 0.95)
    ci = gauss_fit.confint(0.95, method="profile", params=["v"])
    assert ci.shape == (1, 2)
    # The root search stops at |sqrt(D) - z| <= 1e-9 z; the fit is at grad 1e-9.
    assert rel_err(ci[0], [lo, hi]) < 1e-6
    # The mean's profile interval (v profiled out): n log(1 + d^2 / s) = chi2_1(0.9).
    d = np.sqrt(x.var() * np.expm1(scipy.stats.chi2.ppf(0.9, 1) / N_GAUSS))
    ci_mu = gauss_fit.confint(0.9, "profile", ["mu"])[0]
    assert rel_err(ci_mu, x.mean() + np.array([-d, d])) < 1e-6
    # The profile curve itself: 2 (N_prof - N_min) = n (s/v - 1 - log(s/v)).
    v = np.array([0.8, 1.0, 1.3]) * x.var()
    curve = gauss_fit.profile("v", v)
    stat = 2.0 * (curve + float(gauss_fit.loglik))
    ref = N_GAUSS * (x.var() / v - 1 - np.log(x.var() / v))
    assert np.all(np.abs(stat - ref) < 1e-6 * np.maximum(ref, 1.0))  # ref[1] = 0


def test_wald_and_profile_agree_at_large_n():
    n = 20_000
    x = jnp.asarray(np.random.default_rng(5).normal(-1.0, 0.7, n))
    res = mlefit.fit(gauss_var, x, {"mu": 0.0, "v": Positive(1.0)})
    wald = res.confint(0.95)
    prof = res.confint(0.95, method="profile")
    m, s = float(np.mean(np.asarray(x))), float(np.var(np.asarray(x)))
    z = scipy.stats.norm.ppf(0.975)
    # Profile of the mean (v profiled out): n log(1 + d^2 / s) = z^2, exactly.
    d = np.sqrt(s * np.expm1(z**2 / n))
    assert rel_err(prof[0], [m - d, m + d]) < 1e-6
    # Wald and profile agree to O(a^2) (relative to the estimate), a = z * se / estimate:
    # the mean's half-widths differ by a factor 1 + z^2 / (4n) + ..., the variance's
    # ends are s (1 -/+ a + O(a^2)) with a = z sqrt(2/n).
    a = z * np.sqrt(2.0 / n)
    assert np.max(np.abs(prof[1] - wald[1])) < a**2 * s
    assert np.max(np.abs(prof[0] - wald[0])) < z**2 / (2 * n) * d


# -- diagnostics ----------------------------------------------------------------------
def test_non_identifiable_model_reports_not_positive_definite():
    x = jnp.asarray(np.random.default_rng(6).normal(2.0, 1.0, 200))
    model = lambda p, x: jst.norm.logpdf(x, p["a"] + p["b"], p["sigma"])  # noqa: E731
    res = mlefit.fit(model, x, {"a": 0.0, "b": 0.0, "sigma": Positive(1.0)})
    assert res.optimizer_status == Status.CONVERGED
    assert res.status == Status.HESSIAN_NOT_POSITIVE_DEFINITE
    assert not bool(res.converged)
    se = res.stderr
    assert np.isnan(se["a"]) and np.isnan(se["b"])
    # sigma is identified: its generalised-inverse variance is sigma_hat / sqrt(2N).
    sig = float(np.std(np.asarray(x)))
    assert rel_err(se["sigma"], sig / np.sqrt(2 * 200)) < 1e-6
    assert float(res.hessian_cond) > 1e12
    text = res.summary()
    assert "hessian_not_positive_definite" in text
    assert "not positive definite" in text and "a, b not identified" in text


def test_flat_nll_without_a_minimum_is_not_at_minimum():
    # All observations 0: the exponential NLL is -log(rate), unbounded below. Its gradient
    # in u (rate = softplus(u)) is -1/rate and passes any tolerance once rate is large, but
    # the Newton step still predicts a decrease of exactly 1/2 per observation:
    # g = -n/u, H = n/u^2 (u large), EDM = g^2 / (2 H) = n/2.
    x = jnp.zeros(40)
    model = lambda p, x: jst.expon.logpdf(x, scale=1.0 / p["rate"])  # noqa: E731
    res = mlefit.fit(model, x, {"rate": Positive(1.0)})
    assert res.optimizer_status == Status.CONVERGED  # the gradient test alone is fooled
    assert float(res.grad_norm) <= 1e-9 and float(res.params["rate"]) > 1e6
    assert res.status == Status.NOT_AT_MINIMUM
    assert not bool(res.converged)
    assert rel_err(res.edm, 40 / 2) < 1e-6
    assert "not_at_minimum" in res.summary() and "EDM:" in res.summary()


def test_perfectly_separated_classes_are_not_at_minimum():
    # Separated classes: the logistic NLL tends to 0 as the coefficients grow, so no MLE
    # exists; near the end NLL ~ c exp(-t) and the Newton step would halve it (EDM =
    # n nll / 2). Flip five labels and the classes overlap: an ordinary minimum.
    rng = np.random.default_rng(12)
    X = rng.normal(size=(200, 2))
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(np.int32)
    res = mlefit.fit(mlefit.models.Logistic(), (X, y))
    assert res.optimizer_status == Status.CONVERGED and float(res.nll) < 1e-6
    assert res.status == Status.NOT_AT_MINIMUM
    assert 0.3 < float(res.edm) / (200 * float(res.nll)) < 0.7
    y[:5] = 1 - y[:5]
    res = mlefit.fit(mlefit.models.Logistic(), (X, y))
    assert res.status == Status.CONVERGED and float(res.edm) < 1e-12


def test_an_exact_fit_whose_minimum_nll_is_0_is_converged():
    # A user objective without the normalising constant: nll = mean (y - a - b x)^2 / 2
    # on noise-free data has its minimum 0, and there EDM = nll exactly; but the Newton
    # step is at rounding level, so the fit is at its minimum (a = 2, b = -1).
    x = np.linspace(0.0, 3.0, 30)
    y = 2.0 - x
    res = mlefit.fit(lambda p, x, y: -0.5 * (y - p["a"] - p["b"] * x) ** 2, (x, y),
                     init={"a": 0.0, "b": 0.0})
    assert res.status == Status.CONVERGED
    assert abs(float(res.params["a"]) - 2.0) < 1e-8 and abs(float(res.params["b"]) + 1.0) < 1e-8


def test_a_looser_tol_is_not_reported_as_short_of_the_minimum():
    # With tol = 1e-4 the user accepts an EDM of that order: the fit is converged, and
    # within 1e-2 of scipy's Weibull fit (the default tol agrees to 1e-6).
    x = np.random.default_rng(14).weibull(1.4, 60) * 100.0
    shape, _, scale = scipy.stats.weibull_min.fit(x, floc=0)
    for tol, agree in ((1e-4, 1e-2), (None, 1e-6)):
        res = mlefit.fit(mlefit.models.Weibull(), x, tol=tol)
        assert res.tol == (tol or 1e-9)  # the default in float64
        assert res.status == Status.CONVERGED, tol
        assert rel_err(res.params["shape"], shape) < agree
        assert rel_err(res.params["scale"], scale) < agree


def test_parameters_in_large_units_are_finished_by_newton():
    # Scale 1e7: u = softplus^-1(scale) has curvature ~ 1/scale^2, so max|g| <= tol is
    # met early (the fit was 7% off, 0.35 standard errors); EDM sees it and Newton steps
    # from the estimate finish it. The MLE is equivariant: it must be 1e7 x the MLE of the
    # data in small units.
    x = np.random.default_rng(0).weibull(0.6, 100)
    big = mlefit.fit(mlefit.models.Weibull(), x * 1e7)
    small = mlefit.fit(mlefit.models.Weibull(), x)
    assert big.status == Status.CONVERGED and small.status == Status.CONVERGED
    assert rel_err(big.params["scale"], 1e7 * small.params["scale"]) < 1e-8
    assert rel_err(big.params["shape"], small.params["shape"]) < 1e-8


def test_edm_is_the_exact_remaining_decrease_of_a_quadratic_nll(gauss_data):
    # NLL quadratic in mu (sigma known): from mu_hat + delta the Newton step is exact and
    # gains n delta^2 / (2 sigma^2); at the optimum nothing is left.
    x = jnp.asarray(gauss_data)
    n, sigma = x.shape[0], 2.0
    model = lambda p, x: jst.norm.logpdf(x, p["mu"], sigma)  # noqa: E731
    res = mlefit.fit(model, x, {"mu": 0.0})
    assert abs(float(res.edm)) < 1e-18 * n
    delta = 0.3
    away = eqx.tree_at(lambda r: r.u, res, {"mu": res.u["mu"] + delta})
    assert rel_err(away.edm, n * delta**2 / (2 * sigma**2)) < 1e-10


def bounded_mixture(p, x):
    """r N(mu, 1 + s) + (1 - r) N(5, 1), s Positive, r Interval(0, 1)."""
    sd = jnp.sqrt(1.0 + p["s"])
    return jnp.logaddexp(
        jnp.log(p["r"]) + jst.norm.logpdf(x, p["mu"], sd),
        jnp.log1p(-p["r"]) + jst.norm.logpdf(x, 5.0, 1.0),
    )


def test_parameters_at_lower_and_upper_bounds_are_flagged():
    # Data from N(0, 0.8^2): the sample variance is below 1, so s sits on its lower bound
    # 0, and no observation is near 5, so the weight r sits on its upper bound 1.
    x = jnp.asarray(np.random.default_rng(7).normal(0.0, 0.8, 300))
    init = {"mu": 0.0, "s": Positive(0.5), "r": mlefit.Interval(0.0, 1.0, 0.5)}
    res = mlefit.fit(bounded_mixture, x, init)
    assert float(res.params["s"]) < 1e-6 and float(res.params["r"]) > 1 - 1e-6
    assert res.status == Status.AT_BOUND
    assert not bool(res.converged)
    assert np.isnan(res.stderr["s"]) and np.isnan(res.stderr["r"])
    # mu with s and r fixed at their bounds: stderr of a mean with known variance 1.
    assert rel_err(res.stderr["mu"], 1.0 / np.sqrt(300)) < 1e-6
    text = res.summary()
    assert "At a bound: r, s (std err NaN" in text and "(at bound)" in text
    with pytest.warns(UserWarning, match="r, s stays below the chi2 quantile"):
        ci = res.confint(method="profile", params=["s", "r"])
    assert ci[0, 0] == 0.0 and 0.0 < ci[0, 1] < 0.5
    assert ci[1, 1] == 1.0 and 0.5 < ci[1, 0] < 1.0


def test_interior_small_positive_parameter_is_not_at_bound():
    # A scale of 1e-7 is tiny in absolute terms but interior: no at_bound false alarm.
    x = jnp.asarray(np.random.default_rng(8).normal(0.0, 1e-7, 100))
    model = lambda p, x: jst.norm.logpdf(x, 0.0, p["sigma"])  # noqa: E731
    res = mlefit.fit(model, x, {"sigma": Positive(1e-6)})
    assert res.status == Status.CONVERGED
    sig = float(np.sqrt(np.mean(np.asarray(x) ** 2)))
    assert rel_err(res.stderr["sigma"], sig / np.sqrt(200)) < 1e-6


def test_minibatch_fit_gets_full_batch_inference():
    x = jnp.asarray(np.random.default_rng(9).normal(0.3, 1.0, 500))
    model = lambda p, x: jst.norm.logpdf(x, p["mu"], 1.0)  # noqa: E731
    import optax

    res = mlefit.fit(model, x, {"mu": 0.0}, optimizer=optax.adam(0.05), batch_size=64, epochs=3)
    assert res.minibatch
    # The Hessian of a known-variance Gaussian is N everywhere: stderr 1/sqrt(N) exactly.
    assert rel_err(res.stderr["mu"], 1.0 / np.sqrt(500)) < 1e-12
    assert "full-batch" in res.summary()


# -- names ----------------------------------------------------------------------------
class Layer(eqx.Module):
    weight: jax.Array
    bias: jax.Array


class Regression(eqx.Module):
    layer: Layer
    log_sigma: jax.Array

    def log_prob(self, x, y):
        mean = self.layer.weight @ x + self.layer.bias
        return jnp.sum(jst.norm.logpdf(y, mean, jnp.exp(self.log_sigma)))


def test_param_names_dict_array_and_module():
    rng = np.random.default_rng(10)
    x = jnp.asarray(rng.normal(size=(50, 3)))
    y = jnp.asarray(rng.normal(size=(50, 2)))
    model = lambda p, x, y: jnp.sum(jst.norm.logpdf(y, p["W"] @ x + p["b"], p["s"]))  # noqa: E731
    init = {"s": Positive(1.0), "W": jnp.zeros((2, 3)), "b": jnp.zeros(2)}
    res = mlefit.fit(model, (x, y), init)
    # In the order written in init (not JAX's sorted order W, b, s).
    expect = ["s", "W[0,0]", "W[0,1]", "W[0,2]", "W[1,0]", "W[1,1]", "W[1,2]", "b[0]", "b[1]"]
    assert res.param_names == expect
    assert np.asarray(res.cov).shape == (9, 9)
    # The module's attribute paths (field order); stderr comes back as a Module.
    mod = Regression(Layer(jnp.zeros((2, 3)), jnp.zeros(2)), jnp.asarray(0.0))
    rm = mlefit.fit(mod, (x, y))
    assert rm.param_names == [n.replace("W", "layer.weight").replace("b[", "layer.bias[")
                              for n in expect[1:]] + ["log_sigma"]
    assert isinstance(rm.stderr, Regression)
    # Same model, same data: the weight stderrs agree between the two parametrisations
    # (the scale is profiled out at the MLE either way: cov of W is independent of s).
    assert rel_err(rm.stderr.layer.weight, res.stderr["W"]) < 1e-5


# -- model comparison -------------------------------------------------------------------
def test_lr_test_nested_gaussians_match_scipy(gauss_data):
    x = np.asarray(gauss_data)
    m0 = lambda p, x: jst.norm.logpdf(x, 1.0, jnp.sqrt(p["v"]))  # noqa: E731
    r0 = mlefit.fit(m0, gauss_data, {"v": Positive(1.0)})
    r1 = mlefit.fit(gauss_var, gauss_data, {"mu": 0.0, "v": Positive(1.0)})
    test = mlefit.lr_test(r0, r1)
    # Closed form: 2 (l1 - l0) = N log(s0 / s1), s0 = mean((x-1)^2), s1 = var(x).
    stat = N_GAUSS * np.log(np.mean((x - 1.0) ** 2) / x.var())
    assert test.df == 1
    assert test.statistic == pytest.approx(stat, rel=1e-8)
    assert test.pvalue == pytest.approx(scipy.stats.chi2.sf(stat, 1), rel=1e-6)
    # AIC / BIC by their definitions with k = 1 and 2.
    assert float(r0.aic) == pytest.approx(2 - 2 * float(r0.loglik), rel=1e-12)
    assert float(r1.bic) == pytest.approx(2 * np.log(N_GAUSS) - 2 * float(r1.loglik), rel=1e-12)
    with pytest.raises(ValueError, match="restricted: has 2 free parameters"):
        mlefit.lr_test(r1, r0)
    r_short = eqx.tree_at(lambda r: r.n_obs, r1, jnp.asarray(100.0))  # as if fitted to 100
    with pytest.raises(ValueError, match="n_obs=100"):
        mlefit.lr_test(r0, r_short)


# -- display, cache, batching, bad input -----------------------------------------------
def test_summary_and_html_contain_the_fields(gauss_fit):
    text = gauss_fit.summary()
    for field in ("gauss_var", "n_obs:", "400", "Log-likelihood:", "Mean NLL:", "AIC:", "BIC:",
                  "Converged:", "True", "Status:", "converged", "Steps:", "Gradient norm:",
                  "EDM:", "Hessian cond.:", "estimate", "std err", "P>|z|", "[0.025", "0.975]",
                  "mu", "v"):
        assert field in text, field
    html = gauss_fit._repr_html_()
    assert "<table>" in html and "std err" in html and "Hessian cond." in html


def test_inference_is_cached_and_batched_results_vmap(gauss_data):
    r1 = mlefit.fit(gauss_var, gauss_data, {"mu": 0.0, "v": Positive(1.0)})
    r2 = mlefit.fit(gauss_var, gauss_data * 2.0, {"mu": 0.0, "v": Positive(1.0)})
    assert r1.cov is r1.cov  # computed once per result object
    # A batched result (as from fit_many) runs the pure kernel under jax.vmap.
    batched = jax.tree.map(lambda a, b: jnp.stack([a, b]), r1, r2)
    se = batched.stderr
    assert np.asarray(se["v"]).shape == (2,)
    assert rel_err(se["v"], [r1.stderr["v"], r2.stderr["v"]]) < 1e-12
    assert list(batched.status) == [Status.CONVERGED, Status.CONVERGED]
    assert rel_err(batched[1].stderr["mu"], r2.stderr["mu"]) < 1e-12
    assert batched.confint().shape == (2, 2, 2)
    # The uncached, compiled entry point (for benchmarks) gives the same numbers.
    assert rel_err(stderr_of(r2)["v"], r2.stderr["v"]) < 1e-12


@pytest.mark.filterwarnings("ignore:mlefit. this fit runs in float32")
def test_float32_fit_has_float32_stderr_close_to_closed_form():
    x = np.random.default_rng(11).normal(1.0, 2.0, 300).astype(np.float32)
    res = mlefit.fit(gauss_var, jnp.asarray(x), {"mu": 0.0, "v": Positive(1.0)})
    assert res.cov.dtype == jnp.float32
    s = x.astype(np.float64).var()
    # float32 fit (tol 1e-5) and Hessian: ~1e-4 relative is what float32 gives.
    assert rel_err(res.stderr["v"], s * np.sqrt(2.0 / 300)) < 1e-3
    assert res.status == Status.CONVERGED


def test_bad_input_names_the_argument(gauss_fit):
    with pytest.raises(ValueError, match="unknown parameter name 'tau'"):
        gauss_fit.profile("tau", [1.0])
    with pytest.raises(ValueError, match="unknown parameter name 'sigma'"):
        gauss_fit.confint(params=["mu", "sigma"])
    with pytest.raises(ValueError, match="level: must be strictly between 0 and 1"):
        gauss_fit.confint(level=1.5)
    with pytest.raises(ValueError, match="level"):
        gauss_fit.confint(level=0.0, method="profile")
    with pytest.raises(ValueError, match="method: expected 'wald' or 'profile'"):
        gauss_fit.confint(method="bootstrap")
    with pytest.raises(ValueError, match="kind: expected one of"):
        gauss_fit.covariance("hc3")
    with pytest.raises(ValueError, match=r"values\[1\] = -1.0"):
        gauss_fit.profile("v", [1.0, -1.0])


def test_status_falls_back_when_the_hessian_cannot_be_computed():
    # JAX differentiates gamma.logsf in `a` once but not twice: no Hessian, so the status
    # is the optimiser's, with a warning instead of an exception.
    f = lambda p, x: jst.gamma.logsf(x, p["a"], scale=1.0)  # noqa: E731
    res = mlefit.fit(f, np.array([0.5, 1.0, 4.0]), init={"a": mlefit.Positive(2.0)})
    with pytest.warns(UserWarning, match="Hessian of the NLL cannot be computed"):
        status = res.status
    assert status == res.optimizer_status


def test_a_model_with_a_host_derivative_is_fitted_and_never_wrong():
    # A derivative computed on the host (pure_callback): JAX's jax.hessian raises
    # ValueError (callbacks have no JVP). The default fit (Newton for a problem this small)
    # differentiates the gradient forward in another order, where the callback's output
    # is a primal value, and gets the exact Hessian: n = 4, so std err 1/sqrt(4). Had it
    # failed, the fit would fall back to L-BFGS and the status warn (test above); either
    # way fit returns. The NLL is (x - mu)^2 / 2 + const: mu_hat = mean(x).
    @jax.custom_jvp
    def half_square(r):
        return 0.5 * r * r

    @half_square.defjvp
    def _(primals, tangents):
        (r,), (t,) = primals, tangents
        shape = jax.ShapeDtypeStruct(r.shape, r.dtype)
        d = jax.pure_callback(np.asarray, shape, r, vmap_method="sequential")
        return 0.5 * r * r, d * t

    x = np.array([0.5, 1.0, 4.0, 2.5])
    res = mlefit.fit(lambda p, x: -half_square(x - p["mu"]), x, init={"mu": 0.0})
    assert abs(float(res.params["mu"]) - x.mean()) < 1e-12
    assert res.status == Status.CONVERGED
    assert abs(float(res.stderr["mu"]) - 0.5) < 1e-12


def _once_differentiable(bad_bwd: bool):
    """The logistic location model, ``log p(x) = -softplus(z) - softplus(-z)`` with
    ``z = x - mu`` (up to a constant), through a ``custom_vjp`` softplus: JAX
    differentiates it once, never twice (nor can mlefit reduce it to sufficient
    statistics); with ``bad_bwd`` the backward rule returns the wrong structure (a user's
    bug that shows only when the gradient is traced)."""
    @jax.custom_vjp
    def softplus(r):
        return jnp.logaddexp(0.0, r)

    def fwd(r):
        return softplus(r), r

    def bwd(r, g):
        return (g * jax.nn.sigmoid(r), g) if bad_bwd else (g * jax.nn.sigmoid(r),)

    softplus.defvjp(fwd, bwd)
    return lambda p, x: -softplus(x - p["mu"]) - softplus(p["mu"] - x)


_LOGISTIC_X = np.array([0.5, 1.0, 4.0, 2.5, -0.3, 1.7, 0.9])


def test_newton_on_request_names_the_missing_second_derivative():
    x = _LOGISTIC_X
    with pytest.raises(ValueError, match="'newton' needs second derivatives"):
        mlefit.fit(_once_differentiable(False), x, init={"mu": 0.0}, optimizer="newton")
    # the default falls back to L-BFGS for such a model: the score sum tanh(z / 2) = 0
    res = mlefit.fit(_once_differentiable(False), x, init={"mu": 0.0})
    z = x - float(res.params["mu"])
    assert abs(np.mean(np.tanh(z / 2))) < 1e-8


def test_a_bug_in_the_first_derivative_is_not_called_a_missing_second_one():
    """A model whose gradient itself fails to trace gets JAX's own error, not the advice
    to use a first-order optimiser (which would fail the same way)."""
    with pytest.raises((TypeError, ValueError)) as info:
        mlefit.fit(_once_differentiable(True), _LOGISTIC_X, init={"mu": 0.0},
                   optimizer="newton")
    assert "second derivatives" not in str(info.value)
    assert "bwd" in str(info.value)
