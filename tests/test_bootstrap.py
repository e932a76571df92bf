"""Parametric bootstrap: standard errors and percentile intervals against closed forms."""

import equinox as eqx
import jax
import jax.scipy.stats as jst
import numpy as np
import pytest
from scipy.special import gammaln

import mlefit
from mlefit.models import Gamma, LinearGaussian, Normal

N_OBS, N_BOOT = 50, 1000


@pytest.fixture(scope="module")
def fitted():
    x = np.random.default_rng(7).normal(3.0, 2.0, N_OBS)
    return x, mlefit.fit(Normal(), x)


@pytest.fixture(scope="module")
def boot(fitted):
    _, res = fitted
    return mlefit.bootstrap(res, n=N_BOOT, key=jax.random.key(0))


def test_shapes_and_counts(boot):
    assert boot.estimates["loc"].shape == (N_BOOT,)
    assert boot.intervals["loc"].shape == (2,) and boot.intervals["scale"].shape == (2,)
    assert boot.converged.shape == (N_BOOT,) and boot.n_failed == 0
    assert boot.fits.batch_shape == (N_BOOT,)
    assert "n_failed=0" in repr(boot)


def test_stderr_of_a_gaussian_mean(fitted, boot):
    x, res = fitted
    sigma_hat = x.std()
    # Replicates are x* ~ N(mu_hat, sigma_hat^2), so loc* ~ N(mu_hat, sigma_hat^2 / n)
    # exactly: SE = sigma_hat / sqrt(n). The sample SD of R = 1000 normal draws has a
    # relative standard error of 1 / sqrt(2 (R - 1)) = 2.2%; 10% is 4.5 of those.
    assert abs(boot.stderr["loc"] / (sigma_hat / np.sqrt(N_OBS)) - 1) < 0.10
    # scale* = sigma_hat sqrt(chi2_{n-1} / n): its exact SD from E sqrt(chi2_k).
    k = N_OBS - 1
    mean_sqrt = np.sqrt(2.0) * np.exp(gammaln((k + 1) / 2) - gammaln(k / 2))
    sd_scale = sigma_hat * np.sqrt(k / N_OBS - mean_sqrt**2 / N_OBS)
    assert abs(boot.stderr["scale"] / sd_scale - 1) < 0.10


def test_percentile_interval_of_a_gaussian_mean(fitted, boot):
    x, res = fitted
    se = x.std() / np.sqrt(N_OBS)
    z = 1.959963984540054
    lo, hi = boot.confint()["loc"]
    # The 2.5% quantile of R = 1000 normal draws has a standard error of
    # sqrt(q (1 - q) / R) / phi(z) = 0.085 SE; 0.4 SE is 4.7 of those.
    assert abs(lo - (float(res.params["loc"]) - z * se)) < 0.4 * se
    assert abs(hi - (float(res.params["loc"]) + z * se)) < 0.4 * se


def test_conditional_model_keeps_the_design_fixed():
    rng = np.random.default_rng(8)
    X = rng.normal(size=(30, 1))
    y = 0.5 + 1.5 * X[:, 0] + rng.normal(0.0, 0.7, 30)
    res = mlefit.fit(LinearGaussian(), (X, y))
    boot = mlefit.bootstrap(res, n=300, key=jax.random.key(1))
    assert boot.estimates["coef"].shape == (300, 1)
    # With X fixed, coef* ~ N(coef_hat, sigma_hat^2 / Sxx) exactly (least squares with
    # Gaussian noise). R = 300: relative MC error of an SD 4.1%; 20% is ~5 of those.
    sigma_hat = float(res.params["scale"])
    xc = X[:, 0] - X[:, 0].mean()
    se = sigma_hat / np.sqrt(np.sum(xc**2))
    assert abs(boot.stderr["coef"][0] / se - 1) < 0.20
    assert np.allclose(np.asarray(boot.fits.data[0][7]), X)  # every replicate has the same X


def test_errors(fitted):
    _, res = fitted
    key = jax.random.key(0)
    plain = lambda p, x: jst.norm.logpdf(x, p["loc"], p["scale"])  # noqa: E731
    with pytest.raises(TypeError, match="cannot simulate data"):
        mlefit.bootstrap(res, plain, n=10, key=key)
    with pytest.raises(ValueError, match="n: the number of replicates"):
        mlefit.bootstrap(res, n=1, key=key)
    with pytest.raises(ValueError, match="level: must be strictly between"):
        mlefit.bootstrap(res, n=10, key=key, level=1.5)
    batched = jax.tree.map(lambda a: np.stack([a, a]), res)
    with pytest.raises(TypeError, match="index it first"):
        mlefit.bootstrap(batched, n=10, key=key)
    weighted = eqx.tree_at(
        lambda r: r.weights, res, np.full(N_OBS, 0.5), is_leaf=lambda v: v is None
    )
    with pytest.raises(ValueError, match=r"non-integer weights \(weights\[0\] = 0.5\); a "
                       r"parametric bootstrap takes frequency weights only"):
        mlefit.bootstrap(weighted, n=10, key=key)


def test_integer_frequency_weights_bootstrap_the_expanded_sample():
    # Frequency weights mean repeated rows: the bootstrap of the weighted fit is the
    # bootstrap of the sample with each row repeated weights[i] times (same size, key).
    x = np.random.default_rng(4).gamma(3.0, 2.0, 40)
    w = np.random.default_rng(5).integers(0, 4, 40)
    key = jax.random.key(1)
    weighted = mlefit.bootstrap(mlefit.fit(Gamma(), x, weights=w), n=50, key=key)
    expanded = mlefit.bootstrap(mlefit.fit(Gamma(), np.repeat(x, w)), n=50, key=key)
    for name in ("shape", "scale"):
        assert weighted.stderr[name] == pytest.approx(expanded.stderr[name], rel=1e-6)
