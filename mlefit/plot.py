"""Plots of a fit (matplotlib, the optional extra ``mlefit[plot]``).

Each function takes a :class:`~mlefit.FitResult` (and data where needed), draws into
``ax`` when one is given, and returns the matplotlib ``Figure``:

- :func:`history`: the mean NLL after each optimiser step, minus its minimum, log scale;
- :func:`density`: fitted density over a histogram (continuous), or bars of observed
  and expected counts (discrete);
- :func:`qq`: sample quantiles against the fitted model's quantiles, with a simultaneous
  envelope;
- :func:`ecdf`: the empirical CDF with the fitted CDF and a DKW confidence band;
- :func:`profile`: the profile-likelihood curve with its confidence interval and the
  Wald parabola;
- :func:`estimates`: for a batched fit (``fit_many``), the distribution of estimates.

Legends name the fitted model with its estimates (``Gamma(shape=2.31, scale=1.52)``);
``label=`` names the observed variable (the CLI passes its ``--column``).

Densities, CDFs and quantiles come from the model's own ``log_prob`` (exponentiated and
integrated numerically), so they work for any unconditional model, without scipy.
"""

from __future__ import annotations

import math
import statistics

import jax
import numpy as np
from jax.flatten_util import ravel_pytree

from ._constraints import constrain
from ._inference import flat_names_of
from ._numeric_dist import continuous_cdf, integer_support, logpdf, quantiles

__all__ = ["history", "density", "qq", "ecdf", "profile", "estimates", "fitted_label"]

_DISCRETE_MODELS = {
    "poisson", "negativebinomial", "bernoulli", "binomial", "geometric", "categorical",
}


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(
            "mlefit.plot needs matplotlib, which is not installed: pip install 'mlefit[plot]'"
        ) from None
    return plt


def _figure_and_axes(ax, **subplots_kw):
    if ax is not None:
        return ax.figure, ax
    return _pyplot().subplots(**subplots_kw)


def _check_single(res, what: str) -> None:
    if res.batch_shape:
        raise ValueError(
            f"res: {what} takes a single fit, got a batched result with batch_shape "
            f"{res.batch_shape}; pick one with res[i], or use mlefit.plot.estimates(res)."
        )


def _is_discrete(res) -> bool:
    source = res.problem.source
    flag = getattr(source, "discrete", None)
    if isinstance(flag, bool):
        return flag
    return type(source).__name__.lower() in _DISCRETE_MODELS


def _observations(res, data) -> np.ndarray:
    if data is None:
        if len(res.data) != 1:
            raise ValueError(
                f"data: the fit has {len(res.data)} data arrays (a conditional model); "
                "density and Q-Q plots are for unconditional models of one array."
            )
        data = res.data[0]
    x = np.asarray(data, dtype=float)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(
            f"data: expected a non-empty 1-D array of scalar observations, got shape {x.shape}"
        )
    return x


def fitted_label(res, digits: int = 4, max_params: int = 6) -> str:
    """Returns ``"Model(name=value, ...)"`` with the estimates to ``digits`` significant
    digits, e.g. ``"Gamma(shape=2.31, scale=1.52)"`` (at most ``max_params`` scalars, then
    ``...``)."""
    names, cols = _flat_batched(res.params, 0)
    parts = [f"{n}={float(c[0]):.{digits}g}" for n, c in zip(names, cols, strict=True)]
    if len(parts) > max_params:
        parts = parts[:max_params] + ["..."]
    return f"{res.model_name}({', '.join(parts)})"


