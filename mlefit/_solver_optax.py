"""Full-batch solvers from optax: L-BFGS (the default for large problems) and any
``GradientTransformation`` (gradient descent, Adam, ...), as one :class:`OptaxSolver`.

A step is ``u <- u + update(grad, state, u, value, grad, value_fn=f)``. Where the
optimiser's state carries the value and gradient at the new point (optax's L-BFGS with
a line search: mlefit's :func:`~mlefit._linesearch.scale_by_wolfe_linesearch`), they are
reused; otherwise ``f`` is evaluated once more. The solver stalls after
``NO_PROGRESS_PATIENCE`` steps in a row whose NLL change is within rounding.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from ._defaults import NO_PROGRESS_PATIENCE, RUNNING
from ._iterate import AbstractSolver
from ._linesearch import scale_by_wolfe_linesearch
from ._status import Status

__all__ = ["OptaxSolver", "default_optimizer", "lbfgs_optimizer", "LBFGS"]

LBFGS = "lbfgs"  # the optimizer name that asks fit for L-BFGS whatever the data's size


@functools.cache
def default_optimizer() -> optax.GradientTransformationExtraArgs:
    """Full-batch L-BFGS: ``optax.lbfgs`` (memory 10) with mlefit's weak-Wolfe line search
    (:func:`mlefit._linesearch.scale_by_wolfe_linesearch`); built once so fits reuse it."""
    return optax.lbfgs(linesearch=scale_by_wolfe_linesearch())


@functools.cache
def lbfgs_optimizer() -> optax.GradientTransformationExtraArgs:
    """``optimizer="lbfgs"``: the default's L-BFGS, built as a distinct object, so that
    the default's cost rule (:func:`mlefit._defaults.default_solver`, which may choose
    Newton or subsampled Newton) does not replace it."""
    return optax.lbfgs(linesearch=scale_by_wolfe_linesearch())


class _State(NamedTuple):
    x: jax.Array
    value: jax.Array
    grad: jax.Array
    opt_state: Any
    stuck: jax.Array


def _has_value_in_state(opt, x0) -> bool:
    state = jax.eval_shape(opt.init, x0)
    return optax.tree.get(state, "value") is not None and optax.tree.get(state, "grad") is not None


class OptaxSolver(AbstractSolver):
    """Minimises with an optax ``GradientTransformation`` (default: L-BFGS).

    Build the optimiser once and reuse it: it is static (part of the compiled program),
    so a new optimiser object compiles a new fit.
    """

    optimizer: optax.GradientTransformation = eqx.field(static=True)

    def _opt(self):
        return optax.with_extra_args_support(self.optimizer)

    def init(self, f, x0):
        value, grad = jax.value_and_grad(f)(x0)
        zero = jnp.asarray(0, jnp.int32)
        return _State(x0, value, grad, self._opt().init(x0), zero)

    def step(self, f, s: _State, tol):
        opt = self._opt()
        updates, opt_state = opt.update(s.grad, s.opt_state, s.x, value=s.value, grad=s.grad,
                                        value_fn=f)
        x = optax.apply_updates(s.x, updates)
        if _has_value_in_state(opt, s.x):  # the line search evaluated f at x: reuse it
            value = optax.tree.get(opt_state, "value").astype(s.value.dtype)
            grad = optax.tree.get(opt_state, "grad").astype(s.grad.dtype)
        else:
            value, grad = jax.value_and_grad(f)(x)
        finite = jnp.all(jnp.isfinite(x)) & jnp.isfinite(value) & jnp.all(jnp.isfinite(grad))
        eps = jnp.finfo(s.value.dtype).eps
        unchanged = jnp.abs(value - s.value) <= 4 * eps * jnp.maximum(jnp.abs(s.value), 1.0)
        stuck = jnp.where(unchanged, s.stuck + 1, 0)
        verdict = jnp.where(
            ~finite, Status.NON_FINITE,
            jnp.where(stuck >= NO_PROGRESS_PATIENCE, Status.STALLED, RUNNING),
        ).astype(jnp.int32)
        # On a non-finite step the state keeps its last finite iterate.
        x, value, grad = jax.tree.map(
            lambda a, b: jnp.where(finite, a, b), (x, value, grad), (s.x, s.value, s.grad)
        )
        return _State(x, value, grad, opt_state, stuck), verdict

    def current(self, s: _State):
        return s.x, s.value, s.grad
