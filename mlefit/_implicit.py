"""Differentiating an estimate by the implicit function theorem, never through the loop.

A fit returns ``x*(theta) = argmin_x f(x, theta)``, with ``f`` the mean (penalised) NLL
in the unconstrained parameters and ``theta`` everything it depends on: the data, the
weights, values closed over by the model or the penalty (hyperparameters, fixed
parameter values). At an optimum ``grad_x f(x*, theta) = 0``; differentiating that
identity gives

    dx*/dtheta = -H^-1 d(grad_x f)/dtheta,      H = d^2 f / dx dx^T at x*

(the start ``x0`` has no influence on the optimum: its derivative is zero).

:func:`argmin` runs the solver's loop (:mod:`mlefit._iterate`) as a ``jax.custom_jvp``
function whose tangent rule is that formula: the mixed derivative is one forward-mode
product ``jvp(theta -> grad_x f(x*, theta))`` and the solve is linear in it, so reverse
mode (``jax.grad``, ``jax.vjp``) is JAX's transpose of the rule: one VJP of the
gradient with respect to ``theta`` and one solve with the (symmetric) Hessian. The
loop is never differentiated, so the cost of a derivative does not grow with the
number of steps.

The solve (documented rule; ``fit`` passes ``direct``):

- where a Hessian is cheap (``fit``: the rule that picks Newton,
  :func:`mlefit._defaults.use_newton`: ``p <= 64`` free parameters and
  ``n p^2 <= 2e7``, ``n = 1`` for a fit from sufficient statistics; by default
  ``p <= CHOLESKY_MAX_PARAMS = 256``): the Hessian by forward-over-reverse autodiff
  (``p`` Hessian-vector products at once) and its Cholesky factor; a singular or
  indefinite Hessian (a pivot below ``1e3 eps`` times the largest diagonal entry) makes
  the derivative NaN;
- otherwise: conjugate gradients on Hessian-vector products
  (``jax.scipy.sparse.linalg.cg``, relative tolerance ``CG_RTOL``, at most
  ``CG_MAXITER_FACTOR * p`` iterations), the Hessian never formed; a solve that misses
  its tolerance (singular or indefinite Hessian) is NaN (no warning: the check is on
  the vector being solved for, inside the transformation).

A fit that did not converge (any status but ``CONVERGED``) or whose Hessian is singular
has a NaN derivative, never a silent wrong number. Outside ``jit``/``vmap`` (when the
values are concrete) a ``RuntimeWarning`` says which: the status, or the
non-identifiable direction (the eigenvector of the smallest Hessian eigenvalue, in
parameter names).

The pattern (a ``custom_jvp`` whose rule solves with the Jacobian of the optimality
condition, closed-over values made explicit by closure conversion) is optimistix's
``ImplicitAdjoint``; mlefit depends on neither optimistix nor lineax: the solves are
``jax.scipy`` ones, which JAX can transpose.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np

from ._iterate import AbstractSolver, iterate_finish, iterate_init, iterate_run
from ._status import Status

__all__ = ["argmin", "CHOLESKY_MAX_PARAMS", "CG_RTOL", "CG_MAXITER_FACTOR"]

# Up to this many free parameters the tangent solve forms the Hessian (p HVPs at once,
# one O(p^3 / 3) factorisation); above it, CG on Hessian-vector products.
CHOLESKY_MAX_PARAMS = 256
CG_RTOL = 1e-10
CG_MAXITER_FACTOR = 10
# A Cholesky pivot below this fraction of the largest |diagonal entry| (squared scale)
# counts as singular: the Hessian does not identify a direction.
_SINGULAR_RTOL = 1e3


class _Static(NamedTuple):
    """What the compiled loop is specialised to (passed as a non-differentiable argument)."""

    solver: AbstractSolver
    fn: Any  # closure-converted f(x, args, *consts)
    tol: float
    max_steps: int
    record_history: bool
    names: tuple  # names of the entries of x, for warnings
    direct: bool  # Cholesky of the Hessian (else CG on Hessian-vector products)


def argmin(solver: AbstractSolver, f, x0, args, tol: float, max_steps: int,
           record_history: bool = False, names: tuple = (), direct: bool | None = None):
    """Minimises ``x -> f(x, args)`` from flat ``x0``; differentiable in ``args`` (and in
    whatever ``f`` closes over) by the implicit function theorem.

    Returns ``(x, value, grad, steps, status, history)`` as
    :func:`mlefit._iterate.iterate`. Derivatives: ``dx = -H^-1 d(grad_x f)`` (see the
    module docstring), ``d value = (d f/d theta) dtheta + grad . dx`` (the envelope
    theorem), zero for ``grad``, ``history`` and the start ``x0``; NaN unless the fit
    converged with a non-singular Hessian. ``direct``: solve with the Cholesky factor of
    the Hessian (default: ``p <= CHOLESKY_MAX_PARAMS``), else by CG on Hessian-vector
    products. ``names``: of the entries of ``x``, for the warnings.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from mlefit._newton import Newton
        >>> f = lambda x, a: jnp.sum((x - a) ** 2) + 0.1 * jnp.sum(x ** 4)
        >>> dx = jax.jacobian(lambda a: argmin(Newton(), f, jnp.zeros(2), a, 1e-12, 50)[0])
        >>> J = dx(jnp.array([1.0, 2.0]))   # diag(2 / (2 + 1.2 x*^2))
    """
    fn, consts = jax.closure_convert(f, x0, args)
    direct = x0.size <= CHOLESKY_MAX_PARAMS if direct is None else bool(direct)
    static = _Static(solver, fn, float(tol), int(max_steps), bool(record_history),
                     tuple(names), direct)
    return _argmin(static, x0, (args, tuple(consts)))


def _run(static: _Static, x0, inputs):
    args, consts = inputs
    ff = lambda x: static.fn(x, args, *consts)  # noqa: E731
    tol = jnp.asarray(static.tol, x0.dtype)
    carry = iterate_init(static.solver, ff, x0, tol, static.max_steps, static.record_history)
    carry = iterate_run(static.solver, ff, carry, tol, static.max_steps, static.max_steps)
    return iterate_finish(static.solver, carry)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _argmin(static: _Static, x0, inputs):
    return _run(static, x0, inputs)


@_argmin.defjvp
def _argmin_jvp(static: _Static, primals, tangents):
    x0, inputs = primals
    _, dinputs = tangents
    out = _run(static, x0, inputs)
    x, value, grad, steps, status, hist = out

    def value_and_grad_at_x(inp):
        args, consts = inp
        return jax.value_and_grad(lambda z: static.fn(z, args, *consts))(x)

    # (d f / d theta) dtheta and the mixed derivative d(grad_x f) dtheta, at fixed x*.
    _, (dvalue, rhs) = jax.jvp(value_and_grad_at_x, (inputs,), (dinputs,))
    hvp_f = lambda z: static.fn(z, *_split(inputs))  # noqa: E731
    dx_raw, identified, hess = _solve(hvp_f, x, rhs, static.direct)
    converged = status == Status.CONVERGED
    ok = converged & identified
    _warn_if_concrete(static, status, converged, identified, hess)
    # Multiplying by a constant keeps the tangent linear (so it can be transposed).
    scale = jnp.where(ok, jnp.asarray(1.0, x.dtype), jnp.asarray(jnp.nan, x.dtype))
    dx = -scale * dx_raw
    dvalue = dvalue + jnp.vdot(grad, dx)
    zero = jnp.zeros_like
    tangents_out = (dx, dvalue, zero(grad), _float0(steps), _float0(status),
                    None if hist is None else zero(hist))
    return out, tangents_out


def _split(inputs):
    args, consts = inputs
    return (args, *consts)


def _float0(x):
    return np.zeros(np.shape(x), dtype=jax.dtypes.float0)


def _solve(f, x, rhs, direct: bool):
    """``(H^-1 rhs, identified, H or None)`` at ``x`` (see the module's rule)."""
    p = x.size
    if direct:
        hess = jax.hessian(f)(x)
        hess = 0.5 * (hess + hess.T)
        chol = jnp.linalg.cholesky(hess)
        scale = jnp.max(jnp.abs(jnp.diag(hess)))
        eps = jnp.finfo(x.dtype).eps
        pivots = jnp.diag(chol) ** 2
        identified = jnp.all(jnp.isfinite(chol)) & (
            jnp.min(pivots) > _SINGULAR_RTOL * eps * scale
        ) if p else jnp.asarray(True)
        safe = jnp.where(identified, chol, jnp.eye(p, dtype=x.dtype))
        return jsl.cho_solve((safe, True), rhs), identified, hess

    def hvp(v):
        return jax.jvp(jax.grad(f), (x,), (v,))[1]

    sol = jax.lax.custom_linear_solve(hvp, rhs, _cg, _cg, symmetric=True)
    return sol, jnp.asarray(True), None


def _cg(matvec, b):
    """CG solve of ``matvec(x) = b``, NaN where CG did not reach its tolerance (a singular
    or indefinite Hessian). Used through ``lax.custom_linear_solve``, which treats it as
    the linear map ``H^-1`` (so the NaN check, applied to the tangent or cotangent being
    solved for, does not make the rule non-linear to JAX)."""
    p = b.size
    sol, _ = jax.scipy.sparse.linalg.cg(matvec, b, tol=CG_RTOL, maxiter=CG_MAXITER_FACTOR * p)
    resid = jnp.linalg.norm(matvec(sol) - b)
    ok = jnp.isfinite(resid) & (resid <= 1e3 * CG_RTOL * jnp.linalg.norm(b))
    return jnp.where(ok, sol, jnp.nan)


def _is_concrete(*xs) -> bool:
    return not any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(xs))


