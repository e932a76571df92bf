"""Honest statuses (non-finite Hessian, non-smooth likelihood, OPG from first derivatives)
and the guards of lr_test and float32 fits."""

import warnings

import jax
import jax.numpy as jnp
import jax.scipy.stats as jst
import numpy as np
import pytest
import scipy.special as sp
import scipy.stats as st

import mlefit
from mlefit import _precision, models

RNG = np.random.default_rng(9)


# -- non-finite Hessian ---------------------------------------------------------------------
def ordered_probit(p, x, y):
    cuts = jnp.concatenate([jnp.array([-jnp.inf]), p["cuts"], jnp.array([jnp.inf])])
    eta = x @ p["beta"]
    return jnp.log(jst.norm.cdf(cuts[y + 1] - eta) - jst.norm.cdf(cuts[y] - eta))


@pytest.fixture(scope="module")
def probit():
    X = RNG.normal(size=(200, 2))
    y = np.digitize(X @ np.array([1.0, -0.5]) + RNG.normal(size=200), [-0.5, 0.7])
    return mlefit.fit(ordered_probit, (X, y.astype(np.int32)),
                      {"beta": jnp.zeros(2), "cuts": jnp.array([-1.0, 1.0])})


def test_nonfinite_hessian_has_its_own_status(probit):
    assert probit.optimizer_status == mlefit.Status.CONVERGED
    assert probit.status == mlefit.Status.HESSIAN_NOT_FINITE
    assert "not finite" in probit.status.message
    text = probit.summary()
    assert "(Hessian not finite)" in text and "not identified" not in text
    assert "NaN or inf entries in the rows of beta[0], beta[1]" in text
    # the scores are finite: OPG errors exist and match the peer OPG of the same scores
    se = np.sqrt(np.diag(np.asarray(probit.covariance("opg"))))
    assert np.all(np.isfinite(se)) and np.all(se > 0)


# -- non-smooth likelihood: Laplace ----------------------------------------------------------
def _laplace(n):
    x = np.random.default_rng(n).laplace(1.0, 2.0, n)
    return mlefit.fit(models.Laplace(), x)


@pytest.fixture(scope="module")
def laplace_odd():
    return _laplace(2001)  # the median is a kink


@pytest.fixture(scope="module")
def laplace_even():
    return _laplace(200)  # a flat stretch between the middle two observations


@pytest.mark.parametrize("which", ["laplace_odd", "laplace_even"])
def test_laplace_uses_expected_information(which, request):
    res = request.getfixturevalue(which)
    n, b = int(res.n_obs), float(res.params["scale"])
    assert res.status == mlefit.Status.CONVERGED
    # I = diag(1/b^2, 1/b^2) per observation: se = b / sqrt(n) for both parameters
    np.testing.assert_allclose(res.stderr["loc"], b / np.sqrt(n), rtol=1e-12)
    np.testing.assert_allclose(res.stderr["scale"], b / np.sqrt(n), rtol=1e-12)
    assert "non-smooth likelihood" in res.summary()


def test_laplace_location_se_matches_parametric_bootstrap(laplace_odd):
    # Parametric bootstrap of the MLE of loc (the sample median) from the fitted
    # Laplace(loc, b): 2000 samples. Monte Carlo error of an SD: 1/sqrt(2 * 2000) ~ 1.6%;
    # the median's finite-n excess over b / sqrt(n) is O(1/sqrt(n)) relative (7% at
    # n = 201, ~2% at n = 2001); 8% tolerance.
    res = laplace_odd
    n = int(res.n_obs)
    loc, b = float(res.params["loc"]), float(res.params["scale"])
    med = np.median(np.random.default_rng(5).laplace(loc, b, (2000, n)), axis=1)
    np.testing.assert_allclose(float(res.stderr["loc"]), med.std(ddof=1), rtol=0.08)


# -- OPG without a Hessian -------------------------------------------------------------------
C_CENSOR = 4.0


def censored_gamma(p, x, d):
    a, s = p["shape"], p["scale"]
    # gammaincc has a gradient in `a` but no second derivative: no Hessian exists in JAX
    tail = jnp.log(jax.scipy.special.gammaincc(a, C_CENSOR / s))
    return jnp.where(d > 0, tail, jst.gamma.logpdf(x, a, scale=s))


def censored_gamma_np(a, s, x, d):
    return np.where(d > 0, np.log(sp.gammaincc(a, C_CENSOR / s)), st.gamma.logpdf(x, a, scale=s))


