"""The one iteration loop: every full-batch minimisation in mlefit runs here.

A solver (:class:`AbstractSolver`) is data: ``init`` builds its state at the start,
``step`` advances it by one step and gives its own verdict (still running, converged by
its own rule, stalled, non-finite), ``current`` reads the iterate ``(x, f(x), grad)``
out of the state. This module owns everything solvers share, written once:

- the gradient stopping rule ``max_j |df/dx_j| <= tol``;
- the step budget ``max_steps`` and a per-call ``limit`` (chunked runs: progress,
  Ctrl-C, one compiled program per chunk);
- best-so-far tracking: a fit that does not converge returns its best finite iterate;
- non-finite values: the status says so, and the iterate stays the last finite one;
- the history of ``f`` per step (the first ``HISTORY_MAX_STEPS`` = 100,000 steps).

The loop works on the flat vector ``x`` of the parameters (``ravel_pytree``), so solvers
are written for vectors. The continue flag is the carried status, computed in the body:
under ``vmap`` a condition that recomputes a float comparison can disagree with the
batch's masking and never stop (``../shared/PITFALLS.md``).
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from ._defaults import HISTORY_MAX_STEPS, RUNNING, STALL_TOL_FACTOR
from ._status import Status

__all__ = ["AbstractSolver", "Carry", "iterate", "iterate_init", "iterate_run", "iterate_finish"]


class AbstractSolver(eqx.Module):
    """A minimiser of ``f: R^p -> R`` as three pure functions of its state.

    - ``init(f, x0) -> state``;
    - ``step(f, state, tol) -> (state, verdict)``, ``verdict`` a :class:`Status` code or
      ``RUNNING``: ``CONVERGED`` (the solver's own rule, e.g. Newton's decrement at
      rounding level), ``STALLED`` (no progress possible), ``NON_FINITE`` (the state
      keeps its last finite iterate), ``INIT_NOT_FINITE`` (``f`` at ``x0`` is not finite;
      only solvers with ``lazy_start``);
    - ``current(state) -> (x, f(x), grad f(x))``, always finite after the start.

    ``lazy_start``: ``init`` does not evaluate ``f``; the loop's first pass does (it
    counts as step 0, not as a step). A solver whose evaluation is expensive to trace
    (a Hessian) traces it once that way. ``monotone``: the current iterate is never
    worse than the best one beyond rounding (in one phase), so a fit returns its current
    iterate (and what the solver knows of it, e.g. its Hessian) unless the best one is
    lower beyond rounding.
    """

    lazy_start: ClassVar[bool] = False
    monotone: ClassVar[bool] = False

    def init(self, f, x0):
        raise NotImplementedError

    def step(self, f, state, tol):
        raise NotImplementedError

    def current(self, state):
        raise NotImplementedError


class Carry(NamedTuple):
    """The loop's state: the solver's, the best finite iterate, step, status, history."""

    state: Any
    best_x: jax.Array
    best_value: jax.Array
    best_grad: jax.Array
    step: jax.Array
    status: jax.Array
    exact: jax.Array  # converged by tol or by the solver's rule (not by the stall factor)
    history: jax.Array | None


def _max_norm(g):
    return jnp.max(jnp.abs(g)) if g.size else jnp.zeros((), g.dtype)


def _finite(*xs):
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in xs]))


def iterate_init(solver: AbstractSolver, f, x0, tol, max_steps: int, record_history: bool) -> Carry:
    """The loop's state before the first step (for ``lazy_start`` solvers: before the
    evaluation of the start)."""
    state = solver.init(f, x0)
    dtype = x0.dtype
    hist = jnp.full((min(max_steps, HISTORY_MAX_STEPS) + 1,), jnp.nan, dtype) if (
        record_history) else None
    if solver.lazy_start:
        inf = jnp.asarray(jnp.inf, dtype)
        zero = jnp.asarray(-1, jnp.int32)
        status = jnp.asarray(RUNNING, jnp.int32)
        return Carry(state, x0, inf, jnp.zeros_like(x0), zero, status, jnp.asarray(False), hist)
    x, value, grad = solver.current(state)
    finite = _finite(value, grad)
    converged = _max_norm(grad) <= tol
    running = jnp.where(max_steps <= 0, Status.MAX_STEPS, RUNNING)
    status = jnp.where(
        ~finite, Status.INIT_NOT_FINITE, jnp.where(converged, Status.CONVERGED, running)
    ).astype(jnp.int32)
    if hist is not None:
        hist = hist.at[0].set(value.astype(dtype))
    best_value = jnp.where(finite, value, jnp.inf)
    return Carry(state, x, best_value, grad, jnp.asarray(0, jnp.int32), status,
                 finite & converged, hist)


def iterate_run(solver: AbstractSolver, f, carry: Carry, tol, max_steps: int, limit) -> Carry:
    """Runs steps while the status is ``RUNNING`` and ``step < limit`` (``limit`` may be
    traced: one compiled program serves every chunk of a long fit)."""

    def body(c: Carry) -> Carry:
        state, verdict = solver.step(f, c.state, tol)
        x, value, grad = solver.current(state)
        step = c.step + 1
        finite = _finite(value, grad)
        better = finite & (value <= c.best_value)
        best_x, best_value, best_grad = jax.tree.map(
            lambda a, b: jnp.where(better, a, b), (x, value, grad),
            (c.best_x, c.best_value, c.best_grad),
        )
        at_tol = finite & (_max_norm(grad) <= tol)
        by_rule = finite & (verdict == Status.CONVERGED)
        stalled = jnp.where(
            _max_norm(best_grad) <= STALL_TOL_FACTOR * tol, Status.CONVERGED, Status.STALLED
        )
        status = jnp.where(
            verdict == Status.INIT_NOT_FINITE, Status.INIT_NOT_FINITE,
            jnp.where(
                verdict == Status.NON_FINITE, Status.NON_FINITE,
                jnp.where(
                    at_tol | by_rule, Status.CONVERGED,
                    jnp.where(
                        verdict == Status.STALLED, stalled,
                        jnp.where(step >= max_steps, Status.MAX_STEPS, RUNNING),
                    ),
                ),
            ),
        ).astype(jnp.int32)
        history = c.history
        if history is not None:
            history = history.at[jnp.maximum(step, 0)].set(
                jnp.where(finite, value, jnp.nan).astype(history.dtype), mode="drop"
            )
        return Carry(state, best_x, best_value, best_grad, step, status, at_tol | by_rule, history)

    return jax.lax.while_loop(lambda c: (c.status == RUNNING) & (c.step < limit), body, carry)


def iterate_finish(solver: AbstractSolver, carry: Carry):
    """``(x, value, grad, steps, status, history)`` of a finished (or paused) loop.

    A fit that converged by the gradient rule or the solver's own returns its last
    iterate (which the status describes); any other its best finite iterate. A loop
    paused between chunks keeps ``RUNNING``.
    """
    x, value, grad = solver.current(carry.state)
    slack = 8 * jnp.finfo(value.dtype).eps * jnp.maximum(jnp.abs(carry.best_value), 1.0)
    close = solver.monotone & (value <= carry.best_value + slack)
    last = carry.exact | (carry.status == Status.INIT_NOT_FINITE) | close
    x, value, grad = jax.tree.map(
        lambda a, b: jnp.where(last, a, b), (x, value, grad),
        (carry.best_x, carry.best_value, carry.best_grad),
    )
    steps = jnp.maximum(carry.step, 0)
    return x, value, grad, steps, carry.status, carry.history


def iterate(solver: AbstractSolver, f, u0, tol, max_steps: int, record_history: bool = False):
    """Minimises ``f`` from the pytree ``u0`` with ``solver`` in one ``lax.while_loop``.

    Returns ``(u, value, grad, steps, status, history)``: ``u`` and ``grad`` with the
    structure of ``u0``; ``status`` a :class:`Status` code; ``history`` the value of
    ``f`` after each step (index 0: the start), NaN-padded to ``max_steps + 1`` (at most
    100,001 entries), or ``None``.

    Example:
        >>> import jax.numpy as jnp
        >>> from mlefit._newton import Newton
        >>> f = lambda u: jnp.sum((u["a"] - 3.0) ** 2)
        >>> u, v, g, steps, status, _ = iterate(Newton(), f, {"a": jnp.zeros(2)}, 1e-9, 50)
        >>> [round(v, 12) for v in u["a"].tolist()], int(status)
        ([3.0, 3.0], 0)
    """
    x0, unravel = ravel_pytree(u0)
    ff = lambda x: f(unravel(x))  # noqa: E731
    carry = iterate_init(solver, ff, x0, tol, max_steps, record_history)
    carry = iterate_run(solver, ff, carry, tol, max_steps, max_steps)
    x, value, grad, steps, status, hist = iterate_finish(solver, carry)
    return unravel(x), value, unravel(grad), steps, status, hist
