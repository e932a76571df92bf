"""A fitted unconditional model as a distribution on the real line, numerically.

From the model's own ``log_prob`` alone (no scipy, any unconditional model): the
log-density at given points (:func:`logpdf`), the edges of its support (:func:`support`),
its CDF by the trapezoid rule over a variable that maps onto the support
(:func:`continuous_cdf`), the probability mass on the integers (:func:`integer_support`)
and quantiles (:func:`quantiles`, by inverting either). Used by :mod:`mlefit.plot`.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from ._constraints import constrain

__all__ = ["logpdf", "support", "continuous_cdf", "integer_support", "quantiles"]

# Points of the grid on which a continuous CDF is integrated (quantiles to ~1e-4 of scale).
_CDF_POINTS = 8001


@functools.partial(jax.jit, static_argnums=(0, 1))
def _logpdf_compiled(logp, transforms, u, xs):
    params = constrain(u, transforms)
    return jax.vmap(lambda x: logp(params, x))(xs)


def logpdf(res, xs: np.ndarray) -> np.ndarray:
    """``log p(x; params)`` of the fitted model at each point of ``xs`` (-inf outside support)."""
    xs = np.asarray(xs, dtype=float)
    # pad to a power of two (>= 64) so that a few compiled sizes serve every plot
    size = max(64, 1 << (xs.size - 1).bit_length())
    padded = np.concatenate([xs, np.full(size - xs.size, xs[0])])
    dtype = jnp.asarray(res.nll).dtype
    lp = _logpdf_compiled(res.problem.log_density, res.transforms, res.u,
                          jnp.asarray(padded, dtype))
    lp = np.asarray(lp, dtype=float)[: xs.size]
    return np.where(np.isnan(lp), -np.inf, lp)


def _support_edge(res, outside: float, inside: float) -> float:
    """The edge of the support between a point outside it and one inside (to ~1e-14)."""
    for _ in range(8):  # each pass narrows the bracket 63-fold
        pts = np.linspace(outside, inside, 64)
        ok = logpdf(res, pts) > -np.inf
        k = int(np.argmax(ok))  # first point inside, walking from `outside`
        outside, inside = pts[k - 1], pts[k]
    return float(outside)


def support(res, x: np.ndarray, grid: np.ndarray, lp: np.ndarray):
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


def continuous_cdf(res, x: np.ndarray):
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
    lp = logpdf(res, grid)
    low, high = support(res, x, grid, lp)
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
        lp = logpdf(res, grid)
    f = np.exp(lp) * dxdt
    f = np.where(np.isfinite(f), f, 0.0)
    steps = 0.5 * (f[1:] + f[:-1]) * np.diff(t)
    cdf = np.concatenate([[0.0], np.cumsum(steps)])
    total = cdf[-1]
    if not total > 0:
        raise ValueError("the fitted density integrates to 0 on the real line; cannot plot it")
    return grid, cdf / total


def integer_support(res, x: np.ndarray):
    """``(k, pmf)`` on the integers from min(0, min x) up to where the tail mass is negligible."""
    lo = int(min(0.0, np.floor(x.min())))
    hi = int(np.ceil(x.max()))
    span = max(hi - lo, 1)
    k = np.arange(lo, hi + 10 * span + 50)
    pmf = np.exp(logpdf(res, k.astype(float)))
    return k, np.where(np.isfinite(pmf), pmf, 0.0)


def quantiles(res, x: np.ndarray, probs: np.ndarray, discrete: bool) -> np.ndarray:
    """The fitted model's quantiles at ``probs``: ``min{k : F(k) >= p}`` on the integers
    (discrete), else ``F^-1(p)`` by interpolating the numerical CDF (``x``: the data, which
    place the grid)."""
    if discrete:
        k, pmf = integer_support(res, x)
        cdf = np.cumsum(pmf) / pmf.sum()
        idx = np.minimum(np.searchsorted(cdf, probs - 1e-12), k.size - 1)
        return k[idx].astype(float)
    grid, cdf = continuous_cdf(res, x)
    rising = np.concatenate([[True], np.diff(cdf) > 0])
    return np.interp(probs, cdf[rising], grid[rising])