def test_opg_needs_first_derivatives_only():
    t = RNG.gamma(2.0, 1.5, 150)
    d = (t > C_CENSOR).astype(float)
    x = np.minimum(t, C_CENSOR)
    res = mlefit.fit(censored_gamma, (x, d), {"shape": mlefit.Positive(1.0),
                                               "scale": mlefit.Positive(1.0)})
    cov = np.asarray(res.covariance("opg"))
    a, s = float(res.params["shape"]), float(res.params["scale"])
    # peer: scores by central differences of scipy's log-density, in res.param_names order
    # (the order init was written in: shape, scale)
    assert res.param_names == ["shape", "scale"]
    h = 1e-6
    ds = (censored_gamma_np(a, s + h, x, d) - censored_gamma_np(a, s - h, x, d)) / (2 * h)
    da = (censored_gamma_np(a + h, s, x, d) - censored_gamma_np(a - h, s, x, d)) / (2 * h)
    scores = np.column_stack([da, ds])
    np.testing.assert_allclose(cov, np.linalg.inv(scores.T @ scores), rtol=1e-5)


# -- lr_test guards --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_samples():
    return RNG.gamma(2.0, 1.0, 100), RNG.gamma(2.0, 1.0, 100)


def test_lr_test_refuses_different_data(two_samples):
    a, b = two_samples
    with pytest.raises(ValueError, match=r"data\[0\] differs from the restricted fit's"):
        mlefit.lr_test(mlefit.fit(models.Exponential(), a), mlefit.fit(models.Gamma(), b))


def test_lr_test_refuses_a_better_restricted_fit(two_samples):
    # exponential data: the 1-parameter exponential fits far better than the 2-parameter
    # normal (about 40 log-likelihood units), so normal cannot contain it
    x = np.random.default_rng(3).exponential(1.0, two_samples[0].size)
    expo, norm = mlefit.fit(models.Exponential(), x), mlefit.fit(models.Normal(), x)
    assert float(expo.loglik) > float(norm.loglik) + 10
    with pytest.raises(ValueError, match=r"cannot fit better, so the pair is not nested"):
        mlefit.lr_test(expo, norm)


def test_lr_test_nested_regressions_share_the_response():
    X = RNG.normal(size=(80, 2))
    y = (RNG.random(80) < 0.5).astype(float)
    small = mlefit.fit(models.Logistic(), (X[:, :1], y))
    big = mlefit.fit(models.Logistic(), (X, y))
    assert mlefit.lr_test(small, big).df == 1  # design matrices differ in width: allowed
    with pytest.raises(ValueError, match=r"data\[1\] differs"):
        mlefit.lr_test(small, mlefit.fit(models.Logistic(), (X, 1.0 - y)))


def test_lr_test_warns_on_the_boundary():
    x = RNG.standard_t(8.0, 150)
    with pytest.warns(UserWarning, match=r"Normal is StudentT with df -> infinity.*boundary"):
        mlefit.lr_test(mlefit.fit(models.Normal(), x), mlefit.fit(models.StudentT(), x))


def test_lr_test_warns_that_fewer_mixture_components_have_no_chi2_reference():
    # Under one Normal the second component of the mixture has weight 0 and its location
    # and scale are not identified: the warning must say the p-value is not valid.
    x = RNG.normal(0.0, 1.0, 200)
    one = mlefit.fit(models.Normal(), x)
    two = mlefit.fit(models.Mixture([models.Normal(), models.Normal()]), x)
    with pytest.warns(UserWarning, match=r"Normal has 1 mixture component\(s\) and "
                      r"Mixture\(Normal, Normal\) 2: .* not identified.* not valid") as rec:
        mlefit.lr_test(one, two)
    assert rec[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a regular restriction: no warning
        mlefit.lr_test(mlefit.fit(models.Exponential(), np.abs(x)),
                       mlefit.fit(models.Gamma(), np.abs(x)))


def test_fingerprint_distinguishes_and_agrees():
    from mlefit._lrtest import data_fingerprint

    x = np.arange(10_000.0)
    y = x.copy()
    y[4096] += 1.0  # on the stride of 2 (10_000 // 4096)
    assert data_fingerprint(x) == data_fingerprint(jnp.asarray(x))
    assert data_fingerprint(x) != data_fingerprint(y)
    assert data_fingerprint(x)[0] == (10_000,)


# -- float32 ---------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["fit", "fit_many", "stream"])
def test_float32_fit_warns_once(monkeypatch, how):
    monkeypatch.setitem(_precision._WARNED, "float32", False)
    x = RNG.normal(1.0, 2.0, 64).astype(np.float32)
    run = {
        "fit": lambda: mlefit.fit(models.Normal(), x),
        "fit_many": lambda: mlefit.fit_many(models.Normal(), x.reshape(4, 16)),
        "stream": lambda: mlefit.fit(models.Normal(), mlefit.ArrayStream(x, chunk_size=16)),
    }[how]
    with pytest.warns(UserWarning, match=r"float32.*about 7 significant digits.*jax_enable_x64"):
        run()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run()  # once per process
