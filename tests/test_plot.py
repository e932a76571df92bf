"""mlefit.plot: each function returns a figure with the expected artists (Agg backend).

No image comparison: the tests check what is drawn (number of lines and bars) and
that the drawn numbers are right (pdf, pmf and quantiles against scipy.stats).
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import jax.numpy as jnp  # noqa: E402
import jax.scipy.stats as jst  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import scipy.stats  # noqa: E402

import mlefit  # noqa: E402
from mlefit import plot  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _normal(p, x):
    return jst.norm.logpdf(x, p["mu"], p["sigma"])


@pytest.fixture(scope="module")
def normal_fit():
    x = np.random.default_rng(0).normal(2.0, 3.0, 400)
    return mlefit.fit(_normal, x, init={"mu": 0.0, "sigma": mlefit.Positive(1.0)}), x


@pytest.fixture(scope="module")
def poisson_fit():
    k = np.random.default_rng(1).poisson(3.5, 300).astype(float)
    return mlefit.fit(mlefit.models.Poisson(), k), k


def _n_bars(ax):
    return sum(isinstance(p, matplotlib.patches.Rectangle) for p in ax.patches)


def test_history(normal_fit):
    res, _ = normal_fit
    fig = plot.history(res)
    (ax,) = fig.axes
    (line,) = ax.lines
    np.testing.assert_array_equal(line.get_ydata(), res.history)
    assert ax.get_xlabel() == "step" and ax.get_ylabel() == "mean NLL"


def test_history_needs_a_recorded_history():
    res = mlefit.fit(_normal, jnp.arange(5.0), init={"mu": 0.0, "sigma": mlefit.Positive(1.0)},
                     history=False)
    with pytest.raises(ValueError, match="recorded no history"):
        plot.history(res)


def test_density_continuous(normal_fit):
    res, x = normal_fit
    fig = plot.density(res)
    (ax,) = fig.axes
    assert _n_bars(ax) == np.histogram_bin_edges(x, "auto").size - 1
    (line,) = ax.lines
    grid, pdf = line.get_data()
    mu, sigma = float(res.params["mu"]), float(res.params["sigma"])
    # the same density in closed form: only rounding separates them
    np.testing.assert_allclose(pdf, scipy.stats.norm.pdf(grid, mu, sigma), rtol=1e-12)
    assert grid.min() < x.min() and grid.max() > x.max()


def test_density_discrete(poisson_fit):
    res, k = poisson_fit
    fig = plot.density(res)  # discrete style chosen from the model
    (ax,) = fig.axes
    ks = np.arange(k.min(), k.max() + 1)
    assert _n_bars(ax) == ks.size
    heights = [p.get_height() for p in ax.patches]
    np.testing.assert_allclose(heights, [(k == v).mean() for v in ks], rtol=1e-15)
    (line,) = ax.lines
    lam = float(res.params["rate"]) if "rate" in res.params else float(res.params["lam"])
    np.testing.assert_allclose(line.get_ydata(), scipy.stats.poisson.pmf(ks, lam), rtol=1e-10)


def test_qq_continuous_quantiles_match_scipy(normal_fit):
    res, x = normal_fit
    fig = plot.qq(res)
    (ax,) = fig.axes
    points, ref = ax.lines
    theo, sample = points.get_data()
    np.testing.assert_array_equal(sample, np.sort(x))
    probs = (np.arange(1, x.size + 1) - 0.5) / x.size
    expected = scipy.stats.norm.ppf(probs, float(res.params["mu"]), float(res.params["sigma"]))
    # numerical CDF: trapezoid on 8001 points of a tan grid, then linear interpolation;
    # measured error ~1e-5 sigma, asserted at 1e-4 sigma
    np.testing.assert_allclose(theo, expected, atol=1e-4 * float(res.params["sigma"]))
    assert ref.get_xdata()[0] == ref.get_ydata()[0]  # the y = x line


@pytest.mark.parametrize("name, dist", [("Gamma", scipy.stats.gamma(0.7, scale=2.0)),
                                        ("StudentT", scipy.stats.t(2.5, loc=1.0, scale=0.5))])
def test_qq_skewed_and_heavy_tailed(name, dist):
    x = dist.rvs(size=300, random_state=np.random.default_rng(2))
    res = mlefit.fit(getattr(mlefit.models, name)(), x)
    theo = plot.qq(res).axes[0].lines[0].get_xdata()
    probs = (np.arange(1, x.size + 1) - 0.5) / x.size
    p = res.params
    if name == "Gamma":
        shape = float(p["shape"])
        scale = float(p["scale"]) if "scale" in p else 1.0 / float(p["rate"])
        fitted = scipy.stats.gamma(shape, scale=scale)
    else:
        fitted = scipy.stats.t(float(p["df"]), loc=float(p["loc"]), scale=float(p["scale"]))
    # a density singular at 0 (gamma shape < 1) and tails ~|x|^-3.5 cost accuracy of the
    # numerical CDF: 1e-3 of the distribution's scale is far below a plot's resolution
    np.testing.assert_allclose(theo, fitted.ppf(probs), atol=1e-3 * fitted.std())


def test_qq_discrete_is_exact(poisson_fit):
    res, k = poisson_fit
    theo = plot.qq(res).axes[0].lines[0].get_xdata()
    probs = (np.arange(1, k.size + 1) - 0.5) / k.size
    lam = float(res.params["rate"]) if "rate" in res.params else float(res.params["lam"])
    np.testing.assert_array_equal(theo, scipy.stats.poisson.ppf(probs, lam))


def test_draws_into_given_axes(normal_fit):
    res, x = normal_fit
    fig, (a1, a2) = plt.subplots(1, 2)
    assert plot.density(res, x, ax=a1) is fig
    assert plot.qq(res, x, ax=a2) is fig
    assert len(a1.lines) == 1 and len(a2.lines) == 2


def test_density_rejects_conditional_and_batched():
    X = np.ones((10, 1))
    y = np.arange(10.0)
    res = mlefit.fit(lambda p, x, y: jst.norm.logpdf(y, x @ p["w"], 1.0), (X, y),
                     init={"w": jnp.zeros(1)})
    with pytest.raises(ValueError, match="conditional model"):
        plot.density(res)
    if hasattr(mlefit, "fit_many"):
        data = np.random.default_rng(0).normal(size=(3, 20))
        many = mlefit.fit_many(mlefit.models.Normal(), data)
        with pytest.raises(ValueError, match="batched result"):
            plot.qq(many)


def test_profile(normal_fit):
    res, _ = normal_fit
    fig = plot.profile(res, "sigma", level=0.9)
    (ax,) = fig.axes
    curve, cut, lo, hi, est = ax.lines
    values, deviance = curve.get_data()
    # chi-square(1) 90% quantile
    assert cut.get_ydata()[0] == pytest.approx(scipy.stats.chi2.ppf(0.9, 1), rel=1e-12)
    lo_v, hi_v = lo.get_xdata()[0], hi.get_xdata()[0]
    assert lo_v < float(res.params["sigma"]) < hi_v
    # the profile interval ends where the drawn deviance crosses the cut-off; on a
    # 41-point grid linear interpolation is good to ~1% of the cut-off
    for end in (lo_v, hi_v):
        assert np.interp(end, values, deviance) == pytest.approx(cut.get_ydata()[0], rel=2e-2)
    assert deviance.min() >= -1e-8  # the estimate minimises the NLL
    with pytest.raises(ValueError, match="no parameter 'tau'"):
        plot.profile(res, "tau")


def test_estimates():
    rng = np.random.default_rng(3)
    data = rng.normal(1.0, 2.0, size=(40, 50))
    many = mlefit.fit_many(mlefit.models.Normal(), data)
    fig = plot.estimates(many, truth={"loc": 1.0, "scale": 2.0})
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 2
    for ax, true in zip(axes, (1.0, 2.0), strict=True):
        assert _n_bars(ax) > 0
        (line,) = ax.lines
        assert line.get_xdata()[0] == true
    # the histogram holds every converged estimate of mu: closed form, the sample means
    counts = sum(p.get_height() for p in axes[0].patches)
    assert counts == int(np.asarray(many.converged).sum()) == 40
    with pytest.raises(ValueError, match="expected 2 scalar parameters"):
        plot.estimates(many, truth={"loc": 1.0})
