"""Profile likelihood: the NLL re-minimised with one parameter held fixed, and the
intervals ``{v : 2 (N_prof(v) - N_min) <= chi2_1(level)}`` it gives.

``profile_nll`` is pure and vmaps over ``(index, value)`` pairs with one compilation; it
runs :func:`mlefit._iterate.iterate` (L-BFGS) on the mean NLL.
"""

from __future__ import annotations

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ._constraints import constrain, jacobian_diag
from ._defaults import DEFAULT_MAX_STEPS, default_tol
from ._inference import (
    _check_level,
    _flat_transform,
    _indices_of,
    _normal_quantile,
    _require_data,
    _require_single,
    flat_names_of,
    inference_of,
)
from ._information import _weight_total
from ._iterate import iterate
from ._likelihood import mean_nll
from ._solver_optax import OptaxSolver, default_optimizer
from ._status import Status


def profile_nll(
    logp, transforms, u, data: tuple, weights, index, u_value, *, optimizer, tol, max_steps: int
):
    """Returns ``(total_nll, status)``: the NLL minimised with flat parameter ``index`` fixed.

    ``N_prof(index, u_value) = min over u_-index of N(u with u[index] = u_value)``, the
    total NLL; ``status`` is the re-fit's :class:`Status` code. The re-fit starts at
    ``u`` and runs :func:`mlefit._iterate.iterate` with ``optimizer`` on the mean NLL; the fixed
    coordinate has zero gradient, so ``index`` may be a traced value and the function
    vmaps over ``(index, u_value)`` pairs with one compilation.

    Example:
        >>> import jax.numpy as jnp, jax.scipy.stats as st, optax
        >>> from mlefit._constraints import Identity
        >>> lp = lambda p, x: st.norm.logpdf(x, p["m"], 1.0)
        >>> nll, status = profile_nll(lp, (Identity(),), {"m": jnp.array(0.0)},
        ...     (jnp.zeros(4),), None, 0, 1.0, optimizer=optax.lbfgs(), tol=1e-9, max_steps=50)
        >>> round(float(nll) - 4 * 0.9189385332, 6)  # 4 * (1 - 0)^2 / 2
        2.0
    """
    u_flat, unravel = ravel_pytree(u)

    def f(r):
        full = r.at[index].set(u_value)
        return mean_nll(logp, constrain(unravel(full), transforms), data, weights)

    # No Newton polish: it would put a Hessian in every vmapped re-fit (compile time), and
    # the profile NLL needs the minimum only to within the gradient tolerance.
    _, value, _, _, status, _ = iterate(OptaxSolver(optimizer), f, u_flat, tol, max_steps)
    return _weight_total(data, weights, value.dtype) * value, status



@eqx.filter_jit
def _profile_compiled(
    logp, transforms, optimizer, u, data, weights, index, u_value, tol, max_steps
):
    return jax.vmap(
        lambda i, v: profile_nll(
            logp, transforms, u, data, weights, i, v,
            optimizer=optimizer, tol=tol, max_steps=max_steps,
        )
    )(index, u_value)



def _bucket(k: int) -> int:
    """Batch size of a vmapped profile call: the next power of two >= k (at least 4), so
    intervals and curves of any size share a few compilations."""
    return max(4, 1 << (k - 1).bit_length())


def _profile_eval(res, indices, u_values):
    """Profile total NLL and convergence at each ``(index, u_value)`` pair (one vmapped call)."""
    indices = np.asarray(indices, dtype=np.int32).ravel()
    u_values = np.asarray(u_values, dtype=float).ravel()
    k = indices.size
    pad = _bucket(k) - k
    # Padding repeats the first pair: a valid re-fit whose result is discarded.
    indices = np.concatenate([indices, np.full(pad, indices[0], np.int32)])
    u_values = np.concatenate([u_values, np.full(pad, u_values[0])])
    dtype = ravel_pytree(res.u)[0].dtype
    tol = jnp.asarray(default_tol(dtype), dtype)
    nll, status = _profile_compiled(
        res.problem.logp, res.transforms, default_optimizer(), res.u, res.data, res.weights,
        jnp.asarray(indices), jnp.asarray(u_values, dtype), tol, DEFAULT_MAX_STEPS,
    )
    return np.asarray(nll, dtype=float)[:k], (np.asarray(status) == Status.CONVERGED)[:k]


def _nll_min(res) -> float:
    return float(res.n_obs * res.nll)


def profile_of(res, name: str, values) -> np.ndarray:
    """``res.profile``: the profile total-NLL curve of one parameter (see FitResult)."""
    _require_single(res, "profile")
    _require_data(res, "profile")
    if not isinstance(name, str):
        raise TypeError(f"name: expected a parameter name (str), got {type(name).__name__}")
    (index,) = _indices_of(res, [name])
    values = np.atleast_1d(np.asarray(values, dtype=float))
    if values.ndim != 1 or values.size == 0:
        raise ValueError(
            f"values: expected a non-empty 1-D array of values, got shape {values.shape}"
        )
    t = _flat_transform(res, index)
    lo, hi = t.bounds() if hasattr(t, "bounds") else (-np.inf, np.inf)
    bad = ~(np.isfinite(values) & (values > lo) & (values < hi))
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"values: parameter {name!r} must lie in ({lo}, {hi}); "
            f"values[{i}] = {float(values[i])!r}"
        )
    u_values = np.asarray(t.inverse(jnp.asarray(values)))
    nll, conv = _profile_eval(res, [index] * values.size, u_values)
    if not conv.all():
        bad = values[~conv]
        warnings.warn(
            f"profile: the re-fit with {name} fixed did not converge at {bad.size} value(s), "
            f"first {bad[0]!r}; those points of the curve are upper bounds.",
            stacklevel=3,
        )
    return nll


