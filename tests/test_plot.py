"""mlefit.plot: each function returns a figure with the expected artists (Agg backend).

No image comparison: the tests check what is drawn (number of lines and bars) and
that the drawn numbers are right (pdf, pmf and quantiles against scipy.stats).
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import dataclasses  # noqa: E402
import re  # noqa: E402

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


def _line(ax, gid):
    (line,) = [ln for ln in ax.lines if ln.get_gid() == gid]
    return line


def _legend_numbers(ax, name):
    """The values written as ``name=value`` in the legend texts."""
    texts = " ".join(t.get_text() for t in ax.get_legend().get_texts())
    return [float(v) for v in re.findall(rf"\b{name}=([-+0-9.e]+)", texts)]


def test_history(normal_fit):
    res, _ = normal_fit
    fig = plot.history(res)
    (ax,) = fig.axes
    (line,) = ax.lines
    h = res.history
    gap = line.get_ydata()
    # NLL - min on a log axis; the step at the minimum (gap 0) is not drawn
    assert ax.get_yscale() == "log"
    at_min = h == h.min()
    np.testing.assert_array_equal(gap[~at_min], h[~at_min] - h.min())
    assert np.isnan(gap[at_min]).all() and at_min.sum() >= 1
    assert ax.get_xlabel() == "step" and ax.get_ylabel() == "mean NLL - min"


def test_history_of_a_batched_fit_has_one_line_per_fit(normal_fit):
    res = normal_fit[0]
    h = np.asarray(res.history_buffer)
    # fit_many(..., history=True) keeps a (B, max_steps + 1) NaN-padded buffer
    batched = dataclasses.replace(res, history_buffer=np.stack([h, h + 1.0, h + 2.0]))
    lines = plot.history(batched).axes[0].lines
    assert len(lines) == 3
    # each fit minus its own minimum: the shifted copies draw the same curve
    np.testing.assert_allclose(lines[2].get_ydata(), lines[0].get_ydata(), rtol=1e-12)


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
    assert ax.get_xlabel() == "x"  # no name given


def test_density_of_a_penalised_fit_is_the_model_density(normal_fit):
    """The penalty is part of the objective, not of the fitted distribution."""
    _, x = normal_fit
    res = mlefit.fit(mlefit.models.Normal(), x, penalty=lambda p: 50.0 * p["loc"] ** 2)
    assert float(res.penalty) / N > 1e-3  # exp(-f / n): a shift far above the tolerance
    grid, pdf = plot.density(res).axes[0].lines[0].get_data()
    mu, sigma = float(res.params["loc"]), float(res.params["scale"])
    np.testing.assert_allclose(pdf, scipy.stats.norm.pdf(grid, mu, sigma), rtol=1e-12)


def test_density_labels_the_variable_and_the_fitted_parameters(normal_fit):
    res, _ = normal_fit
    ax = plot.density(res, label="duration (days)").axes[0]
    assert ax.get_xlabel() == "duration (days)"
    (fitted,) = [t.get_text() for t in ax.get_legend().get_texts() if "Normal(" in t.get_text()]
    assert fitted.startswith("Normal(loc=") and ", scale=" in fitted
    # 4 significant digits of each estimate
    for name in ("loc", "scale"):
        (value,) = _legend_numbers(ax, name)
        assert value == pytest.approx(float(res.params[name]), rel=5e-4)


def test_density_discrete(poisson_fit):
    res, k = poisson_fit
    fig = plot.density(res)  # discrete style chosen from the model
    (ax,) = fig.axes
    ks = np.arange(k.min(), k.max() + 1)
    # bars, not a connected line: observed counts, then expected counts n p(k)
    assert not ax.lines and _n_bars(ax) == 2 * ks.size
    assert all(isinstance(p, matplotlib.patches.Rectangle) for p in ax.patches)
    observed, expected = ax.containers
    np.testing.assert_array_equal([p.get_height() for p in observed], [(k == v).sum() for v in ks])
    lam = float(res.params["rate"]) if "rate" in res.params else float(res.params["lam"])
    np.testing.assert_allclose([p.get_height() for p in expected],
                               N * scipy.stats.poisson.pmf(ks, lam), rtol=1e-10)
    # side by side, centred on each k
    centres = [p.get_x() + p.get_width() / 2 for p in observed]
    np.testing.assert_allclose(centres, ks - 0.2, atol=1e-12)
    assert ax.get_ylabel() == "count"
    (rate,) = _legend_numbers(ax, "rate")
    assert rate == pytest.approx(lam, rel=5e-4)


@pytest.mark.parametrize("name, draw", [
    ("Bernoulli", lambda r: r.binomial(1, 0.3, N)),
    ("NegativeBinomial", lambda r: r.negative_binomial(3, 0.4, N)),
    ("Categorical", lambda r: r.integers(0, 3, N)),
])
def test_other_discrete_models_are_bars_of_counts(name, draw):
    k = draw(np.random.default_rng(4)).astype(float)
    model = mlefit.models.Categorical(3) if name == "Categorical" else getattr(
        mlefit.models, name)()
    res = mlefit.fit(model, k)
    ax = plot.density(res).axes[0]
    observed, expected = ax.containers
    ks = np.arange(k.min(), k.max() + 1)
    np.testing.assert_array_equal([p.get_height() for p in observed], [(k == v).sum() for v in ks])
    heights = np.array([p.get_height() for p in expected])
    if name == "NegativeBinomial":
        nb = scipy.stats.nbinom(float(res.params["n"]), float(res.params["p"]))
        np.testing.assert_allclose(heights, N * nb.pmf(ks), rtol=1e-10)
    else:
        # a saturated model: the MLE reproduces the observed frequencies (to the fit's tol)
        np.testing.assert_allclose(heights, [(k == v).sum() for v in ks], rtol=1e-6)


def test_qq_continuous_quantiles_match_scipy(normal_fit):
    res, x = normal_fit
    fig = plot.qq(res)
    (ax,) = fig.axes
    points, ref = _line(ax, "data"), _line(ax, "identity")
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
    theo = _line(plot.qq(res, level=None).axes[0], "data").get_xdata()
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
    theo = _line(plot.qq(res, level=None).axes[0], "data").get_xdata()
    probs = (np.arange(1, k.size + 1) - 0.5) / k.size
    lam = float(res.params["rate"]) if "rate" in res.params else float(res.params["lam"])
    np.testing.assert_array_equal(theo, scipy.stats.poisson.ppf(probs, lam))


def test_draws_into_given_axes(normal_fit):
    res, x = normal_fit
    fig, (a1, a2) = plt.subplots(1, 2)
    assert plot.density(res, x, ax=a1) is fig
    assert plot.qq(res, x, ax=a2) is fig
    assert len(a1.lines) == 1 and len(a2.lines) == 4  # data, y = x, the envelope's two ends


def test_density_rejects_conditional_and_batched(normal_fit):
    res, x = normal_fit
    conditional = dataclasses.replace(res, data=(np.ones((N, 1)), x))  # as a fit of p(y | x)
    with pytest.raises(ValueError, match="conditional model"):
        plot.density(conditional)
    batched = dataclasses.replace(res, nll=np.zeros(3))  # batch_shape (3,), as fit_many's
    with pytest.raises(ValueError, match="batched result"):
        plot.qq(batched)


def test_qq_envelope_holds_about_95_percent_of_samples_from_the_fitted_model(normal_fit):
    res, _ = normal_fit
    ax = plot.qq(res, n_sim=4000, label="X").axes[0]
    assert ax.get_ylabel() == "X (sorted)"
    lower, upper = _line(ax, "envelope_lower"), _line(ax, "envelope_upper")
    theo = _line(ax, "data").get_xdata()
    np.testing.assert_array_equal(lower.get_xdata(), theo)  # every point (n = 62)
    mu, sigma = float(res.params["loc"]), float(res.params["scale"])
    sims = np.sort(np.random.default_rng(5).normal(mu, sigma, (4000, N)), axis=1)
    inside = np.all((sims >= lower.get_ydata()) & (sims <= upper.get_ydata()), axis=1)
    # simultaneous 95%: binomial sd of the fresh fraction 0.0034, of the calibration on
    # 4,000 simulated curves about as much; allowed 4 sd of their sum
    assert abs(inside.mean() - 0.95) < 0.02
    # a pointwise band would be far narrower: only few samples stay inside everywhere
    assert np.all(lower.get_ydata() < theo) and np.all(upper.get_ydata() > theo)


def test_simultaneous_band_thins_large_samples():
    ranks, lo, hi = plot.simultaneous_band(100_000, 0.9, n_sim=200, max_points=500)
    assert ranks[0] == 1 and ranks[-1] == 100_000 and ranks.size <= 500
    # the middle order statistic of 1e5 uniforms: mean 1/2, sd 1 / (2 sqrt(n)) = 0.0016
    mid = np.searchsorted(ranks, 50_000)
    assert lo[mid] < 0.5 < hi[mid] and hi[mid] - lo[mid] < 20 * 0.0016
    assert np.all(np.diff(lo) >= 0) and np.all(hi > lo)


def test_ecdf_with_fitted_cdf_and_dkw_band(normal_fit):
    res, x = normal_fit
    ax = plot.ecdf(res, level=0.9, label="X").axes[0]
    assert ax.get_xlabel() == "X"
    xs, fn = _line(ax, "ecdf").get_data()
    np.testing.assert_array_equal(xs[1:-1], np.sort(x))
    np.testing.assert_array_equal(fn[1:-1], np.arange(1, N + 1) / N)
    eps = np.sqrt(np.log(2 / 0.1) / (2 * N))  # Dvoretzky-Kiefer-Wolfowitz
    np.testing.assert_allclose(_line(ax, "dkw_upper").get_ydata(), np.minimum(fn + eps, 1))
    np.testing.assert_allclose(_line(ax, "dkw_lower").get_ydata(), np.maximum(fn - eps, 0))
    g, cdf = _line(ax, "fitted").get_data()
    mu, sigma = float(res.params["loc"]), float(res.params["scale"])
    # numerical CDF of the fitted density (see test_qq_continuous_quantiles_match_scipy)
    np.testing.assert_allclose(cdf, scipy.stats.norm.cdf(g, mu, sigma), atol=1e-5)
    (loc,) = _legend_numbers(ax, "loc")
    assert loc == pytest.approx(mu, rel=5e-4)


def test_ecdf_discrete_is_a_step_of_the_cumulated_pmf(poisson_fit):
    res, k = poisson_fit
    ax = plot.ecdf(res, level=None).axes[0]
    assert not [ln for ln in ax.lines if ln.get_gid() == "dkw_upper"]
    ks, cdf = _line(ax, "fitted").get_data()
    lam = float(res.params["rate"])
    np.testing.assert_allclose(cdf, scipy.stats.poisson.cdf(ks, lam), rtol=1e-10)


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
    curve, wald, cut, lo, hi, est = ax.lines
    assert wald.get_gid() == "wald"
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
    # the Wald parabola uses the standard error of the normal scale, sigma / sqrt(2 n)
    se = known.est / np.sqrt(2 * N)
    np.testing.assert_allclose(wald.get_xdata(), values)
    np.testing.assert_allclose(wald.get_ydata(), ((values - known.est) / se) ** 2, rtol=1e-6)
    with pytest.raises(ValueError, match="no parameter 'tau'"):
        plot.profile(known, "tau")


def test_profile_open_interval_stays_inside_the_constraint(normal_fit):
    # a wide profile whose lower end is the bound 0 of a Positive parameter
    known = _KnownProfile(normal_fit[0], w=10.0, lower_open=True)
    fig = plot.profile(known, "scale")
    (values,) = known.calls
    assert values.min() > 0  # never evaluated on or beyond the bound
    lines = fig.axes[0].lines
    assert len(lines) == 5  # curve, Wald parabola, cut-off, the one finite end, the estimate


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


def test_cli_plot_labels_the_data_axes_with_the_column_name(tmp_path, monkeypatch, capsys):
    from mlefit import _cli

    # (tests/conftest.py turns the compilation cache off: nothing is written)
    x = np.random.default_rng(6).normal(2.0, 3.0, N)
    csv = tmp_path / "d.csv"
    csv.write_text("id,wait_time\n" + "".join(f"{i},{float(v)!r}\n" for i, v in enumerate(x)))
    labels = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda self, *a, **k: labels.append(
        [(ax.get_xlabel(), ax.get_ylabel()) for ax in self.axes]))
    code = _cli.main(["fit", str(csv), "--dist", "normal", "--column", "wait_time",
                      "--plot", str(tmp_path / "f.png")])
    assert code == 0, capsys.readouterr()
    ((density_axes, qq_axes),) = labels
    assert density_axes == ("wait_time", "density")
    assert qq_axes == ("Normal quantiles (fitted)", "wait_time (sorted)")
