"""Plots of a fit (matplotlib, the optional extra ``mlefit[plot]``).

Each function takes a :class:`~mlefit.FitResult` (and data where needed), draws into
``ax`` when one is given, and returns the matplotlib ``Figure``:

- :func:`history`: the mean NLL after each optimiser step;
- :func:`density`: fitted density over a histogram (continuous) or pmf over a bar chart
  of frequencies (discrete);
- :func:`qq`: sample quantiles against the fitted model's quantiles;
- :func:`profile`: the profile-likelihood curve with its confidence interval;
- :func:`estimates`: for a batched fit (``fit_many``), the distribution of estimates.

Densities, CDFs and quantiles come from the model's own ``log_prob`` (exponentiated and
integrated numerically), so they work for any unconditional model, without scipy.
"""

from __future__ import annotations

import functools
import math
import statistics

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ._constraints import constrain
from ._inference import flat_names_of

__all__ = ["history", "density", "qq", "profile", "estimates"]

_DISCRETE_MODELS = {
    "poisson", "negativebinomial", "bernoulli", "binomial", "geometric", "categorical",
}
# Points of the grid on which a continuous CDF is integrated (quantiles to ~1e-4 of scale).
_CDF_POINTS = 8001


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


@functools.partial(jax.jit, static_argnums=(0, 1))
def _logpdf_compiled(logp, transforms, u, xs):
    params = constrain(u, transforms)
    return jax.vmap(lambda x: logp(params, x))(xs)


def _logpdf(res, xs: np.ndarray) -> np.ndarray:
    """``log p(x; params)`` of the fitted model at each point of ``xs`` (-inf outside support)."""
    xs = np.asarray(xs, dtype=float)
    # pad to a power of two (>= 64) so that a few compiled sizes serve every plot
    size = max(64, 1 << (xs.size - 1).bit_length())
    padded = np.concatenate([xs, np.full(size - xs.size, xs[0])])
    dtype = jnp.asarray(res.nll).dtype
    lp = _logpdf_compiled(res.problem.logp, res.transforms, res.u, jnp.asarray(padded, dtype))
    lp = np.asarray(lp, dtype=float)[: xs.size]
    return np.where(np.isnan(lp), -np.inf, lp)


# -- numerical distribution functions ------------------------------------------------
def _support_edge(res, outside: float, inside: float) -> float:
    """The edge of the support between a point outside it and one inside (to ~1e-14)."""
    for _ in range(8):  # each pass narrows the bracket 63-fold
        pts = np.linspace(outside, inside, 64)
        ok = _logpdf(res, pts) > -np.inf
        k = int(np.argmax(ok))  # first point inside, walking from `outside`
        outside, inside = pts[k - 1], pts[k]
    return float(outside)


def _support(res, x: np.ndarray, grid: np.ndarray, lp: np.ndarray):
    """``(low, high)``: the support of the fitted density, ``-inf``/``inf`` when unbounded."""
    inside = lp > -np.inf
    low, high = -np.inf, np.inf
    below = (grid < x.min()) & ~inside
    if below.any():
        a = grid[below].max()
        b = grid[(grid > a) & inside].min(initial=x.min())
        low = _support_edge(res, a, b)
    above = (grid > x.max()) & ~inside
    if above.any():
        a = grid[above].min()
        b = grid[(grid < a) & inside].max(initial=x.max())
        high = _support_edge(res, a, b)
    return low, high


def _continuous_cdf(res, x: np.ndarray):
    """``(grid, cdf)`` of the fitted continuous model, integrating exp(log p) numerically.

    The integral runs over a variable ``t`` that maps onto the whole support, with
    ``cdf = int p(x(t)) x'(t) dt`` by the trapezoid rule on a uniform ``t`` grid:
    ``x = c + s tan(t)`` on the real line (dense near the data, reaching far into heavy
    tails); ``x = low + exp(t)`` on a half-line and ``x = low + (high - low) sigmoid(t)``
    on an interval, which also tame densities that are infinite at an edge (a gamma
    shape below 1, a beta parameter below 1).
    """
    q25, q50, q75 = np.percentile(x, [25, 50, 75])
    scale = max(q75 - q25, 0.1 * float(np.std(x)), 1e-6 * max(abs(q50), 1.0))
    theta = np.linspace(-np.pi / 2, np.pi / 2, _CDF_POINTS + 2)[1:-1]
    grid = q50 + scale * np.tan(theta)
    lp = _logpdf(res, grid)
    low, high = _support(res, x, grid, lp)
    if math.isfinite(low) and math.isfinite(high):
        t = np.linspace(-40.0, 40.0, _CDF_POINTS)
        sig = 1.0 / (1.0 + np.exp(-t))
        grid, dxdt = low + (high - low) * sig, (high - low) * sig * (1.0 - sig)
    elif math.isfinite(low) or math.isfinite(high):
        edge, sign = (low, 1.0) if math.isfinite(low) else (high, -1.0)
        s = max(abs(q50 - edge), scale)
        t = np.linspace(math.log(s) - 35.0, math.log(s) + 28.0, _CDF_POINTS)
        grid, dxdt = edge + sign * np.exp(t), np.exp(t)
        if sign < 0:
            grid, dxdt, t = grid[::-1], dxdt[::-1], -t[::-1]
    else:
        t, dxdt = theta, scale / np.cos(theta) ** 2
    if t is not theta:
        lp = _logpdf(res, grid)
    f = np.exp(lp) * dxdt
    f = np.where(np.isfinite(f), f, 0.0)
    steps = 0.5 * (f[1:] + f[:-1]) * np.diff(t)
    cdf = np.concatenate([[0.0], np.cumsum(steps)])
    total = cdf[-1]
    if not total > 0:
        raise ValueError("the fitted density integrates to 0 on the real line; cannot plot it")
    return grid, cdf / total


