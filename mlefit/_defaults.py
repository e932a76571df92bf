"""The stopping rules' constants and the fit defaults, stated once.

Every loop (:mod:`mlefit._iterate`) and solver reads them from here.
"""

from __future__ import annotations

import jax.numpy as jnp

__all__ = [
    "RUNNING", "DEFAULT_MAX_STEPS", "DEFAULT_MAX_STEPS_NEWTON", "DEFAULT_MAX_STEPS_MANY",
    "DEFAULT_MAX_STEPS_MANY_NEWTON", "HISTORY_MAX_STEPS", "NO_PROGRESS_PATIENCE",
    "STALL_TOL_FACTOR", "NEWTON_MAX_REFUSALS", "NEWTON_MAX_PARAMS", "NEWTON_BUDGET",
    "SUBSAMPLE_PER_PARAM", "SUBSAMPLE_MIN_ROWS", "SUBSAMPLE_MAX_PARAMS", "SUBSAMPLE_MIN_RATIO",
    "default_tol", "use_newton", "subsample_size", "default_solver",
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
# Subsampled Newton (mlefit._solver_subsampled): the subsample's size rule
# m = min(n, max(SUBSAMPLE_PER_PARAM * p, SUBSAMPLE_MIN_ROWS)), and where the default uses
# it: p <= SUBSAMPLE_MAX_PARAMS and n >= SUBSAMPLE_MIN_RATIO * m (see default_solver).
SUBSAMPLE_PER_PARAM = 20
SUBSAMPLE_MIN_ROWS = 20_000
SUBSAMPLE_MAX_PARAMS = 64
SUBSAMPLE_MIN_RATIO = 4


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


def subsample_size(n_obs: int, n_params: int, per_param: int = SUBSAMPLE_PER_PARAM,
                   min_rows: int = SUBSAMPLE_MIN_ROWS) -> int:
    """Rows of the subsample whose Hessian gives the subsampled Newton solver its curvature:
    ``m = min(n, max(per_param * p, min_rows))``.

    The relative error of a subsample Hessian shrinks like ``sqrt(p / m)``; each full pass
    of the solver contracts the error of the estimate by about that factor, so
    ``m >= 20 p`` (and at least 20,000 rows) gives 5-7 passes to ``tol`` on the GLMs of
    the benchmarks, while a Hessian of the subsample (``m p^2`` multiply-adds, matrix
    products) costs a fraction of a pass over ``n >= 4 m`` rows.

    Example:
        >>> subsample_size(10**6, 33), subsample_size(10**6, 2000), subsample_size(5000, 33)
        (20000, 40000, 5000)
    """
    return int(min(n_obs, max(per_param * n_params, min_rows)))


def default_solver(n_obs: int, n_params: int) -> str:
    """The default solver's cost rule: ``"newton"`` where :func:`use_newton` says a
    Hessian is cheap (``p <= 64`` and ``n * p^2 <= 2e7``), else ``"lbfgs"``.

    Subsampled Newton (:mod:`mlefit._solver_subsampled`, ``optimizer="subsampled"``:
    curvature from the exact Hessian of ``m = subsample_size(n, p)`` rows, one full pass
    per step) is not chosen by default. Measured (2 cores, loaded, float64, steady state,
    subsampled against L-BFGS, full passes in parentheses): logistic 1e6 x 33 6 steps
    (7 passes) against 10 steps (about 11 passes), but the same time within the machine's
    noise at 2e5 x 33 (0.28 s against 0.31 s), 8e4 x 33 (0.062 s against 0.060 s) and
    Poisson 1e5 x 17 (0.10 s against 0.10 s); 2e5 x 129 3.0 s against 1.1 s; and its
    program compiles in twice the time (1.8 s against 0.9 s of XLA's CPU time for a
    1e5 x 33 logistic fit: the subsample's Newton loop is a second loop in the program),
    which breaks the suite's compile-under-1-s rule. ``n_obs`` is 1 for a fit from
    sufficient statistics (always Newton when ``p <= 64``).
    """
    return "newton" if use_newton(n_obs, n_params) else "lbfgs"
