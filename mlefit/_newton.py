"""Damped Newton minimisation for small parameter counts, in one ``lax.while_loop``.

Each step solves ``(H + lam * D) d = -g`` with the exact autodiff Hessian ``H``
of ``f`` (``D = diag(|H_jj|)``, Marquardt's scaling, so steps do not depend on the
units of the parameters; ``lam >= 0`` a Levenberg-Marquardt damping), and
takes ``u + d`` when it decreases ``f`` (or keeps it within rounding while the
gradient shrinks). ``lam`` starts at 0 (plain Newton) and follows Nielsen's update:
a refused step multiplies it by ``nu`` (2, 4, 8, ...), an accepted one by
``max(1/3, 1 - (2 rho - 1)^3)`` with ``rho`` the actual over the predicted decrease;
so far from the optimum the step turns into a short gradient step and near it into
the full Newton step (quadratic convergence). When ``H + lam * D`` is not
positive definite, a Gershgorin shift of the scaled matrix makes it so (``fit_many``,
cheap under ``vmap``), or its eigenvalues are replaced by their absolute values
(``fit(optimizer="newton")``, saddle-free Newton).

One trial point per step, one evaluation of ``(f, grad, Hessian)`` per trial and no
inner line-search loop: under ``vmap`` every member does the same work each step,
and a member that has stopped is frozen by the batched loop's masking.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from ._defaults import NEWTON_MAX_REFUSALS, RUNNING
from ._iterate import AbstractSolver, iterate
from ._status import Status

__all__ = ["Newton", "newton_loop", "value_grad_hessian", "NEWTON"]

NEWTON = "newton"  # the optimizer name that selects this solver in fit and fit_many

# Unrolled (elementwise) Cholesky up to this size: under vmap on CPU a batched
# LAPACK call per member is far slower than a few dozen vectorised scalar ops.
_UNROLL_MAX = 8
_LAM_FIRST = 1e-4
# Damping of the restart from a flat region: scaled gradient steps first.
_LAM_RESTART = 100.0


def value_grad_hessian(ff):
    """Returns ``x -> (f(x), grad f(x), hess f(x))`` for flat ``x`` (forward-over-reverse)."""

    def g_aux(x):
        v, g = jax.value_and_grad(ff)(x)
        return g, (v, g)

    def vgh(x):
        h, (v, g) = jax.jacfwd(g_aux, has_aux=True)(x)
        return v, g, 0.5 * (h + h.T)

    return vgh


def _cholesky_unrolled(a):
    """Lower Cholesky factor of a small matrix as nested lists of scalars, and a PD flag."""
    p = a.shape[0]
    L = [[None] * p for _ in range(p)]
    pd = jnp.asarray(True)
    for j in range(p):
        s = a[j, j] - sum((L[j][k] ** 2 for k in range(j)), jnp.zeros((), a.dtype))
        pd = pd & (s > 0)
        d = jnp.sqrt(jnp.where(s > 0, s, 1.0))
        L[j][j] = d
        for i in range(j + 1, p):
            t = a[i, j] - sum((L[i][k] * L[j][k] for k in range(j)), jnp.zeros((), a.dtype))
            L[i][j] = t / d
    return L, pd


def _solve_unrolled(L, b):
    p = len(L)
    y = [None] * p
    for i in range(p):
        y[i] = (b[i] - sum((L[i][k] * y[k] for k in range(i)), jnp.zeros((), b.dtype))) / L[i][i]
    x = [None] * p
    for i in reversed(range(p)):
        x[i] = (y[i] - sum((L[k][i] * x[k] for k in range(i + 1, p)), jnp.zeros((), b.dtype))) / L[
            i
        ][i]
    return jnp.stack(x)


def pd_solve(a, b):
    """Returns ``(a^-1 b, is_pd)`` by Cholesky; the solution is meaningless when not PD."""
    if a.shape[0] <= _UNROLL_MAX:
        L, pd = _cholesky_unrolled(a)
        return _solve_unrolled(L, b), pd
    L = jnp.linalg.cholesky(a)
    pd = jnp.all(jnp.isfinite(L))
    return jax.scipy.linalg.cho_solve((L, True), b), pd


def _marquardt_scale(h):
    """``S = |diag H|^-1/2``; a parameter without curvature (``H_jj = 0``) gets the largest
    curvature's scale, and a Hessian of zeros ``S = 1``. Curvatures may differ by far more
    than ``1 / eps`` (NIST's Nelson: a parameter of 5.6e-9): only zero is special."""
    tiny = jnp.finfo(h.dtype).tiny
    absdiag = jnp.abs(jnp.diagonal(h))
    top = jnp.max(absdiag)
    d = jnp.where(absdiag > tiny, absdiag, top)
    return 1.0 / jnp.sqrt(jnp.where(d > tiny, d, 1.0))


def _direction(h, g, lam):
    """Damped Newton direction ``-(H + lam D)^-1 g``, shifted to be a descent direction.

    ``D = diag(|H_jj|)`` (Marquardt's scaling): the step is the same in any units of the
    parameters, so one with curvature 1e18 and one with curvature 1 are damped alike.
    Computed as a Jacobi-scaled system ``(S H S + lam I) S^-1 d = -S g``,
    ``S = D^-1/2``, whose diagonal is 1 where ``H_jj > 0``.
    """
    p = h.shape[0]
    eye = jnp.eye(p, dtype=h.dtype)
    s = _marquardt_scale(h)
    hs = s[:, None] * h * s[None, :]
    gs = s * g
    d, pd = pd_solve(hs + lam * eye, -gs)
    # Gershgorin: hs + shift I is diagonally dominant with a positive diagonal, hence PD.
    diag = jnp.diagonal(hs)
    off = jnp.sum(jnp.abs(hs), axis=1) - jnp.abs(diag)
    shift = jnp.maximum(jnp.max(off - diag), 0.0) + lam + 1e-8
    d2, _ = pd_solve(hs + shift * eye, -gs)
    return s * jnp.where(pd, d, d2), pd


def _direction_eig(h, g, lam):
    """``-(|H| + lam D)^-1 g`` in Marquardt's scaling, ``|H|`` with the eigenvalues of the
    scaled Hessian replaced by their absolute values (saddle-free Newton: the full Newton
    step where H is positive definite, a descent step that leaves saddles otherwise)."""
    s = _marquardt_scale(h)
    w, V = jnp.linalg.eigh(s[:, None] * h * s[None, :])
    pd = jnp.all(w > 0)
    w = jnp.maximum(jnp.abs(w), jnp.finfo(h.dtype).eps * jnp.max(jnp.abs(w))) + lam
    d = -s * (V @ ((V.T @ (s * g)) / w))
    return jnp.where(jnp.all(jnp.isfinite(d)), d, -s * s * g), pd


class _State(NamedTuple):
    x: jax.Array
    value: jax.Array
    grad: jax.Array
    hess: jax.Array
    lam: jax.Array
    nu: jax.Array
    refusals: jax.Array
    first: jax.Array
    hess_exact: jax.Array
    start: tuple  # (x, value, grad, hess, hess_exact) at the start, for the restart
    restarted: jax.Array


class Newton(AbstractSolver):
    """Damped Newton with the exact Hessian: one trial point per step.

    ``(H + lam D) d = -g`` in Marquardt's scaling; ``u + d`` is taken when it decreases
    ``f`` beyond rounding, or keeps it within rounding while the gradient shrinks.
    ``lam`` starts at 0 (plain Newton) and follows Nielsen's update. Its own verdicts:
    ``CONVERGED`` when a full Newton step (positive definite Hessian, no damping)
    predicts a gain below the rounding level of ``f`` (Newton decrement
    ``-g.d / 2 <= 8 eps max(|f|, 1)``: nothing left to gain at machine precision); that
    last step is taken when ``f`` stays within rounding;
    ``STALLED`` after 30 refused steps in a row; ``NON_FINITE`` when a trial point has
    ``f = -inf`` (the likelihood is unbounded: no MLE, e.g. zero spread). Any other
    non-finite trial point is refused like a rise, so the iterate stays finite.

    ``eig=True`` (``fit``): saddle-free steps from an eigendecomposition,
    :func:`_direction_eig`; on NIST's nonlinear regressions (40 fits, both starts) 36
    reached the certified values against 27 with the Gershgorin shift. ``eig=False``
    (``fit_many``): a Gershgorin shift where ``H + lam D`` is not positive definite, with
    an unrolled Cholesky for up to 8 parameters (cheap under ``vmap``).

    ``restart=True`` (``fit``): a fit that would stop (gradient below ``tol``, or
    stalled) where the Hessian is not positive definite (a flat region or a saddle:
    plain Newton from a far start can walk into one, NIST's Eckerle4 from start 1) is
    restarted once from the start with heavy damping (``lam = 100``: scaled gradient
    steps first, Newton's as the damping decays); the loop returns the better end.

    The start is evaluated by the loop's first pass (``lazy_start``: one traced copy of
    the value/gradient/Hessian program, which halves compile time).
    """

    eig: bool = eqx.field(static=True, default=True)
    restart: bool = eqx.field(static=True, default=False)
    lam0: float = eqx.field(static=True, default=0.0)
    lazy_start = True
    monotone = True  # a step is taken only when f drops, or stays within rounding

    def hessian(self, s: _State):
        """``(H, exact)``: the Hessian of ``f`` at the current iterate, and whether it is
        the exact one (not the identity that stands in for a non-finite one at the start)."""
        return s.hess, s.hess_exact

    def init(self, f, x0):
        dtype = x0.dtype
        p = x0.size
        return _State(
            x0, jnp.asarray(jnp.inf, dtype), jnp.zeros_like(x0), jnp.eye(p, dtype=dtype),
            jnp.asarray(self.lam0, dtype), jnp.asarray(2.0, dtype), jnp.asarray(0, jnp.int32),
            jnp.asarray(True), jnp.asarray(False),
            (x0, jnp.asarray(jnp.inf, dtype), jnp.zeros_like(x0), jnp.eye(p, dtype=dtype),
             jnp.asarray(False)),
            jnp.asarray(False),
        )

    def current(self, s: _State):
        return s.x, s.value, s.grad

    def step(self, f, c: _State, tol):
        vgh = value_grad_hessian(f)
        dtype = c.x.dtype
        eps = jnp.finfo(dtype).eps
        p = c.x.size

        def slack(v):
            return 8 * eps * jnp.maximum(jnp.abs(v), 1.0)

        def gnorm(g):
            return jnp.max(jnp.abs(g))

        first = c.first
        d, pd = (_direction_eig if self.eig else _direction)(c.hess, c.grad, c.lam)
        xt = c.x + jnp.where(first, 0.0, d)
        vt, gt, ht = vgh(xt)
        finite_vg = jnp.isfinite(vt) & jnp.all(jnp.isfinite(gt))
        # A non-finite Hessian at the start: gradient steps from there.
        exact = jnp.all(jnp.isfinite(ht))
        ht = jnp.where(first & ~exact, jnp.eye(p, dtype=dtype), ht)
        ok = finite_vg & jnp.all(jnp.isfinite(ht))
        drop = vt < c.value - slack(c.value)
        within = vt <= c.value + slack(c.value)
        flat = within & (gnorm(gt) < gnorm(c.grad))
        gd = jnp.dot(c.grad, d)
        decrement = -0.5 * gd
        # Resolved: a full Newton step (positive definite Hessian, no damping) that
        # predicts no gain beyond the rounding level of f. The values cannot judge it,
        # the gradient and Hessian place it: it is taken when f stays within rounding
        # (on an ill-conditioned regression it gains 3-4 digits), and the fit converged.
        resolved = ~first & pd & (c.lam <= _LAM_FIRST) & (decrement <= slack(c.value))
        accept = ok & (first | drop | flat | (resolved & within))
        x, v, g, h = jax.tree.map(
            lambda new, old: jnp.where(accept, new, old),
            (xt, vt, gt, ht),
            (c.x, c.value, c.grad, c.hess),
        )
        # Nielsen's damping update: shrink lam by how well the quadratic model predicted
        # the decrease (rho), grow it geometrically on refusals. lam = 0 (plain Newton)
        # stays 0 while its steps are accepted.
        predicted = -(gd + 0.5 * jnp.dot(d, c.hess @ d))
        rho = jnp.where(
            predicted > 0, (c.value - vt) / jnp.where(predicted > 0, predicted, 1.0), 1.0
        )
        shrink = jnp.maximum(1.0 / 3.0, 1.0 - (2.0 * jnp.clip(rho, 0.0, 1.0) - 1.0) ** 3)
        lam = jnp.where(
            accept,
            jnp.where(first, c.lam, c.lam * shrink),
            jnp.where(c.lam == 0, _LAM_FIRST, c.lam * c.nu),
        )
        nu = jnp.where(accept, 2.0, 2.0 * c.nu)
        refusals = jnp.where(accept, 0, c.refusals + 1)
        # A trial NLL of -inf: the likelihood is unbounded (zero spread, a collapsing
        # scale), so there is no MLE to converge to; stop rather than crawl to max_steps.
        unbounded = ~first & (vt == -jnp.inf)
        verdict = jnp.where(
            first & ~finite_vg,
            Status.INIT_NOT_FINITE,
            jnp.where(
                unbounded,
                Status.NON_FINITE,
                jnp.where(
                    resolved,
                    Status.CONVERGED,
                    jnp.where(refusals >= NEWTON_MAX_REFUSALS, Status.STALLED, RUNNING),
                ),
            ),
        ).astype(jnp.int32)
        v = jnp.where(first & ~finite_vg, vt, v)
        hess_exact = jnp.where(accept, exact, c.hess_exact)
        start = jax.tree.map(lambda new, old: jnp.where(first, new, old),
                             (x, v, g, h, hess_exact), c.start)
        restarted = c.restarted
        if self.restart:
            stops = ~first & ((gnorm(g) <= tol) | (verdict == Status.STALLED))
            # pd: the Hessian of the point the step left (its eigendecomposition is the
            # step's own), a stand-in for the new point's on a flat region or a saddle
            again = stops & ~restarted & ~pd
            x, v, g, h, hess_exact = jax.tree.map(
                lambda s0, cur: jnp.where(again, s0, cur), start, (x, v, g, h, hess_exact)
            )
            lam = jnp.where(again, _LAM_RESTART, lam)
            nu = jnp.where(again, 2.0, nu)
            refusals = jnp.where(again, 0, refusals)
            verdict = jnp.where(again, RUNNING, verdict).astype(jnp.int32)
            restarted = restarted | again
        state = _State(x, v, g, h, lam, nu, refusals, jnp.asarray(False), hess_exact, start,
                       restarted)
        return state, verdict


def newton_loop(f, u0, tol, max_steps: int, record_history: bool = False, eig: bool = False):
    """:func:`mlefit._iterate.iterate` with :class:`Newton`: minimises ``f`` from the pytree
    ``u0``; returns ``(u, value, grad, steps, status, history)``.

    Example:
        >>> import jax.numpy as jnp
        >>> f = lambda u: jnp.sum((u - 3.0) ** 2)
        >>> u, v, g, steps, status, _ = newton_loop(f, jnp.zeros(2), 1e-9, 50)
        >>> [round(v, 12) for v in u.tolist()], int(status)
        ([3.0, 3.0], 0)
    """
    return iterate(Newton(eig=eig), f, u0, tol, max_steps, record_history)