def _integer_support(res, x: np.ndarray):
    """``(k, pmf)`` on the integers from min(0, min x) up to where the tail mass is negligible."""
    lo = int(min(0.0, np.floor(x.min())))
    hi = int(np.ceil(x.max()))
    span = max(hi - lo, 1)
    k = np.arange(lo, hi + 10 * span + 50)
    pmf = np.exp(_logpdf(res, k.astype(float)))
    return k, np.where(np.isfinite(pmf), pmf, 0.0)


def _quantiles(res, x: np.ndarray, probs: np.ndarray, discrete: bool) -> np.ndarray:
    if discrete:
        k, pmf = _integer_support(res, x)
        cdf = np.cumsum(pmf) / pmf.sum()
        idx = np.minimum(np.searchsorted(cdf, probs - 1e-12), k.size - 1)
        return k[idx].astype(float)
    grid, cdf = _continuous_cdf(res, x)
    rising = np.concatenate([[True], np.diff(cdf) > 0])
    return np.interp(probs, cdf[rising], grid[rising])


# -- public plots --------------------------------------------------------------------
def history(res, ax=None):
    """Returns a Figure of the mean NLL after each step (per epoch for minibatch fits).

    For a batched result (``fit_many``), one line per fit (at most 50).

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
    if h.ndim == 1:
        ax.plot(np.arange(h.size), h, marker="." if h.size < 50 else None)
    else:
        h = h.reshape(-1, h.shape[-1])[:50]
        for row in h:
            ax.plot(np.arange(row.size), row, lw=0.8, alpha=0.6)
    ax.set_xlabel("epoch" if res.minibatch else "step")
    ax.set_ylabel("mean NLL")
    ax.set_title(f"{res.model_name}: optimisation history")
    return fig


def density(res, data=None, ax=None, *, discrete: bool | None = None, bins="auto"):
    """Returns a Figure of the fitted density over the data.

    Continuous models: a density-normalised histogram of the data and the fitted pdf
    ``p(x; theta_hat) = exp(log_prob(theta_hat, x))``. Discrete models: a bar per
    integer value with its relative frequency, and the fitted pmf as markers.

    Args:
        res: a single (unbatched) fit of an unconditional model.
        data: the observations (default: those of the fit).
        ax: a matplotlib Axes to draw into (default: a new figure).
        discrete: force the discrete (bar chart) or continuous (histogram) style;
            default: from the model.
        bins: histogram bins for continuous data (``numpy.histogram`` rules).

    Example:
        >>> import mlefit
        >>> x = mlefit.datasets.strikes()
        >>> fig = mlefit.plot.density(mlefit.fit(mlefit.models.Gamma(), x))
        >>> fig.savefig("gamma.png")  # doctest: +SKIP
    """
    _check_single(res, "density")
    x = _observations(res, data)
    discrete = _is_discrete(res) if discrete is None else discrete
    fig, ax = _figure_and_axes(ax)
    if discrete:
        values, counts = np.unique(np.round(x).astype(np.int64), return_counts=True)
        ks = np.arange(values.min(), values.max() + 1)
        freq = np.zeros(ks.size)
        freq[np.searchsorted(ks, values)] = counts / x.size
        ax.bar(ks, freq, width=0.8, alpha=0.5, label="data")
        pmf = np.exp(_logpdf(res, ks.astype(float)))
        ax.plot(ks, pmf, "o-", ms=4, lw=1, color="C3", label="fitted pmf")
        ax.set_ylabel("probability")
    else:
        ax.hist(x, bins=bins, density=True, alpha=0.5, label="data")
        pad = 0.05 * (x.max() - x.min() or 1.0)
        grid = np.linspace(x.min() - pad, x.max() + pad, 400)
        lp = _logpdf(res, grid)
        # outside the support (log p = -inf) draw nothing rather than a line at zero
        pdf = np.where(lp > -np.inf, np.exp(lp), np.nan)
        ax.plot(grid, pdf, color="C3", lw=2, label="fitted pdf")
        ax.set_ylabel("density")
    ax.set_xlabel("x")
    ax.set_title(f"{res.model_name} fit (n = {x.size})")
    ax.legend()
    return fig


def qq(res, data=None, ax=None, *, discrete: bool | None = None):
    """Returns a Figure of the sorted data against the fitted model's quantiles.

    Theoretical quantiles ``F^-1((i - 1/2) / n)``, ``i = 1..n``, from a CDF obtained
    by integrating the fitted density numerically (summing the pmf for discrete
    models); the line ``y = x`` is where a perfect fit lies.

    Example:
        >>> import mlefit
        >>> x = mlefit.datasets.strikes()
        >>> fig = mlefit.plot.qq(mlefit.fit(mlefit.models.Exponential(), x))
    """
    _check_single(res, "qq")
    x = np.sort(_observations(res, data))
    discrete = _is_discrete(res) if discrete is None else discrete
    probs = (np.arange(1, x.size + 1) - 0.5) / x.size
    theo = _quantiles(res, x, probs, discrete)
    fig, ax = _figure_and_axes(ax)
    ax.plot(theo, x, "o", ms=3, alpha=0.7, label="data")
    lo, hi = min(theo.min(), x.min()), max(theo.max(), x.max())
    ax.plot([lo, hi], [lo, hi], color="C3", lw=1, label="y = x")
    ax.set_xlabel(f"{res.model_name} quantiles (fitted)")
    ax.set_ylabel("sample quantiles")
    ax.set_title("Q-Q plot")
    ax.legend()
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
    ``{v : D(v) <= chi2_1(level)}`` ends (vertical lines) and the estimate.

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
