"""A compact weak-Wolfe line search for L-BFGS, as an optax transformation.

mlefit's default optimiser is ``optax.lbfgs(linesearch=scale_by_wolfe_linesearch())``.
Compared with optax's zoom line search it traces the objective once instead of twice and
carries no interpolation logic: the compiled fit's program is about a third smaller and
quicker to build, and takes the same L-BFGS steps (``benchmarks/RESULTS.md``, "Compile
time").
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ._trees import all_finite, vdot

__all__ = ["scale_by_wolfe_linesearch", "WolfeLinesearchState"]


class WolfeLinesearchState(NamedTuple):
    """``value`` and ``grad`` at the accepted point (the fit loop reuses them), the step
    length taken (0 when no trial was acceptable) and the number of evaluations."""

    value: jax.Array
    grad: Any
    step: jax.Array
    evals: jax.Array


def scale_by_wolfe_linesearch(
    c1: float = 1e-4, c2: float = 0.9, max_evals: int = 30, slack_ulps: float = 8.0
) -> optax.GradientTransformationExtraArgs:
    r"""Scales the direction ``d`` by a step ``t`` meeting the weak Wolfe conditions.

    With :math:`\phi(t) = f(u + t d)`, a step is accepted when

    .. math::
        \phi(t) \le \phi(0) + c_1 t \phi'(0) \quad\text{and}\quad \phi'(t) \ge c_2 \phi'(0),

    or, where values are at their rounding level (:math:`\phi(t) \le \phi(0) + \epsilon_f`,
    :math:`\epsilon_f` = ``slack_ulps`` ulps of :math:`\max(|f|, 1)`), when Hager and
    Zhang's approximate Wolfe conditions
    :math:`c_2 \phi'(0) \le \phi'(t) \le (2 c_1 - 1) \phi'(0)` hold. The curvature
    condition keeps :math:`s^\top y > 0`, so the L-BFGS inverse-Hessian stays positive
    definite. Trials start at ``t = 1`` (the quasi-Newton step) and bisect a bracket
    ``[lo, hi]``: a trial without sufficient decrease (or not finite) becomes ``hi``, one
    still descending steeply becomes ``lo`` (doubled while ``hi`` is unknown). A direction
    that does not descend is replaced by ``-grad``. After ``max_evals`` trials without an
    acceptable one the lowest trial is taken if it lowers ``f`` with positive curvature
    (:math:`\phi'(t) > \phi'(0)`), else the step is 0 (the fit loop then sees no
    progress and reports a stall). Within rounding of :math:`\phi(0)` the Armijo test
    also needs :math:`\phi'(t) \le (2 c_1 - 1) \phi'(0)`: a value that did not round
    upwards says nothing about overshooting.

    ``update`` needs ``value``, ``grad`` (at ``params``) and ``value_fn``; the state's
    ``value`` and ``grad`` are those at the new point, for the next step.
    """

    def init(params) -> WolfeLinesearchState:
        # At least the default float: an objective may return a wider float than the
        # parameters, and its value must not be rounded to theirs.
        dtype = jnp.promote_types(jnp.result_type(*jax.tree.leaves(params)),
                                  jnp.result_type(float))
        zero = jnp.zeros((), dtype)
        return WolfeLinesearchState(
            jnp.asarray(jnp.inf, dtype), optax.tree.zeros_like(params), zero,
            jnp.zeros((), jnp.int32),
        )

    def update(updates, state, params, *, value, grad, value_fn, **extra_args):
        if extra_args:
            raise TypeError(f"scale_by_wolfe_linesearch: unexpected arguments {sorted(extra_args)}")
        vg = jax.value_and_grad(value_fn)
        dtype = jnp.result_type(value)
        slope = vdot(updates, grad).real
        descent = (slope < 0) & jnp.isfinite(slope)
        d = jax.tree.map(lambda x, g: jnp.where(descent, x, -g), updates, grad)
        slope = jnp.where(descent, slope, -vdot(grad, grad).real)
        eps_f = slack_ulps * jnp.finfo(dtype).eps * jnp.maximum(jnp.abs(value), 1.0)

        def moved(t):  # params + t d, leaf by leaf in the leaf's dtype
            return jax.tree.map(lambda p, x: p + (t * x).astype(p.dtype), params, d)

        def trial(t):
            return vg(moved(t))

        def body(c):
            t, lo, hi, k, _, best = c
            v, g = trial(t)
            dg = vdot(g, d).real
            finite = jnp.isfinite(v) & all_finite(g)
            # Within rounding of f(u), Armijo cannot tell a rise: also bound phi'(t) there.
            overshoot = dg > (2 * c1 - 1) * slope
            armijo = (v <= value + c1 * t * slope) & ((v < value - eps_f) | ~overshoot)
            flat = (v <= value + eps_f) & ~overshoot
            decrease = finite & (armijo | flat)
            curvature = dg >= c2 * slope
            accept = decrease & curvature
            # A fallback must lower f and keep s.y = t (phi'(t) - phi'(0)) > 0 for L-BFGS.
            lower = finite & (v < best[1]) & (dg > slope)
            best = jax.tree.map(lambda a, b: jnp.where(lower, a, b), (t, v, g), best)
            hi = jnp.where(decrease, hi, t)
            lo = jnp.where(decrease & ~curvature, t, lo)
            t_next = jnp.where(jnp.isinf(hi), 2 * t, 0.5 * (lo + hi))
            return (jnp.where(accept, t, t_next), lo, hi, k + 1, accept,
                    jax.tree.map(lambda a, b: jnp.where(accept, a, b), (t, v, g), best))

        one, zero = jnp.ones((), dtype), jnp.zeros((), dtype)
        inf = jnp.asarray(jnp.inf, dtype)
        c0 = (one, zero, inf, jnp.zeros((), jnp.int32), jnp.asarray(False), (zero, value, grad))
        _, _, _, k, _, (t, v, g) = jax.lax.while_loop(
            lambda c: ~c[4] & (c[3] < max_evals), body, c0
        )
        # (t, v, g) is the accepted trial, else the lowest one, else (0, value, grad).
        scaled = jax.tree.map(lambda x: jnp.where(t == 0, 0, t * x).astype(x.dtype), d)
        # In the state's dtypes (a loop carry): wide enough for f's value, see init.
        g = jax.tree.map(lambda x, ref: x.astype(ref.dtype), g, state.grad)
        return scaled, WolfeLinesearchState(
            v.astype(state.value.dtype), g, t.astype(state.step.dtype), k
        )

    return optax.GradientTransformationExtraArgs(init, update)
