"""The stopping rules' constants and the fit defaults, stated once.

Every loop (:mod:`mlefit._iterate`) and solver reads them from here.
"""

from __future__ import annotations

import jax.numpy as jnp

__all__ = [
    "RUNNING", "DEFAULT_MAX_STEPS", "DEFAULT_MAX_STEPS_NEWTON", "DEFAULT_MAX_STEPS_MANY",
    "DEFAULT_MAX_STEPS_MANY_NEWTON", "HISTORY_MAX_STEPS", "NO_PROGRESS_PATIENCE",
    "STALL_TOL_FACTOR", "NEWTON_MAX_REFUSALS", "NEWTON_MAX_PARAMS", "NEWTON_BUDGET",
    "default_tol", "use_newton",
]

# The status code of a fit that is still running (never returned).
RUNNING = -1
# Step budget of a full-batch fit (L-BFGS or an optax optimiser).
DEFAULT_MAX_STEPS = 10_000
# Step budget of Newton (each step evaluates the exact Hessian; refused steps count).
DEFAULT_MAX_STEPS_NEWTON = 1_000
# fit_many: Newton converges in ~3-25 steps when it converges at all (refused steps count
# too); a diverging member (e.g. zero spread) runs to the budget and sets the time for all.
DEFAULT_MAX_STEPS_MANY_NEWTON = 100
# fit_many, L-BFGS budget per member: a batched loop costs as much as its slowest member.
DEFAULT_MAX_STEPS_MANY = 2_000
# The history of a fit records at most this many steps (a buffer of this length + 1 is
# part of the compiled loop's state: max_steps=10**9 must not allocate 8 GB).
HISTORY_MAX_STEPS = 100_000
# Steps in a row without a change of the NLL beyond rounding before a fit stops.
NO_PROGRESS_PATIENCE = 5
# A stalled fit still counts as converged when its gradient is within this factor of tol.
STALL_TOL_FACTOR = 100.0
# Refused Newton steps in a row before the fit counts as stalled (lam grew by 2^(30*31/2)).
NEWTON_MAX_REFUSALS = 30
# The default solver is exact-Hessian Newton when a Hessian is cheap (see use_newton).
NEWTON_MAX_PARAMS = 64
NEWTON_BUDGET = 2e7


def default_tol(dtype) -> float:
    """Default gradient tolerance: ``1e-9`` in float64, ``1e-5`` in float32 (max-norm)."""
    return 1e-9 if jnp.dtype(dtype) == jnp.float64 else 1e-5


def use_newton(n_obs: int, n_params: int) -> bool:
    """The default solver's cost rule: exact-Hessian Newton when ``p <= 64`` and
    ``n * p^2 <= 2e7``, L-BFGS otherwise.

    A Hessian by forward-over-reverse autodiff costs about ``p`` gradients (``n * p^2``
    multiply-adds for a GLM); Newton needs 5-15 of them, L-BFGS 10-50 gradients on a well
    conditioned problem and thousands on a badly conditioned one (ANES96's multinomial
    logit, 944 x 36: 6 Newton steps against 4,750 L-BFGS steps). Below ``2e7`` a
    Hessian takes milliseconds on a CPU core, so Newton is never slow and often far
    faster; above it (the 1e6 x 33 logistic regression: a Hessian 0.15-0.2 s against a
    gradient's 0.04 s) L-BFGS wins. ``n_obs`` is 1 for a fit from sufficient statistics.
    """
    return n_params <= NEWTON_MAX_PARAMS and n_obs * n_params * n_params <= NEWTON_BUDGET