# -- public plots --------------------------------------------------------------------
def history(res, ax=None):
    """Returns a Figure of ``NLL_t - min_t NLL_t`` after each step, on a log scale.

    The mean NLL ``NLL_t`` after step ``t`` (per epoch for minibatch fits) minus its
    smallest value: linear convergence is a straight line, Newton's quadratic convergence
    a bending one, a stall a plateau. The step that reaches the minimum (difference 0)
    has no place on a log axis and is left out. For a batched result (``fit_many``), one
    line per fit (at most 50), each minus its own minimum.

    Example:
        >>> import mlefit
        >>> res = mlefit.fit(mlefit.models.Gamma(), mlefit.datasets.strikes())
        >>> fig = mlefit.plot.history(res)
        >>> len(fig.axes[0].lines)
        1
    """
    h = res.history
    if h is None:
        raise ValueError("res: this fit recorded no history; fit again with history=True")
    fig, ax = _figure_and_axes(ax)
    h = np.asarray(h, dtype=float)
    rows = h[None] if h.ndim == 1 else h.reshape(-1, h.shape[-1])[:50]
    for row in rows:
        gap = row - np.nanmin(row)
        gap = np.where(gap > 0, gap, np.nan)  # the minimum itself: not on a log axis
        if h.ndim == 1:
            ax.plot(np.arange(row.size), gap, marker="." if row.size < 50 else None)
        else:
            ax.plot(np.arange(row.size), gap, lw=0.8, alpha=0.6)
    ax.set_yscale("log")
    ax.set_xlabel("epoch" if res.minibatch else "step")
    ax.set_ylabel("mean NLL - min")
    low = np.nanmin(h)
    ax.set_title(f"{res.model_name}: optimisation history (min mean NLL {low:.10g})")
    return fig


def density(res, data=None, ax=None, *, discrete: bool | None = None, bins="auto",
            label: str | None = None):
    """Returns a Figure of the fitted density over the data.

    Continuous models: a density-normalised histogram of the data and the fitted pdf
    ``p(x; theta_hat) = exp(log_prob(theta_hat, x))``. Discrete models: for each integer
    ``k`` from the smallest to the largest observation, a bar of the observed count
    ``#{i : x_i = k}`` and beside it a bar of the expected count ``n p(k; theta_hat)``.
    The legend names the fitted model with its estimates.

    Args:
        res: a single (unbatched) fit of an unconditional model.
        data: the observations (default: those of the fit).
        ax: a matplotlib Axes to draw into (default: a new figure).
        discrete: force the discrete (bar chart) or continuous (histogram) style;
            default: from the model.
        bins: histogram bins for continuous data (``numpy.histogram`` rules).
        label: the name of the variable (e.g. its column name), for the x axis.

    Example:
        >>> import mlefit
        >>> x = mlefit.datasets.strikes()
        >>> fig = mlefit.plot.density(mlefit.fit(mlefit.models.Gamma(), x), label="duration")
        >>> fig.savefig("gamma.png")  # doctest: +SKIP
    """
    _check_single(res, "density")
    x = _observations(res, data)
    discrete = _is_discrete(res) if discrete is None else discrete
    fig, ax = _figure_and_axes(ax)
    fitted = fitted_label(res)
    if discrete:
        values, counts = np.unique(np.round(x).astype(np.int64), return_counts=True)
        ks = np.arange(values.min(), values.max() + 1)
        observed = np.zeros(ks.size)
        observed[np.searchsorted(ks, values)] = counts
        expected = x.size * np.exp(logpdf(res, ks.astype(float)))
        ax.bar(ks - 0.2, observed, width=0.4, alpha=0.7, label=f"observed (n = {x.size})")
        ax.bar(ks + 0.2, expected, width=0.4, alpha=0.7, color="C3",
               label=f"expected: {fitted}")
        ax.set_ylabel("count")
        if ks.size <= 30:
            ax.set_xticks(ks)
    else:
        ax.hist(x, bins=bins, density=True, alpha=0.5, label=f"data (n = {x.size})")
        pad = 0.05 * (x.max() - x.min() or 1.0)
        grid = np.linspace(x.min() - pad, x.max() + pad, 400)
        lp = logpdf(res, grid)
        # outside the support (log p = -inf) draw nothing rather than a line at zero
        pdf = np.where(lp > -np.inf, np.exp(lp), np.nan)
        ax.plot(grid, pdf, color="C3", lw=2, label=fitted)
        ax.set_ylabel("density")
    ax.set_xlabel(label if label is not None else "x")
    ax.set_title(f"{res.model_name} fit (n = {x.size})")
    ax.legend()
    return fig


