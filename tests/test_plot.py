"""mlefit.plot: each function returns a figure with the expected artists (Agg backend).

No image comparison: the tests check what is drawn (number of lines and bars) and
that the drawn numbers are right (pdf, pmf and quantiles against scipy.stats).
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import dataclasses  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import scipy.stats  # noqa: E402

import mlefit  # noqa: E402
import mlefit.models  # noqa: E402
from mlefit import plot  # noqa: E402

# 62 observations everywhere (the size of the bundled data, also used by test_cli): each
# model then compiles once for the whole test session.
N = 62


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def normal_fit():
    x = np.random.default_rng(0).normal(2.0, 3.0, N)
    return mlefit.fit(mlefit.models.Normal(), x), x


@pytest.fixture(scope="module")
def poisson_fit():
    k = np.random.default_rng(1).poisson(3.5, N).astype(float)
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


def test_history_of_a_batched_fit_has_one_line_per_fit(normal_fit):
    res = normal_fit[0]
    h = np.asarray(res.history_buffer)
    # fit_many(..., history=True) keeps a (B, max_steps + 1) NaN-padded buffer
    batched = dataclasses.replace(res, history_buffer=np.stack([h, h + 1.0, h + 2.0]))
    lines = plot.history(batched).axes[0].lines
    assert len(lines) == 3
    np.testing.assert_array_equal(lines[2].get_ydata(), h + 2.0)


def test_history_needs_a_recorded_history(normal_fit):
    res = dataclasses.replace(normal_fit[0], history_buffer=None)  # as fit(..., history=False)
    with pytest.raises(ValueError, match="recorded no history"):
        plot.history(res)


def test_density_continuous(normal_fit):
    res, x = normal_fit
    fig = plot.density(res)
    (ax,) = fig.axes
    assert _n_bars(ax) == np.histogram_bin_edges(x, "auto").size - 1
    (line,) = ax.lines
    grid, pdf = line.get_data()
    mu, sigma = float(res.params["loc"]), float(res.params["scale"])
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
    sigma = float(res.params["scale"])
    expected = scipy.stats.norm.ppf(probs, float(res.params["loc"]), sigma)
    # numerical CDF: trapezoid on 8001 points of a tan grid, then linear interpolation;
    # measured error ~1e-5 sigma, asserted at 1e-4 sigma
    np.testing.assert_allclose(theo, expected, atol=1e-4 * sigma)
    assert ref.get_xdata()[0] == ref.get_ydata()[0]  # the y = x line


@pytest.mark.parametrize("name, dist", [("Gamma", scipy.stats.gamma(0.7, scale=2.0)),
                                        ("StudentT", scipy.stats.t(2.5, loc=1.0, scale=0.5))])
def test_qq_skewed_and_heavy_tailed(name, dist):
    x = dist.rvs(size=N, random_state=np.random.default_rng(2))
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


def test_density_rejects_conditional_and_batched(normal_fit):
    res, x = normal_fit
    conditional = dataclasses.replace(res, data=(np.ones((N, 1)), x))  # as a fit of p(y | x)
    with pytest.raises(ValueError, match="conditional model"):
        plot.density(conditional)
    batched = dataclasses.replace(res, nll=np.zeros(3))  # batch_shape (3,), as fit_many's
    with pytest.raises(ValueError, match="batched result"):
        plot.qq(batched)


class _KnownProfile:
    """A real fit whose profile is replaced by a known curve (synthetic input).

    The deviance is the parabola ``((v - est) / w)^2``, so the profile interval at
    ``level`` is ``est -/+ w * sqrt(chi2_1(level))``. The profile computation itself
    is tested with the inference engine; here we test what the plot draws.
    """

    def __init__(self, res, w, lower_open=False):
        self._res, self.w, self.lower_open, self.calls = res, w, lower_open, []
        self.est = float(res.params["scale"])

    def __getattr__(self, name):
        return getattr(self._res, name)

    def confint(self, level, method="wald", params=None):
        assert method == "profile" and params == ["scale"]
        h = self.w * np.sqrt(scipy.stats.chi2.ppf(level, 1))
        return np.array([[0.0 if self.lower_open else self.est - h, self.est + h]])

    def profile(self, name, values):
        """The total NLL: its minimum ``-loglik`` plus half the deviance."""
        self.calls.append(np.asarray(values))
        return -float(self._res.loglik) + 0.5 * ((np.asarray(values) - self.est) / self.w) ** 2


def test_profile(normal_fit):
    known = _KnownProfile(normal_fit[0], w=0.25)
    fig = plot.profile(known, "scale", level=0.9)
    (ax,) = fig.axes
    curve, cut, lo, hi, est = ax.lines
    q = scipy.stats.chi2.ppf(0.9, 1)
    assert cut.get_ydata()[0] == pytest.approx(q, rel=1e-12)
    h = 0.25 * np.sqrt(q)
    assert lo.get_xdata()[0] == pytest.approx(known.est - h, rel=1e-12)
    assert hi.get_xdata()[0] == pytest.approx(known.est + h, rel=1e-12)
    assert est.get_xdata()[0] == pytest.approx(known.est, rel=1e-12)
    values, deviance = curve.get_data()
    # the grid spans the interval and half its width either side; the curve is drawn as given
    assert values.min() == pytest.approx(known.est - 1.5 * h) and values.size == 41
    assert values.max() == pytest.approx(known.est + 1.5 * h)
    # deviance = 2 (NLL_total - min): only rounding of the -loglik round trip separates them
    np.testing.assert_allclose(deviance, ((values - known.est) / 0.25) ** 2, atol=1e-10)
    with pytest.raises(ValueError, match="no parameter 'tau'"):
        plot.profile(known, "tau")


def test_profile_open_interval_stays_inside_the_constraint(normal_fit):
    # a wide profile whose lower end is the bound 0 of a Positive parameter
    known = _KnownProfile(normal_fit[0], w=10.0, lower_open=True)
    fig = plot.profile(known, "scale")
    (values,) = known.calls
    assert values.min() > 0  # never evaluated on or beyond the bound
    lines = fig.axes[0].lines
    assert len(lines) == 4  # curve, cut-off, the one finite end, the estimate


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
