"""Subsampled Newton: curvature from a subsample, gradients from all the data.

For large ``n`` and moderate ``p`` a pass over the data (the NLL and its gradient) is
what a fit costs, and an exact Hessian costs about ``p`` passes. This solver takes its
curvature from the exact Hessian ``H_S`` of the mean NLL of ``m << n`` rows ``S`` (by
autodiff, as everywhere else) and makes ONE full pass per step:

1. start (one step of the loop): damped Newton (:class:`~mlefit._newton.Newton`) on the
   subsample's mean NLL ``f_S`` from ``x0`` to its optimum ``x_S`` (each of its steps costs
   ``m p^2``, no pass over the data), then one full pass at ``x_S`` (at ``x0`` if ``f`` is
   not finite there); ``B = H_S(x_S)``. A warm start is kept: where ``x0`` is already
   within the subsample's sampling noise of ``x_S``, its Newton decrement
   ``g_S^T H_S^-1 g_S <= 4 p / m`` (at the full data's MLE the decrement is about
   ``chi^2_p / m``, mean ``p / m``, where the model holds), the full passes start at
   ``x0`` (a fit started at its MLE then stops after one pass instead of moving to
   ``x_S`` and back);
2. each later step: ``d = -(B + lam D)^-1 g`` (Marquardt's scaling ``D = diag|B|``, as in
   Newton), one full pass at ``x + d``, accepted on Armijo's test
   ``f(x + d) <= f(x) + 1e-4 g.d`` (or when ``f`` stays within rounding while the gradient
   shrinks); an accepted step updates ``B`` by BFGS with the full-data pair
   ``(s, y) = (d, g(x + d) - g(x))`` (where ``s.y > 0``), so the subsample's error is
   corrected in the directions the fit moves along; a refused step refreshes
   ``B = H_S(x)`` at the current iterate and raises the damping ``lam`` (Nielsen's rule).

The loop (:mod:`mlefit._iterate`) stops on the FULL-data gradient, ``max|g| <= tol``:
the estimate is the exact MLE of all the data, not the subsample's. Near it the error
contracts by about ``||I - B^-1 H|| ~ sqrt(p / m)`` per pass (faster as BFGS corrects
``B``): 5-7 passes on the benchmarks' GLMs.

The subsample (:func:`subsample_indices`) is drawn inside the compiled program from a
fixed key: stratified sampling of the rows with positive weight (rank ``r`` of a
positive-weight row; ``m`` strata of the ranks, one uniform draw in each), so the same
data give the same subsample and the same fit, and zero-weight rows (padding) never
enter. The sampled rows keep their weights: ``f_S`` is their weighted mean NLL.
With the data split over devices (``fit(..., mesh=...)``), every device draws its share
from its own rows (:func:`per_shard_subsample`: no rows move between devices) and XLA
reduces the subsample's sums across devices, as it does the full passes'.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from ._constraints import constrain
from ._defaults import (
    NEWTON_MAX_REFUSALS,
    RUNNING,
    SUBSAMPLE_MIN_ROWS,
    SUBSAMPLE_PER_PARAM,
    subsample_size,
)
from ._iterate import AbstractSolver
from ._likelihood import mean_nll
from ._newton import _marquardt_scale, value_grad_hessian
from ._objective import Reduced, objective
from ._status import Status

__all__ = ["SubsampledNewton", "SUBSAMPLED", "subsample_indices", "per_shard_subsample",
           "bind_subsample", "on_shards"]

SUBSAMPLED = "subsampled"  # the optimizer name that selects this solver in fit

# Step budget of the Newton fit to the subsample (quadratic convergence: 5-15 steps).
_SUB_STEPS = 50
# Tolerance of that fit: its optimum differs from the full data's by the subsample's
# noise anyway (gradients of order 1e-3); the full passes do the rest.
_SUB_TOL = 1e-6
_ARMIJO = 1e-4
# A start whose Newton decrement on the subsample is at most _WARM * p / m is kept.
_WARM = 4.0
_LAM_FIRST = 1e-4


def subsample_indices(seed: int, weights, n_rows: int, m: int) -> jax.Array:
    """Indices of ``m`` rows with positive weight, drawn from ``seed`` (sorted, distinct when
    at least ``m`` rows have a positive weight).

    Stratified sampling of the ranks of the positive-weight rows: with ``c`` of them,
    stratum ``j`` is the ranks ``[a_j, a_{j+1})``, ``a_j = floor(j c / m)``, and gets one
    uniform draw ``r_j = a_j + floor(u_j (a_{j+1} - a_j))``, ``u_j ~ U[0, 1)``; the row of
    rank ``r`` is found by a binary search of the running count of positive weights.
    ``weights=None``: every row.
    The ``u_j`` come from ``numpy.random.default_rng(seed)``: the same subsample for the
    same data in every process and on every backend.

    Example:
        >>> import jax.numpy as jnp
        >>> w = jnp.array([1.0, 0.0, 2.0, 1.0, 0.0, 1.0])
        >>> subsample_indices(0, w, 6, 4).tolist()
        [0, 2, 3, 5]
    """
    # Drawn in Python from the seed: a constant of the program (no PRNG to compile), the
    # same in every process and on every backend.
    return _draw(np.random.default_rng(seed).random(m), weights, n_rows)


def _draw(u, weights, n_rows: int) -> jax.Array:
    """The stratified draw of :func:`subsample_indices` from given uniforms ``u``
    (``len(u)`` rows of ``n_rows``; ``u`` a NumPy constant or, per shard, an array)."""
    m = u.shape[0]
    if weights is None:
        lo = np.arange(m) * n_rows // m
        width = np.arange(1, m + 1) * n_rows // m - lo
        if isinstance(u, np.ndarray):
            return jnp.asarray(lo + np.floor(u * width).astype(np.int64), jnp.int32)
        return (jnp.asarray(lo, jnp.int32)
                + jnp.floor(u * jnp.asarray(width, u.dtype)).astype(jnp.int32))
    positive = jnp.cumsum((weights > 0).astype(jnp.int32))
    count = positive[-1]
    # integer strata [a_j, a_j+1), a_j = floor(j c / m): at least one rank each when c >= m
    dtype = jnp.result_type(float)  # float64 under x64: exact for up to 2^53 rows
    edges = jnp.floor(jnp.arange(m + 1, dtype=dtype) * (count.astype(dtype) / m))
    ranks = edges[:-1] + jnp.floor(jnp.asarray(u, dtype) * (edges[1:] - edges[:-1]))
    ranks = jnp.clip(ranks.astype(jnp.int32), 0, jnp.maximum(count - 1, 0))
    rows = jnp.searchsorted(positive, ranks + 1, side="left").astype(jnp.int32)
    return jnp.minimum(rows, n_rows - 1)  # no positive weight at all: a row of weight 0


def per_shard_subsample(seed: int, m: int, mesh, spec, data: tuple, weights):
    """``(rows, weights)``: a subsample of about ``m`` rows drawn on every shard from its
    own rows (no data move between devices), sharded as the data.

    Each of the ``D`` shards draws ``ceil(m / D)`` rows from its positive-weight rows by
    the stratified rule of :func:`subsample_indices` (its uniforms: row ``d`` of a
    ``(D, ceil(m / D))`` draw from ``seed``). A shard with ``c_d`` positive-weight rows
    samples each with probability ``ceil(m / D) / c_d``, so a sampled row's weight is
    multiplied by ``c_d / ceil(m / D)`` (inverse probability): the subsample's weighted
    mean NLL estimates the whole data's, and its Hessian is reduced across devices by
    XLA like every other sum over observations.
    """
    n_dev = int(np.prod([mesh.shape[a] for a in (spec if isinstance(spec, tuple) else (spec,))]))
    m_local = -(-m // n_dev)
    u = jnp.asarray(np.random.default_rng(seed).random((n_dev, m_local)))
    obs = PartitionSpec(spec)

    def local(u, w, *arrays):
        n_local = arrays[0].shape[0]
        idx = _draw(u[0], w, n_local)
        rows = tuple(jnp.take(a, idx, axis=0) for a in arrays)
        if w is None:
            return rows, jnp.full(m_local, n_local / m_local, u.dtype)
        count = jnp.sum(w > 0).astype(w.dtype)
        return rows, jnp.take(w, idx) * (count / m_local)

    specs = (obs,) * len(data)
    if weights is None:
        fn = jax.shard_map(lambda u, *a: local(u, None, *a), mesh=mesh,
                           in_specs=(obs, *specs), out_specs=(specs, obs))
        return fn(u, *data)
    fn = jax.shard_map(local, mesh=mesh, in_specs=(obs, obs, *specs), out_specs=(specs, obs))
    return fn(u, weights, *data)


def _damped_direction(h, g, lam):
    """``(-(H + lam D)^-1 g, positive definite)`` in Marquardt's scaling (``D = diag|H|``,
    as :class:`~mlefit._newton.Newton`), by one Cholesky factorisation; where
    ``H + lam D`` is not positive definite, the scaled gradient step ``-D^-1 g / (1 + lam)``
    (a descent direction; the damping then grows)."""
    s = _marquardt_scale(h)
    a = s[:, None] * h * s[None, :] + lam * jnp.eye(h.shape[0], dtype=h.dtype)
    chol = jnp.linalg.cholesky(a)
    pd = jnp.all(jnp.isfinite(chol))
    d = s * jax.scipy.linalg.cho_solve((chol, True), -s * g)
    ok = pd & jnp.all(jnp.isfinite(d))
    return jnp.where(ok, d, -s * s * g / (1.0 + lam)), ok


class _State(NamedTuple):
    x: jax.Array
    value: jax.Array
    grad: jax.Array
    curvature: jax.Array  # B: the subsample Hessian, BFGS-updated along the way
    lam: jax.Array
    nu: jax.Array
    refusals: jax.Array
    first: jax.Array  # the next step is the start
    stale: jax.Array  # a step was refused: the next step refreshes the curvature at x
    fallback: jax.Array  # f is not finite at the subsample's optimum: start from x0
    hessians: jax.Array  # subsample Hessians computed (those of the start's Newton fit too)


class SubsampledNewton(AbstractSolver):
    """Newton steps with curvature from ``m`` sampled rows and gradients from all ``n``.

    ``fit(model, data, init, optimizer=mlefit.SubsampledNewton(m=50_000, seed=1))``.
    Newton on the subsample's mean NLL ``f_S`` gives the start ``x_S`` and the curvature
    ``B = H_S(x_S)``; then each step is ``d = -(B + lam D)^-1 g`` with ``g`` the FULL
    data's gradient (one pass), Armijo-tested, ``B`` BFGS-corrected by the full-data
    secant pairs (details in the module docstring). Near the MLE each pass contracts the
    error by about ``sqrt(p / m)``: a larger ``m`` means fewer passes and a costlier start.

    ``m = min(n, max(per_param * p, min_rows))`` (:func:`mlefit._defaults.subsample_size`)
    unless ``m`` is given; ``seed`` fixes the subsample (stratified over the rows with
    positive weight; the same data and seed give the same fit). It converges only by the
    loop's rule on the FULL-data gradient, ``max|g| <= tol`` (a step that predicts a gain
    below the rounding level of ``f`` is taken when ``f`` stays within rounding, but is no
    verdict: ``B`` is not the Hessian).
    Its own verdicts: ``STALLED`` after 30 refused steps in a row (the loop then counts a
    gradient within ``100 tol`` as converged); ``INIT_NOT_FINITE`` when ``f`` is not finite
    at the start (nor at the subsample's optimum); ``NON_FINITE`` at ``f = -inf``.

    Pass it (or ``"subsampled"``) as ``fit(..., optimizer=...)``; the default solver uses
    it where :func:`mlefit._defaults.default_solver` says it wins. Inside the compiled
    program :func:`bind_subsample` gives it the subsample's objective.

    Example:
        >>> s = SubsampledNewton(min_rows=2000)
        >>> s.size(10**5, 33), SubsampledNewton(m=500).size(10**5, 33)
        (2000, 500)
    """

    m: int | None = eqx.field(static=True, default=None)
    per_param: int = eqx.field(static=True, default=SUBSAMPLE_PER_PARAM)
    min_rows: int = eqx.field(static=True, default=SUBSAMPLE_MIN_ROWS)
    seed: int = eqx.field(static=True, default=0)
    shards: tuple | None = eqx.field(static=True, default=None, repr=False)
    sub_f: Callable | None = eqx.field(static=True, default=None, repr=False)
    sub_rows: int | None = eqx.field(static=True, default=None, repr=False)
    lazy_start = True
    monotone = True  # a step is taken only when f drops (Armijo) or stays within rounding

    def __check_init__(self):
        for name, value, low in (("m", self.m, 1), ("per_param", self.per_param, 1),
                                 ("min_rows", self.min_rows, 1), ("seed", self.seed, 0)):
            if value is None and name == "m":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(
                    f"SubsampledNewton: {name} must be an int >= {low}, got {value!r}"
                    + ("; leave m=None for the rule max(per_param * p, min_rows)."
                       if name == "m" else ".")
                )

    def size(self, n_rows: int, n_params: int) -> int:
        """Rows in the subsample: ``m`` capped at ``n``, or the rule."""
        if self.m is not None:
            return int(min(self.m, n_rows))
        return subsample_size(n_rows, n_params, self.per_param, self.min_rows)

    def init(self, f, x0):
        dtype = x0.dtype
        p = x0.size
        false = jnp.asarray(False)
        return _State(
            x0, jnp.asarray(jnp.inf, dtype), jnp.zeros_like(x0), jnp.eye(p, dtype=dtype),
            jnp.asarray(0.0, dtype), jnp.asarray(2.0, dtype), jnp.asarray(0, jnp.int32),
            jnp.asarray(True), false, false, jnp.asarray(0, jnp.int32),
        )

    def current(self, s: _State):
        return s.x, s.value, s.grad

    def _subsample_newton(self, x0, tol, limit):
        """``(x, H_S(x), Hessians computed)``: damped Newton on the subsample's NLL from
        ``x0`` for at most ``limit`` steps (``limit = 0``: ``x = x0``, its Hessian only).

        The one place the program evaluates a subsample Hessian: its first iteration
        evaluates ``x0`` (as Newton's lazy start), later ones a damped Newton step
        (:func:`_damped_direction`), taken when ``f_S`` decreases beyond rounding.
        """
        vgh = value_grad_hessian(self.sub_f)
        dtype = x0.dtype
        eps = jnp.finfo(dtype).eps
        sub_tol = jnp.maximum(tol, _SUB_TOL).astype(dtype)
        p = x0.size
        noise = _WARM * p / max(self.sub_rows or 1, 1)

        def body(c):
            x, v, g, h, lam, nu, k, refusals, _ = c
            first = k == 0
            d, pd = _damped_direction(h, g, lam)
            # A warm start (the first Newton step, lam = 0): x0 within the subsample's
            # noise of its optimum stays where it is.
            near = (k == 1) & pd & (-jnp.dot(g, d) <= noise)
            xt = x + jnp.where(first | near, 0.0, d)
            vt, gt, ht = vgh(xt)
            ok = jnp.isfinite(vt) & jnp.all(jnp.isfinite(gt)) & jnp.all(jnp.isfinite(ht))
            accept = ok & (first | (vt < v - 8 * eps * jnp.maximum(jnp.abs(v), 1.0)))
            x, v, g, h = jax.tree.map(lambda a, b: jnp.where(accept, a, b),
                                      (xt, vt, gt, ht), (x, v, g, h))
            # Damping as Newton's: shrink on a taken step, grow geometrically on refusals.
            lam = jnp.where(accept, jnp.where(first | (lam < _LAM_FIRST), 0.0, lam / 3.0),
                            jnp.maximum(lam, _LAM_FIRST) * nu)
            nu = jnp.where(accept, 2.0, 2.0 * nu)
            refusals = jnp.where(accept, 0, refusals + 1)
            done = ((jnp.max(jnp.abs(g)) <= sub_tol) | (refusals >= NEWTON_MAX_REFUSALS)
                    | (first & ~ok) | near | (k + 1 > limit))
            return x, v, g, h, lam, nu, k + 1, refusals, done

        inf = jnp.asarray(jnp.inf, dtype)
        zero = jnp.asarray(0, jnp.int32)
        start = (x0, inf, jnp.zeros_like(x0), jnp.eye(p, dtype=dtype),
                 jnp.asarray(0.0, dtype), jnp.asarray(2.0, dtype), zero, zero,
                 jnp.asarray(False))
        x, v, g, h, _, _, k, _, _ = jax.lax.while_loop(lambda c: ~c[-1], body, start)
        ok = jnp.isfinite(v) & jnp.all(jnp.isfinite(h))
        return jnp.where(ok, x, x0), jnp.where(ok, h, jnp.eye(p, dtype=dtype)), k

    def step(self, f, c: _State, tol):
        dtype = c.x.dtype
        eps = jnp.finfo(dtype).eps

        def slack(v):
            return 8 * eps * jnp.maximum(jnp.abs(v), 1.0)

        # Curvature from the subsample where needed: at the start, Newton on the subsample
        # from x0 (only its Hessian at x0 after a fallback); after a refused step, a fresh
        # Hessian at the current iterate.
        need = c.first | c.stale
        limit = jnp.where(c.first & ~c.fallback, _SUB_STEPS, 0).astype(jnp.int32)
        xs, curvature, k_sub = jax.lax.cond(
            need, lambda: self._subsample_newton(c.x, tol, limit),
            lambda: (c.x, c.curvature, jnp.asarray(0, jnp.int32)))
        d, pd = _damped_direction(curvature, c.grad, c.lam)
        first = c.first
        d = jnp.where(first, 0.0, d)
        xt = jnp.where(first, xs, c.x + d)
        vt, gt = jax.value_and_grad(f)(xt)  # the step's one full pass
        finite_vg = jnp.isfinite(vt) & jnp.all(jnp.isfinite(gt))
        gd = jnp.dot(c.grad, d)
        armijo = vt <= c.value + _ARMIJO * gd
        within = vt <= c.value + slack(c.value)
        flat = within & (jnp.max(jnp.abs(gt)) < jnp.max(jnp.abs(c.grad)))
        decrement = -0.5 * gd
        resolved = ~first & pd & (c.lam <= _LAM_FIRST) & (decrement <= slack(c.value))
        accept = finite_vg & (first | armijo | flat | (resolved & within))
        # BFGS update of B with the full-data secant pair of an accepted step.
        y = gt - c.grad
        sy = jnp.dot(d, y)
        Bs = curvature @ d
        sBs = jnp.dot(d, Bs)
        good = (accept & ~first & (sBs > 0)
                & (sy > 1e3 * eps * jnp.linalg.norm(d) * jnp.linalg.norm(y)))
        updated = (curvature - jnp.outer(Bs, Bs) / jnp.where(good, sBs, 1.0)
                   + jnp.outer(y, y) / jnp.where(good, sy, 1.0))
        refused = ~first & ~accept  # the next step refreshes the curvature at x
        curvature = jnp.where(good, updated, curvature)
        x, v, g = jax.tree.map(lambda new, old: jnp.where(accept, new, old),
                               (xt, vt, gt), (c.x, c.value, c.grad))
        # Nielsen's damping update, as in Newton (lam = 0 stays 0 while steps are taken).
        predicted = -(gd + 0.5 * jnp.dot(d, Bs))
        rho = jnp.where(predicted > 0,
                        (c.value - vt) / jnp.where(predicted > 0, predicted, 1.0), 1.0)
        shrink = jnp.maximum(1.0 / 3.0, 1.0 - (2.0 * jnp.clip(rho, 0.0, 1.0) - 1.0) ** 3)
        lam = jnp.where(first, c.lam, jnp.where(
            accept, jnp.where(c.lam < _LAM_FIRST, 0.0, c.lam * shrink),
            jnp.where(c.lam == 0, _LAM_FIRST, c.lam * c.nu)))
        # B + lam D was not positive definite (a scaled gradient step): more damping.
        lam = jnp.where(~first & ~pd, jnp.maximum(lam, _LAM_FIRST) * c.nu, lam)
        nu = jnp.where(accept | first, 2.0, 2.0 * c.nu)
        refusals = jnp.where(accept | first, 0, c.refusals + 1)
        hessians = c.hessians + k_sub
        # Not finite at the subsample's optimum: the next step starts from x0 instead.
        retry = first & ~accept & ~c.fallback
        not_finite = first & ~accept & c.fallback
        unbounded = ~first & (vt == -jnp.inf)
        verdict = jnp.where(
            not_finite, Status.INIT_NOT_FINITE,
            jnp.where(unbounded, Status.NON_FINITE,
                      jnp.where(refusals >= NEWTON_MAX_REFUSALS, Status.STALLED, RUNNING)),
        ).astype(jnp.int32)
        v = jnp.where(not_finite, vt, v)  # an infinite start stays visible
        state = _State(x, v, g, curvature, lam.astype(dtype), nu.astype(dtype), refusals,
                       retry, refused, c.fallback | retry, hessians)
        return state, verdict


def bind_subsample(solver: SubsampledNewton, logp, transforms, unravel, n_params: int,
                   data: tuple, weights) -> SubsampledNewton:
    """``solver`` with its subsample objective ``f_S(x)``: the weighted mean NLL of the rows
    :func:`subsample_indices` draws (from ``solver.seed``), at
    ``unravel(x)``. Called inside the compiled program (the rows are gathered there)."""
    n_rows = data[0].shape[0]
    m = solver.size(n_rows, n_params)
    if solver.shards is not None:
        sub_data, sub_w = per_shard_subsample(solver.seed, m, *solver.shards, data, weights)
    else:
        idx = subsample_indices(solver.seed, weights, n_rows, m)
        sub_data = tuple(jnp.take(a, idx, axis=0) for a in data)
        sub_w = None if weights is None else jnp.take(weights, idx, axis=0)
    if isinstance(logp, Reduced):
        f_s = objective(logp, transforms, sub_data, sub_w)
    else:  # plain autodiff: its Hessian ran 3x faster than the fast gradient's (20k x 33)
        f_s = lambda u: mean_nll(logp, constrain(u, transforms), sub_data, sub_w)  # noqa: E731
    return dataclasses.replace(solver, sub_f=lambda x: f_s(unravel(x)),
                               sub_rows=int(sub_data[0].shape[0]))


def on_shards(solver, data: tuple):
    """``solver`` set to draw its subsample per shard (:func:`per_shard_subsample`) where
    the data are split over several devices by a ``NamedSharding`` along the
    observations; otherwise ``solver`` unchanged."""
    if not isinstance(solver, SubsampledNewton) or not isinstance(data[0], jax.Array):
        return solver
    sharding = data[0].sharding
    if (not isinstance(sharding, NamedSharding) or len(sharding.device_set) < 2
            or not sharding.spec or sharding.spec[0] is None):
        return solver
    return dataclasses.replace(solver, shards=(sharding.mesh, sharding.spec[0]))