def simultaneous_band(n: int, level: float = 0.95, n_sim: int = 1000, *, seed=0,
                      max_points: int = 2000):
    """Returns ``(ranks, lower, upper)``: a simultaneous ``level`` band for the order
    statistics ``U_(r)`` of ``n`` uniforms, at ``ranks`` (all ``1..n``, or ``max_points``
    of them spread evenly).

    Simulates ``n_sim`` samples of the order statistics (exactly, at the chosen ranks:
    ``U_(r_j) = G_j / G``, ``G_j`` sums of gamma spacings) and takes pointwise quantiles
    at ranks ``k`` and ``n_sim + 1 - k`` of each column, with ``k`` the largest for which
    at least ``level * n_sim`` simulated curves lie inside at every rank (the depth of a
    curve: its smallest pointwise rank from either end). Mapped through a fitted
    quantile function ``F^-1`` it is the envelope of a Q-Q plot of data from that model.
    """
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, n + 1)
    if n > max_points:
        ranks = np.unique(np.round(np.linspace(1, n, max_points)).astype(int))
    gaps = np.diff(np.concatenate([[0], ranks, [n + 1]])).astype(float)
    g = np.cumsum(rng.standard_gamma(gaps, size=(n_sim, gaps.size)), axis=1)
    u = g[:, :-1] / g[:, -1:]
    order = np.argsort(u, axis=0)
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(1, n_sim + 1)[:, None], axis=0)
    depth = np.minimum(rank, n_sim + 1 - rank).min(axis=1)
    need = max(1, math.ceil(level * n_sim))
    k = int(np.sort(depth)[::-1][need - 1])
    cols = np.take_along_axis(u, order, axis=0)
    return ranks, cols[k - 1], cols[n_sim - k]


def qq(res, data=None, ax=None, *, discrete: bool | None = None, level: float | None = 0.95,
       n_sim: int = 1000, seed=0, label: str | None = None):
    """Returns a Figure of the sorted data against the fitted model's quantiles, with a
    simultaneous envelope.

    Theoretical quantiles ``F^-1((i - 1/2) / n)``, ``i = 1..n``, from a CDF obtained by
    integrating the fitted density numerically (summing the pmf for discrete models);
    the line ``y = x`` is where a perfect fit lies.

    The envelope (``level``; None: none) is a parametric bootstrap of order statistics:
    the order statistics of ``n`` draws from the fitted model are ``F^-1(U_(i))``, so the
    band is ``F^-1`` of a band for uniform order statistics, simulated ``n_sim`` times,
    whose pointwise quantiles are widened until ``level`` of the simulated curves lie
    inside at EVERY point (:func:`simultaneous_band`). Simultaneous, not pointwise:
    with 95% pointwise bands most samples of a few hundred points leave the band
    somewhere, so a point outside says nothing; here a sample from the fitted model
    leaves the envelope anywhere with probability ``1 - level``. Chosen over the
    Kolmogorov-Smirnov band, which has the same width in probability everywhere and so
    is needlessly wide in the middle and too narrow in the tails. The parameters are
    held at the estimate (no refit per simulated sample), so with estimated parameters
    the envelope is somewhat conservative; :meth:`FitResult.gof` gives exact tests.

    Args:
        label: the name of the variable (e.g. its column name), for the data (y) axis.
        seed: seed of the simulation (the envelope is reproducible).

    Example:
        >>> import mlefit
        >>> x = mlefit.datasets.strikes()
        >>> fig = mlefit.plot.qq(mlefit.fit(mlefit.models.Exponential(), x))
    """
    _check_single(res, "qq")
    x = np.sort(_observations(res, data))
    discrete = _is_discrete(res) if discrete is None else discrete
    probs = (np.arange(1, x.size + 1) - 0.5) / x.size
    theo = quantiles(res, x, probs, discrete)
    fig, ax = _figure_and_axes(ax)
    if level is not None:
        ranks, lo_u, hi_u = simultaneous_band(x.size, level, n_sim, seed=seed)
        lo = quantiles(res, x, lo_u, discrete)
        hi = quantiles(res, x, hi_u, discrete)
        bx = theo[ranks - 1]
        ax.fill_between(bx, lo, hi, color="C0", alpha=0.15, lw=0)
        ax.plot(bx, lo, color="C0", lw=0.8, ls="--", gid="envelope_lower",
                label=f"{100 * level:g}% simultaneous envelope")
        ax.plot(bx, hi, color="C0", lw=0.8, ls="--", gid="envelope_upper")
    ax.plot(theo, x, "o", ms=3, alpha=0.7, gid="data", label="data")
    lo_, hi_ = min(theo.min(), x.min()), max(theo.max(), x.max())
    ax.plot([lo_, hi_], [lo_, hi_], color="C3", lw=1, gid="identity",
            label=f"y = x: {fitted_label(res)}")
    ax.set_xlabel(f"{res.model_name} quantiles (fitted)")
    ax.set_ylabel(f"{label} (sorted)" if label is not None else "sample quantiles")
    ax.set_title("Q-Q plot")
    ax.legend()
    return fig