# Multiples of z * stderr (unconstrained scale) tried in turn until the profile crosses.
_PROFILE_GRID = (1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0, 40.0)
_PROFILE_ITERS = 60


def profile_confint(res, level: float = 0.95, params=None) -> np.ndarray:
    """Profile-likelihood interval per flat parameter, shape ``(k, 2)`` (see FitResult).

    Works in the unconstrained coordinate ``u_j`` (the LR statistic is invariant under
    the monotone map to ``c_j``). For each (parameter, side): step out from the estimate
    by multiples of ``z * se(u_j)`` until ``r(t) = sqrt(2 (N_prof - N_min)) - z`` turns
    positive, then Illinois regula falsi on ``r`` (nearly linear in ``t`` because the
    profile is nearly quadratic). All (parameter, side) pairs are re-fitted together in
    one vmapped call per step.
    """
    level = _check_level(level)
    _require_single(res, "confint(method='profile')")
    _require_data(res, "confint(method='profile')")
    idx = _indices_of(res, params)
    z = _normal_quantile(level)  # the chi2_1 quantile is z^2
    inf = inference_of(res)
    u_hat = np.asarray(ravel_pytree(res.u)[0], dtype=float)
    jac = np.asarray(ravel_pytree(jacobian_diag(res.u, res.transforms))[0], dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        se_u = np.asarray(inf.stderr, dtype=float) / jac
    step = np.where(np.isfinite(se_u) & (se_u > 0), se_u, 1.0)
    nll0 = _nll_min(res)

    js = np.repeat(np.asarray(idx), 2)
    sides = np.tile([-1.0, 1.0], len(idx))
    m = js.size

    def residual(t):
        nll, _ = _profile_eval(res, js, u_hat[js] + sides * t)
        d = 2.0 * (nll - nll0)
        d = np.where(np.isnan(d), np.inf, d)  # a non-finite NLL is beyond any quantile
        return np.sqrt(np.maximum(d, 0.0)) - z

    # Bracket: t_lo with r < 0 (the estimate: r = -z), t_hi with r >= 0.
    t_lo, r_lo = np.zeros(m), np.full(m, -z)
    t_hi, r_hi = np.full(m, np.inf), np.full(m, np.nan)
    for mult in _PROFILE_GRID:
        open_ = ~np.isfinite(t_hi)
        if not open_.any():
            break
        t = np.where(open_, step[js] * z * mult, t_lo)
        r = residual(t)
        crossed = open_ & (r >= 0)
        t_hi = np.where(crossed, t, t_hi)
        r_hi = np.where(crossed, np.where(np.isfinite(r), r, np.nan), r_hi)
        below = open_ & (r < 0)
        t_lo, r_lo = np.where(below, t, t_lo), np.where(below, r, r_lo)
    has = np.isfinite(t_hi)

    # Illinois regula falsi; a NaN r_hi (non-finite NLL) falls back to bisection.
    active = has.copy()
    t_root = np.where(has, t_hi, np.inf)
    last = np.zeros(m)
    for _ in range(_PROFILE_ITERS):
        if not active.any():
            break
        with np.errstate(divide="ignore", invalid="ignore"):
            lin = t_lo - r_lo * (t_hi - t_lo) / (r_hi - r_lo)
        t_new = np.where(np.isfinite(lin) & (lin > t_lo) & (lin < t_hi), lin, 0.5 * (t_lo + t_hi))
        t_new = np.where(active, t_new, t_root)
        r_new = residual(t_new)
        below = active & (r_new < 0)
        above = active & ~(r_new < 0)
        r_hi = np.where(below & (last == -1), 0.5 * r_hi, r_hi)  # Illinois: stale end halves
        r_lo = np.where(above & (last == 1), 0.5 * r_lo, r_lo)
        t_lo, r_lo = np.where(below, t_new, t_lo), np.where(below, r_new, r_lo)
        t_hi = np.where(above, t_new, t_hi)
        r_hi = np.where(above, np.where(np.isfinite(r_new), r_new, np.nan), r_hi)
        last = np.where(below, -1, np.where(above, 1, last))
        t_root = np.where(active, t_new, t_root)
        done = (np.abs(r_new) <= 1e-9 * z) | (t_hi - t_lo <= 1e-13 * (1.0 + np.abs(u_hat[js])))
        active = active & ~done

    out = np.empty(m)
    for k in range(m):
        t = _flat_transform(res, int(js[k]))
        u_val = u_hat[js[k]] + sides[k] * t_root[k] if has[k] else sides[k] * np.inf
        out[k] = float(t.forward(jnp.asarray(u_val)))
    if (~has).any():
        names = flat_names_of(res)
        open_sides = sorted({names[js[k]] for k in np.flatnonzero(~has)})
        warnings.warn(
            f"confint: the profile likelihood of {', '.join(open_sides)} stays below the "
            f"chi2 quantile out to {_PROFILE_GRID[-1]:g} x z x stderr; that end of the "
            "interval is reported as the parameter's bound (or +-inf).",
            stacklevel=4,
        )
    return out.reshape(len(idx), 2)


