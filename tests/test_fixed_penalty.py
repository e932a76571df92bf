"""Fixed parameters and penalised (MAP) fits: closed forms and scipy/scikit-learn peers."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.stats as jst
import numpy as np
import pytest
import scipy.stats as st

import mlefit
from mlefit import models

RNG = np.random.default_rng(16)
X_NORMAL = RNG.normal(1.5, 2.0, 120)
X_GAMMA = RNG.gamma(2.5, 1.7, 150)


def normal(p, x):
    return jst.norm.logpdf(x, p["mu"], p["sigma"])


INIT = {"mu": 0.0, "sigma": mlefit.Positive(1.0)}


@pytest.fixture(scope="module")
def normal_sigma_fixed():
    return mlefit.fit(normal, X_NORMAL, INIT, fixed={"sigma": 2.0})


def test_normal_sigma_fixed_closed_form(normal_sigma_fixed):
    res = normal_sigma_fixed
    n = X_NORMAL.size
    # mu-hat = mean, se = sigma / sqrt(n) with sigma known
    np.testing.assert_allclose(res.params["mu"], X_NORMAL.mean(), rtol=1e-10)
    np.testing.assert_allclose(res.stderr["mu"], 2.0 / np.sqrt(n), rtol=1e-8)
    assert float(res.params["sigma"]) == 2.0 and float(res.stderr["sigma"]) == 0.0
    assert res.param_names == ["mu"] and res.n_params == 1 and res.cov.shape == (1, 1)
    ll = st.norm.logpdf(X_NORMAL, X_NORMAL.mean(), 2.0).sum()
    np.testing.assert_allclose(res.loglik, ll, rtol=1e-12)
    np.testing.assert_allclose(res.aic, 2 * 1 - 2 * ll, rtol=1e-12)
    np.testing.assert_allclose(res.bic, np.log(n) - 2 * ll, rtol=1e-12)
    assert res.status == mlefit.Status.CONVERGED


def test_summary_marks_fixed(normal_sigma_fixed):
    text = normal_sigma_fixed.summary()
    row = next(line for line in text.splitlines() if line.startswith("sigma"))
    assert "(fixed)" in row and "1 (+1 fixed)" in text


@pytest.mark.parametrize("how", ["method", "keyword"])
def test_gamma_shape_fixed_against_scipy(how):
    if how == "method":
        res = mlefit.fit(models.Gamma().fix(shape=2.0), X_GAMMA)
    else:
        res = mlefit.fit(models.Gamma(), X_GAMMA, fixed={"shape": 2.0})
    _, _, scale = st.gamma.fit(X_GAMMA, floc=0, fa=2.0)  # the peer
    # gradient tol 1e-9 on the mean NLL, curvature ~ shape = 2: ~5e-10 relative
    np.testing.assert_allclose(res.params["scale"], X_GAMMA.mean() / 2.0, rtol=1e-8)
    np.testing.assert_allclose(res.params["scale"], scale, rtol=1e-6)
    # information of the scale with the shape known: n a / scale^2
    se = float(res.params["scale"]) / np.sqrt(X_GAMMA.size * 2.0)
    np.testing.assert_allclose(res.stderr["scale"], se, rtol=1e-7)
    assert float(res.params["shape"]) == 2.0 and res.n_params == 1


def test_fixed_model_is_nested_for_lr_test():
    # Gamma with shape = 1 is the exponential, loglik = -n (1 + log mean): one df
    x = X_GAMMA
    full = mlefit.fit(models.Gamma(), x)
    restricted = mlefit.fit(models.Gamma().fix(shape=1.0), x)
    test = mlefit.lr_test(restricted, full)
    ll_expo = -x.size * (1.0 + np.log(x.mean()))
    assert test.df == 1
    np.testing.assert_allclose(restricted.loglik, ll_expo, rtol=1e-12)
    np.testing.assert_allclose(test.statistic, 2 * (float(full.loglik) - ll_expo), rtol=1e-9)


def test_fixed_array_leaf_and_nested_name():
    def lp(p, x):
        return jst.norm.logpdf(x, p["loc"]["mu"], p["loc"]["s"]) + 0.0 * jnp.sum(p["b"])

    init = {"loc": {"mu": 0.0, "s": mlefit.Positive(1.0)}, "b": np.zeros(2)}
    res = mlefit.fit(lp, X_NORMAL, init, fixed={"loc.s": 2.0, "b": [1.0, 2.0]})
    np.testing.assert_allclose(res.params["loc"]["mu"], X_NORMAL.mean(), rtol=1e-10)
    np.testing.assert_array_equal(res.params["b"], [1.0, 2.0])
    np.testing.assert_array_equal(res.stderr["b"], [0.0, 0.0])


@pytest.mark.parametrize(
    "fixed,match",
    [
        ({"sd": 1.0}, r"unknown parameter 'sd'; the parameters are 'mu', 'sigma'"),
        ({"sigma": -1.0}, r"'sigma' = -1.0 is outside its constraint Positive"),
        ({"mu": 1.0, "sigma": 2.0}, r"every parameter \(mu, sigma\) is fixed"),
        ({"sigma": [1.0, 2.0]}, r"'sigma' has shape \(\) but its fixed value has shape \(2,\)"),
        ({"sigma": np.nan}, r"'sigma' = nan is not finite"),
    ],
)
def test_bad_fixed(fixed, match):
    with pytest.raises(ValueError, match=match):
        mlefit.fit(normal, X_NORMAL, INIT, fixed=fixed)


def test_bad_fixed_element_and_type():
    init = {"b": np.zeros(3), "sigma": mlefit.Positive(1.0)}
    with pytest.raises(ValueError, match=r"'b\[2\]' names elements of the array parameter 'b'"):
        mlefit.fit(lambda p, x: jst.norm.logpdf(x, p["b"][0], p["sigma"]), X_NORMAL, init,
                   fixed={"b[2]": 1.0})
    with pytest.raises(TypeError, match=r"fixed: expected a dict"):
        mlefit.fit(normal, X_NORMAL, INIT, fixed=[("sigma", 1.0)])
    with pytest.raises(ValueError, match=r"unknown parameter 'loc'.*'scale', 'shape'"):
        models.Gamma().fix(loc=0.0).init(X_GAMMA)


def test_fixed_refused_for_module_models():
    class Mod(eqx.Module):
        mu: jnp.ndarray

        def log_prob(self, x):
            return jst.norm.logpdf(x, self.mu, 1.0)

    with pytest.raises(ValueError, match=r"fixed: an equinox Module is its own parameters"):
        mlefit.fit(Mod(jnp.array(0.0)), X_NORMAL, fixed={"mu": 1.0})


def test_fixed_model_forwards_methods_with_params():
    m = models.Weibull().fix(shape=1.5)
    got = m.log_cdf({"scale": jnp.asarray(2.0)}, 1.0)  # the wrapped model's, shape merged
    np.testing.assert_allclose(got, st.weibull_min.logcdf(1.0, 1.5, scale=2.0), rtol=1e-12)
    assert not hasattr(models.Gamma().fix(shape=2.0), "log_cdf")  # as the wrapped model
    assert m.name == "Weibull" and m.fix(scale=1.0).fixed.names == ("shape", "scale")


# -- penalties -------------------------------------------------------------------------------
N_LR, D_LR, C = 300, 3, 0.5
X_LR = RNG.normal(size=(N_LR, D_LR))
Y_LR = (RNG.random(N_LR) < 1 / (1 + np.exp(-(0.3 + X_LR @ np.array([1.0, -2.0, 0.5]))))).astype(
    float
)


def ridge(p):
    # scikit-learn minimises C sum(loss) + ||w||^2 / 2, i.e. sum(loss) + ||w||^2 / (2 C)
    return jnp.sum(p["coef"] ** 2) / (2.0 * C)


@pytest.fixture(scope="module")
def ridge_fit():
    return mlefit.fit(models.Logistic(), (X_LR, Y_LR), penalty=ridge)


def test_ridge_logistic_against_sklearn(ridge_fit):
    from sklearn.linear_model import LogisticRegression

    sk = LogisticRegression(C=C, tol=1e-12, max_iter=10_000).fit(X_LR, Y_LR)
    np.testing.assert_allclose(ridge_fit.params["coef"], sk.coef_[0], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(ridge_fit.params["intercept"], sk.intercept_[0], rtol=1e-6)


def test_ridge_loglik_excludes_penalty(ridge_fit):
    res = ridge_fit
    b0, w = float(res.params["intercept"]), np.asarray(res.params["coef"])
    ll = st.bernoulli.logpmf(Y_LR, 1 / (1 + np.exp(-(b0 + X_LR @ w)))).sum()  # scipy, directly
    pen = float(w @ w / (2 * C))
    np.testing.assert_allclose(res.loglik, ll, rtol=1e-10)
    np.testing.assert_allclose(res.penalty, pen, rtol=1e-12)
    np.testing.assert_allclose(res.objective, -ll + pen, rtol=1e-10)
    np.testing.assert_allclose(res.nll, (-ll + pen) / N_LR, rtol=1e-10)
    np.testing.assert_allclose(res.aic, 2 * 4 - 2 * ll, rtol=1e-10)
    np.testing.assert_allclose(res.bic, 4 * np.log(N_LR) - 2 * ll, rtol=1e-10)
    text = res.summary()
    assert "Penalty:" in text and "exclude the penalty" in text


def test_ridge_stderr_is_penalised_curvature(ridge_fit):
    # inverse of X~^T diag(p (1 - p)) X~ + diag(0, 1/C, ...): the MAP curvature
    res = ridge_fit
    Xt = np.column_stack([np.ones(N_LR), X_LR])
    b = np.concatenate([[float(res.params["intercept"])], np.asarray(res.params["coef"])])
    pr = 1 / (1 + np.exp(-Xt @ b))
    h = Xt.T @ (Xt * (pr * (1 - pr))[:, None]) + np.diag([0.0] + [1 / C] * D_LR)
    se = np.sqrt(np.diag(np.linalg.inv(h)))
    names = res.param_names  # coef[0..2], intercept
    got = np.asarray(res.cov).diagonal() ** 0.5
    order = [names.index("intercept")] + [names.index(f"coef[{j}]") for j in range(D_LR)]
    np.testing.assert_allclose(got[order], se, rtol=1e-8)


def test_log_prior_is_negated_penalty():
    from mlefit._likelihood import check_penalty

    p = {"coef": jnp.array([1.0, -2.0, 0.5])}
    f = check_penalty(None, lambda q: -ridge(q))
    np.testing.assert_allclose(f(p), ridge(p), rtol=1e-15)
    assert check_penalty(ridge, None) is ridge and check_penalty(None, None) is None


def test_penalty_with_fixed_parameter():
    # N(mu, 2^2) with penalty lam * mu^2 on the total NLL: mu = sum x / (n + 8 lam)
    lam = 3.0
    res = mlefit.fit(normal, X_NORMAL, INIT, fixed={"sigma": 2.0},
                     penalty=lambda p: lam * p["mu"] ** 2 + 0.0 * p["sigma"])
    n = X_NORMAL.size
    np.testing.assert_allclose(res.params["mu"], X_NORMAL.sum() / (n + 8 * lam), rtol=1e-10)
    np.testing.assert_allclose(res.stderr["mu"], 1 / np.sqrt(n / 4 + 2 * lam), rtol=1e-8)


def test_bad_penalty():
    with pytest.raises(ValueError, match=r"penalty, log_prior: give one of them"):
        mlefit.fit(normal, X_NORMAL, INIT, penalty=ridge, log_prior=ridge)
    with pytest.raises(TypeError, match=r"penalty: expected a function"):
        mlefit.fit(normal, X_NORMAL, INIT, penalty=1.0)
    with pytest.raises(ValueError, match=r"penalty: must return a float scalar"):
        mlefit.fit(normal, X_NORMAL, INIT, penalty=lambda p: jnp.stack([p["mu"], p["mu"]]))


# -- fit_many, bootstrap and gof of penalised and fixed fits -----------------------------------
def _gamma_log_prior(a, b):
    """log of a Gamma(a, rate b) prior on an exponential rate (conjugate)."""
    return lambda p: jst.gamma.logpdf(p["rate"], a, scale=1.0 / b)


def test_fit_many_map_of_exponential_rates_is_the_conjugate_closed_form():
    """Exponential rate with a Gamma(a, b) prior: MAP rate = (W + a - 1) / (sum w x + b)."""
    x = np.random.default_rng(21).exponential(2.0, (6, 40))
    a, b = 3.0, 4.0
    res = mlefit.fit_many(models.Exponential(), x, log_prior=_gamma_log_prior(a, b))
    np.testing.assert_allclose(res.params["rate"], (40 + a - 1) / (x.sum(1) + b), rtol=1e-9)
    # the likelihood alone in loglik; the prior's negative in penalty (as fit)
    rate = np.asarray(res.params["rate"])
    np.testing.assert_allclose(res.loglik, st.expon.logpdf(x, scale=1 / rate[:, None]).sum(1),
                               rtol=1e-12)
    np.testing.assert_allclose(res.penalty, -st.gamma.logpdf(rate, a, scale=1 / b), rtol=1e-12)
    one = mlefit.fit(models.Exponential(), x[4], log_prior=_gamma_log_prior(a, b))
    assert float(res[4].penalty) == pytest.approx(float(one.penalty), rel=1e-10)
    assert float(res[4].objective) == pytest.approx(float(one.objective), rel=1e-12)
    # frequency weights of equal totals W = 30: (W + a - 1) / (sum w x + b)
    w = np.ones((6, 40))
    w[:, :10] = 0.0
    prior = _gamma_log_prior(a, b)
    res_w = mlefit.fit_many(models.Exponential(), x, weights=w, penalty=lambda p: -prior(p))
    np.testing.assert_allclose(res_w.params["rate"],
                               (30 + a - 1) / ((w * x).sum(1) + b), rtol=1e-9)


def test_fit_many_refuses_a_penalty_over_data_sets_of_other_total_weights():
    x = np.ones((3, 5))
    w = np.ones((3, 5))
    w[2, 0] = 0.0
    with pytest.raises(ValueError, match="data set 0 has 5 and data set 2 has 4"):
        mlefit.fit_many(models.Exponential(), x, weights=w, penalty=lambda p: p["rate"] ** 2)
    with pytest.raises(ValueError, match="give one of them"):
        mlefit.fit_many(models.Exponential(), x, penalty=lambda p: 0.0,
                        log_prior=lambda p: 0.0)


_PIN = 1e8  # a penalty that pins the Gamma shape at 2 acts as fixing it


@pytest.fixture(scope="module")
def pinned_and_fixed():
    x = X_GAMMA * 0.8 + 0.3  # not exactly gamma: p-values away from 1
    pinned = mlefit.fit(models.Gamma(), x, penalty=lambda p: _PIN * (p["shape"] - 2.0) ** 2)
    fixed = mlefit.fit(models.Gamma(), x, fixed={"shape": 2.0})
    assert float(pinned.params["shape"]) == pytest.approx(2.0, abs=1e-6)
    return x, pinned, fixed


def test_bootstrap_refits_a_penalised_fit_with_its_penalty(pinned_and_fixed):
    _, pinned, fixed = pinned_and_fixed
    key = jax.random.key(5)
    bp = mlefit.bootstrap(pinned, n=50, key=key)
    bf = mlefit.bootstrap(fixed, n=50, key=key)
    assert bp.stderr["shape"] < 1e-5  # each replicate pinned too (unpenalised: about 0.2)
    assert bp.stderr["scale"] == pytest.approx(bf.stderr["scale"], rel=1e-4)
    # penalty=None asks for the plain MLE of each replicate
    free = mlefit.bootstrap(pinned, n=50, key=key, penalty=None)
    assert free.stderr["shape"] > 0.05


def test_gof_of_a_fit_with_a_fixed_parameter_agrees_with_scipy(pinned_and_fixed):
    """scipy's goodness_of_fit with known_params refits only the free ones, as mlefit."""
    x, pinned, fixed = pinned_and_fixed
    key = jax.random.key(6)
    g = fixed.gof("ad", n_boot=199, key=key)
    ref = st.goodness_of_fit(st.gamma, x, known_params={"a": 2.0, "loc": 0.0},
                             statistic="ad", n_mc_samples=199, rng=7)
    assert g.statistic["ad"] == pytest.approx(ref.statistic, rel=1e-6)
    sd = np.sqrt(2 * ref.pvalue * (1 - ref.pvalue) / 199)  # two estimates from 199 draws
    assert abs(g.pvalue["ad"] - ref.pvalue) < 4 * sd + 0.02
    # a penalised fit's replicates are refitted with the penalty: pinned = fixed
    gp = pinned.gof("ad", n_boot=199, key=key)
    assert gp.statistic["ad"] == pytest.approx(g.statistic["ad"], rel=1e-5)
    np.testing.assert_allclose(gp.null_statistics["ad"], g.null_statistics["ad"], rtol=1e-4)