def ecdf(res, data=None, ax=None, *, level: float | None = 0.95, discrete: bool | None = None,
         label: str | None = None):
    """Returns a Figure of the empirical CDF with the fitted CDF and a DKW band.

    ``F_n(x) = #{i : x_i <= x} / n`` as a step function, the fitted ``F(x; theta_hat)``
    (integrated numerically from the density, or the cumulated pmf), and the
    Dvoretzky-Kiefer-Wolfowitz band ``F_n(x) -/+ eps``,
    ``eps = sqrt(log(2 / (1 - level)) / (2 n))``, which covers the true CDF everywhere
    with probability at least ``level`` (for a fixed model; with estimated parameters it
    is conservative). A fitted CDF leaving the band is evidence against the model.

    Args:
        level: coverage of the band (None: no band).
        label: the name of the variable (e.g. its column name), for the x axis.

    Example:
        >>> import mlefit
        >>> x = mlefit.datasets.strikes()
        >>> fig = mlefit.plot.ecdf(mlefit.fit(mlefit.models.Gamma(), x))
    """
    _check_single(res, "ecdf")
    x = np.sort(_observations(res, data))
    n = x.size
    discrete = _is_discrete(res) if discrete is None else discrete
    fig, ax = _figure_and_axes(ax)
    pad = 0.05 * (x.max() - x.min() or 1.0)
    xs = np.concatenate([[x[0] - pad], x, [x[-1] + pad]])
    fn = np.concatenate([[0.0], np.arange(1, n + 1) / n, [1.0]])
    if level is not None:
        eps = math.sqrt(math.log(2.0 / (1.0 - level)) / (2.0 * n))
        lo, hi = np.clip(fn - eps, 0.0, 1.0), np.clip(fn + eps, 0.0, 1.0)
        ax.fill_between(xs, lo, hi, step="post", color="C0", alpha=0.15, lw=0)
        ax.step(xs, lo, where="post", color="C0", lw=0.6, ls="--", gid="dkw_lower",
                label=f"{100 * level:g}% DKW band (eps = {eps:.3g})")
        ax.step(xs, hi, where="post", color="C0", lw=0.6, ls="--", gid="dkw_upper")
    ax.step(xs, fn, where="post", color="C0", lw=1.5, gid="ecdf", label=f"ECDF (n = {n})")
    if discrete:
        k, pmf = integer_support(res, x)
        cdf = np.cumsum(pmf) / pmf.sum()
        keep = (k >= xs[0] - 1) & (k <= xs[-1])
        ax.step(k[keep], cdf[keep], where="post", color="C3", lw=1.5, gid="fitted",
                label=fitted_label(res))
    else:
        grid, cdf = continuous_cdf(res, x)
        g = np.linspace(xs[0], xs[-1], 400)
        ax.plot(g, np.interp(g, grid, cdf), color="C3", lw=1.5, gid="fitted",
                label=fitted_label(res))
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(label if label is not None else "x")
    ax.set_ylabel("cumulative probability")
    ax.set_title("ECDF and fitted CDF")
    ax.legend(loc="lower right")
    return fig


