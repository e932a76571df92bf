"""The hand-written JAX peers: what a JAX user writes without mlefit.

Both minimise ``loss(w, *data)`` (a vectorised mean NLL, differentiated by plain
``jax.value_and_grad``) with optax's L-BFGS as it comes (memory 10, zoom line search;
mlefit's default swaps the line search for its own weak-Wolfe bisection) and stop when
``max|grad| <= tol`` or when the loss stops changing (``|f_k - f_{k-1}| <= 4 eps |f_k|``
twice in a row: without it a loop that reached the optimum to rounding keeps
line-searching until its step budget).

- :func:`python_loop`: a Python ``for`` loop over one jitted L-BFGS step; the stopping
  test reads the gradient norm back to the host every step.
- :func:`fused_loop`: the whole fit in one ``lax.while_loop`` under one ``jit``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

MAX_STEPS = 2000
_PATIENCE = 2


def _max_norm(tree):
    return jnp.max(jnp.stack([jnp.max(jnp.abs(x)) for x in jax.tree_util.tree_leaves(tree)]))


def python_loop(loss, tol: float, max_steps: int = MAX_STEPS):
    """``run(w0, *data) -> (w, steps)``: Python loop over a jitted optax L-BFGS step."""
    opt = optax.lbfgs()

    @jax.jit
    def start(w0, *data):
        value, grad = jax.value_and_grad(loss)(w0, *data)
        return opt.init(w0), value, grad

    @jax.jit
    def step(w, state, value, grad, *data):
        f = lambda v: loss(v, *data)  # noqa: E731
        updates, state = opt.update(grad, state, w, value=value, grad=grad, value_fn=f)
        w = optax.apply_updates(w, updates)
        new_value, grad = optax.value_and_grad_from_state(f)(w, state=state)
        eps = jnp.finfo(new_value.dtype).eps
        same = jnp.abs(new_value - value) <= 4 * eps * jnp.abs(new_value)
        return w, state, new_value, grad, _max_norm(grad), same

    def run(w0, *data):
        state, value, grad = start(w0, *data)
        w, k, flat = w0, 0, 0
        gnorm = float(_max_norm(grad))
        while gnorm > tol and k < max_steps and flat < _PATIENCE:
            w, state, value, grad, gn, same = step(w, state, value, grad, *data)
            gnorm, k = float(gn), k + 1
            flat = flat + 1 if bool(same) else 0
        return w, k

    return run


def fused_loop(loss, tol: float, max_steps: int = MAX_STEPS):
    """``run(w0, *data) -> (w, steps)``: the whole L-BFGS fit in one ``lax.while_loop``."""
    opt = optax.lbfgs()

    @jax.jit
    def run(w0, *data):
        f = lambda v: loss(v, *data)  # noqa: E731
        vg = optax.value_and_grad_from_state(f)
        value, grad = jax.value_and_grad(f)(w0)
        eps = jnp.finfo(value.dtype).eps

        def cond(c):
            return c[-1]

        def body(c):
            w, state, value, grad, k, flat, _ = c
            updates, state = opt.update(grad, state, w, value=value, grad=grad, value_fn=f)
            w = optax.apply_updates(w, updates)
            new_value, grad = vg(w, state=state)
            flat = jnp.where(jnp.abs(new_value - value) <= 4 * eps * jnp.abs(new_value),
                             flat + 1, 0)
            k = k + 1
            go = (_max_norm(grad) > tol) & (k < max_steps) & (flat < _PATIENCE)
            return w, state, new_value, grad, k, flat, go

        go0 = _max_norm(grad) > tol
        c = (w0, opt.init(w0), value, grad, jnp.asarray(0), jnp.asarray(0), go0)
        w, _, _, _, k, _, _ = jax.lax.while_loop(cond, body, c)
        return w, k

    return run