def test_fixed_parameters_keep_the_column_labels_and_the_order_written():
    """A fixed scale leaves OLS coefficients (closed form), still named by the columns and
    shown in the model's order; the labels of a fixed parameter are dropped with it."""
    import pandas as pd
    rng = np.random.default_rng(22)
    df = pd.DataFrame({"age": rng.normal(50, 10, 80), "dose": rng.normal(0, 1, 80)})
    y = 1.0 + 0.03 * df["age"] - 0.8 * df["dose"] + rng.normal(0, 0.5, 80)
    res = mlefit.fit(models.LinearGaussian(), (df, y), fixed={"scale": 0.5})
    assert res.param_names == ["intercept", "coef[age]", "coef[dose]"]
    design = np.column_stack([np.ones(80), df.to_numpy()])
    ols = np.linalg.lstsq(design, y.to_numpy(), rcond=None)[0]
    np.testing.assert_allclose(res.to_frame()["estimate"].to_numpy(), ols, rtol=1e-8)
    logit = mlefit.fit(models.Logistic(), (df, (y > y.median()).astype(float)),
                       fixed={"intercept": -1.0})
    assert logit.param_names == ["coef[age]", "coef[dose]"]
    assert list(logit.to_frame().index) == ["coef[age]", "coef[dose]"]