def _chi2_1_quantile(level: float) -> float:
    """Quantile of chi-square(1): ``Phi^-1((1 + level) / 2) ** 2``."""
    z = statistics.NormalDist().inv_cdf((1.0 + level) / 2.0)  # double precision, host side
    return z * z


def _flat_bounds(res, index: int) -> tuple[float, float]:
    """``(low, high)`` allowed for flat parameter ``index`` by its constraint."""
    off = 0
    for t, x in zip(res.transforms, jax.tree_util.tree_leaves(res.u), strict=True):
        off += int(np.size(x))
        if index < off:
            return t.bounds() if hasattr(t, "bounds") else (-np.inf, np.inf)
    raise IndexError(index)


def _profile_grid(estimate, lo, hi, bounds, num):
    """``num`` values spanning ``[lo, hi]`` and half its width either side, inside ``bounds``."""
    low, high = bounds
    lo = lo if math.isfinite(lo) and lo > low else None
    hi = hi if math.isfinite(hi) and hi < high else None
    half = [abs(estimate - v) for v in (lo, hi) if v is not None]
    half = max(half) if half else max(abs(estimate), 1.0)
    start = (lo if lo is not None else estimate - half) - 0.5 * half
    stop = (hi if hi is not None else estimate + half) + 0.5 * half
    # stay strictly inside the constraint: the profile is undefined on its bound
    if math.isfinite(low) and start <= low:
        start = low + 0.5 * ((lo if lo is not None else estimate) - low)
    if math.isfinite(high) and stop >= high:
        stop = high - 0.5 * (high - (hi if hi is not None else estimate))
    return np.linspace(start, stop, num)


def profile(res, name: str, ax=None, *, level: float = 0.95, values=None, num: int = 41):
    """Returns a Figure of the profile likelihood of one parameter, interval marked.

    Plots the deviance ``D(v) = 2 * (NLL_total(profile at v) - NLL_total(estimate))``
    against ``v``, the chi-square(1) cut-off at ``level``, where the profile interval
    ``{v : D(v) <= chi2_1(level)}`` ends (vertical lines) and the estimate. For
    comparison, the Wald parabola ``((v - estimate) / stderr)^2`` (the quadratic
    approximation of ``D`` whose cut gives the Wald interval): where the two curves part,
    the Wald interval is not to be trusted.

    Args:
        res: a single fit.
        name: the parameter, as in ``res.param_names`` (e.g. ``"sigma"``, ``"w[3]"``).
        level: confidence level of the interval.
        values: the grid of parameter values (default: ``num`` points spanning the
            profile interval and half its width on each side, inside the constraint).

    Example:
        >>> import mlefit
        >>> res = mlefit.fit(mlefit.models.Gamma(), mlefit.datasets.strikes())
        >>> fig = mlefit.plot.profile(res, "shape")  # doctest: +SKIP
    """
    _check_single(res, "profile")
    names = list(res.param_names)
    if name not in names:
        raise ValueError(f"name: no parameter {name!r}; the parameters are {names}")
    i = flat_names_of(res).index(name)  # flat position (param_names follow init's order)
    flat = ravel_pytree(constrain(res.u, res.transforms))[0]
    estimate = float(flat[i])
    ((lo, hi),) = np.asarray(res.confint(level, method="profile", params=[name]), dtype=float)
    if values is None:
        values = _profile_grid(estimate, lo, hi, _flat_bounds(res, i), num)
    values = np.asarray(values, dtype=float)
    curve = res.profile(name, values)  # total NLL re-minimised over the other parameters
    curve = np.asarray(getattr(curve, "nll", curve), dtype=float)
    deviance = 2.0 * (curve + float(res.loglik))
    cut = _chi2_1_quantile(level)
    fig, ax = _figure_and_axes(ax)
    ax.plot(values, deviance, color="C0", lw=2, label="profile deviance")
    se = float(ravel_pytree(res.stderr)[0][i])
    if math.isfinite(se) and se > 0:  # the quadratic approximation behind Wald intervals
        ax.plot(values, ((values - estimate) / se) ** 2, color="C2", lw=1, ls="-.",
                gid="wald", label=f"Wald ((v - est) / se)^2, se = {se:.3g}")
    ax.axhline(cut, color="grey", ls="--", lw=1, label=f"chi2(1) {100 * level:g}% = {cut:.3g}")
    label = f"interval [{lo:.4g}, {hi:.4g}]"
    low, high = _flat_bounds(res, i)
    for end in (lo, hi):  # an end the profile never reaches (a bound, or inf) is not drawn
        if math.isfinite(end) and low < end < high:
            ax.axvline(end, color="C3", ls=":", lw=1, label=label)
            label = None
    ax.plot([estimate], [0.0], "o", color="C3", label=f"estimate {estimate:.4g}")
    ax.set_xlabel(name)
    ax.set_ylabel("2 (NLL_total - min)")
    ax.set_title(f"{res.model_name}: profile likelihood of {name}")
    ax.legend()
    return fig