def _warn_if_concrete(static: _Static, status, converged, identified, hess) -> None:
    """The reason for a NaN derivative, as a warning, where values are concrete."""
    if not _is_concrete(status, converged, identified):
        return
    if not bool(converged):
        warnings.warn(
            f"implicit derivative of a fit that did not converge (status "
            f"{Status(int(status))}): the derivative of the estimate is NaN. The implicit "
            "function theorem holds at an optimum only; raise max_steps or check the fit.",
            RuntimeWarning, stacklevel=4,
        )
    elif not bool(identified):
        warnings.warn(
            "implicit derivative: the Hessian of the NLL at the estimate is singular or not "
            f"positive definite{_direction(static.names, hess)}; the derivative of the estimate "
            "is NaN (the optimum does not move uniquely with the data).",
            RuntimeWarning, stacklevel=4,
        )


def _direction(names: tuple, hess) -> str:
    """`` (direction 0.71*a - 0.71*b is not identified)`` from the smallest eigenvector."""
    if hess is None or not _is_concrete(hess) or not np.all(np.isfinite(np.asarray(hess))):
        return ""
    w, v = np.linalg.eigh(np.asarray(hess))
    vec = v[:, 0]
    vec = vec * np.sign(vec[np.argmax(np.abs(vec))])
    labels = names if len(names) == vec.size else [f"x[{i}]" for i in range(vec.size)]
    order = np.argsort(-np.abs(vec))
    terms = [f"{vec[i]:+.3g}*{labels[i]}" for i in order if abs(vec[i]) > 1e-3][:6]
    expr = " ".join(terms).lstrip("+")
    return f" (eigenvalue {w[0]:.3g}; direction {expr} is not identified)"