def test_fit_many_of_a_fixed_model_keeps_the_fixed_value_per_data_set():
    # res[b] is fit(model, x[b]): the fixed shape in params (one per set), its mark in the
    # summary, std err 0, and what needs it (gof's CDF) works; scale = mean / shape.
    x = np.random.default_rng(2).gamma(2.0, 1.0, (3, 50))
    model = models.Gamma().fix(shape=2.0)
    many = mlefit.fit_many(model, x)
    np.testing.assert_array_equal(np.asarray(many.params["shape"]), [2.0, 2.0, 2.0])
    np.testing.assert_allclose(np.asarray(many.params["scale"]), x.mean(axis=1) / 2.0,
                               rtol=1e-9)
    np.testing.assert_array_equal(np.asarray(many.stderr["shape"]), [0.0, 0.0, 0.0])
    one = mlefit.fit(model, x[1])
    assert "(fixed)" in many[1].summary()
    assert float(many[1].loglik) == pytest.approx(float(one.loglik), rel=1e-12)
    key = jax.random.key(0)
    g_many, g_one = many[1].gof(n_boot=20, key=key), one.gof(n_boot=20, key=key)
    assert g_many.statistic["ks"] == pytest.approx(g_one.statistic["ks"], rel=1e-9)
    assert float(mlefit.bootstrap(one, n=20, key=key).stderr["shape"]) == 0.0