def _flat_batched(params, batch_ndim: int):
    """``(names, columns)``: one column of B estimates per scalar parameter."""
    names, cols = [], []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        base = jax.tree_util.keystr(path, simple=True, separator=".") or "param"
        a = np.asarray(leaf, dtype=float)
        a = a.reshape((-1,) + a.shape[batch_ndim:])
        if a.ndim == 1:
            names.append(base)
            cols.append(a)
        else:
            for idx in np.ndindex(a.shape[1:]):
                names.append(f"{base}[{','.join(map(str, idx))}]")
                cols.append(a[(slice(None),) + idx])
    return names, cols


def estimates(res_many, truth=None, *, bins="auto", converged_only: bool = True):
    """Returns a Figure with one histogram per parameter of a batched fit, truth marked.

    Args:
        res_many: a batched result of ``mlefit.fit_many`` (fields with a leading axis).
        truth: the true parameters (same structure as one fit's ``params``), drawn as
            vertical lines; optional.
        converged_only: leave out fits whose status is not ``converged`` (the title
            says how many were kept).

    Example:
        >>> import mlefit, numpy as np
        >>> x = np.random.default_rng(0).normal(1.0, 2.0, size=(100, 50))  # 100 data sets
        >>> many = mlefit.fit_many(mlefit.models.Normal(), x)
        >>> fig = mlefit.plot.estimates(many, truth={"loc": 1.0, "scale": 2.0})
    """
    batch = res_many.batch_shape
    if not batch:
        raise ValueError("res_many: expected a batched result (mlefit.fit_many), got one fit")
    names, cols = _flat_batched(res_many.params, len(batch))
    keep = np.ones(cols[0].shape[0], bool)
    if converged_only:
        keep &= np.asarray(res_many.converged).reshape(-1)
    true_vals = None
    if truth is not None:
        true_names, true_cols = _flat_batched(jax.tree.map(lambda t: np.asarray(t)[None], truth), 1)
        if len(true_cols) != len(cols):
            raise ValueError(
                f"truth: expected {len(cols)} scalar parameters ({', '.join(names)}), "
                f"got {len(true_cols)} ({', '.join(true_names)})"
            )
        true_vals = [float(c[0]) for c in true_cols]
    plt = _pyplot()
    ncols = min(len(cols), 3)
    nrows = -(-len(cols) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 3 * nrows), squeeze=False,
                             layout="constrained")
    for j, (name, col) in enumerate(zip(names, cols, strict=True)):
        ax = axes.flat[j]
        v = col[keep & np.isfinite(col)]
        ax.hist(v, bins=bins, alpha=0.6)
        if true_vals is not None:
            ax.axvline(true_vals[j], color="C3", lw=2, label=f"true {true_vals[j]:.4g}")
            ax.legend()
        mean, sd = (float(np.mean(v)), float(np.std(v))) if v.size else (math.nan, math.nan)
        ax.set_title(f"{name}: mean {mean:.4g}, sd {sd:.3g}")
        ax.set_xlabel(name)
    for ax in list(axes.flat)[len(cols):]:
        ax.set_visible(False)
    fig.suptitle(f"{res_many.model_name}: {int(keep.sum())} of {keep.size} fits")
    return fig
