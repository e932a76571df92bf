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
    "SUBSAMPLE_MIN_WORK", "use_subsampled",
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
# it: p <= SUBSAMPLE_MAX_PARAMS, n >= SUBSAMPLE_MIN_RATIO * m and n p >= SUBSAMPLE_MIN_WORK
# (see use_subsampled).
SUBSAMPLE_PER_PARAM = 20
SUBSAMPLE_MIN_ROWS = 20_000
SUBSAMPLE_MAX_PARAMS = 64
SUBSAMPLE_MIN_RATIO = 10
SUBSAMPLE_MIN_WORK = 8e7


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


def use_subsampled(n_obs: int, n_params: int) -> bool:
    """The default solver's rule for subsampled Newton (:mod:`mlefit._solver_subsampled`):
    ``p <= 64``, ``n >= 10 m`` (``m = subsample_size(n, p)``) and ``n p >= 8e7``.

    Its steps cost one pass over the data each, and it takes 5-7 of them where L-BFGS
    takes 9-11 (measured on 2 cores, float64, steady state: logistic 1e6 x 33 0.25-0.28 s
    against 0.34-0.36 s, 3e6 x 33 0.61-0.68 s against 0.93-1.08 s, 3e5 x 64 0.17 s
    against 0.25 s, Poisson 5e5 x 17 0.074-0.08 s against 0.12-0.13 s). But its program
    compiles in about 0.2-0.3 s more (Newton's loop on the subsample), which the faster
    steps repay in a fresh process's first fit only from ``n p`` of about 8e7
    (``python -m benchmarks.first_fit``, medians of fresh processes, logistic x 33:
    1e6 rows 1.16 s against 1.12 s, 2e6 rows 1.67 s against 1.41 s, 3e6 rows 1.59 s
    against 2.20 s). Below that it is the faster choice for repeated fits of one shape,
    on request (``optimizer="subsampled"``). Tables: ``benchmarks/RESULTS.md``,
    "Subsampled Newton".

    Example:
        >>> use_subsampled(3 * 10**6, 33), use_subsampled(10**6, 33), use_subsampled(10**7, 65)
        (True, False, False)
    """
    m = subsample_size(n_obs, n_params)
    return (n_params <= SUBSAMPLE_MAX_PARAMS and n_obs >= SUBSAMPLE_MIN_RATIO * m
            and n_obs * n_params >= SUBSAMPLE_MIN_WORK)


def default_solver(n_obs: int, n_params: int) -> str:
    """The default solver's cost rule: ``"newton"`` where :func:`use_newton` says a
    Hessian is cheap (``p <= 64`` and ``n p^2 <= 2e7``), ``"subsampled"`` where
    :func:`use_subsampled` says a pass over the data is what a fit costs (``p <= 64``,
    ``n p >= 8e7``), else ``"lbfgs"``. ``n_obs`` is 1 for a fit from sufficient
    statistics (always Newton when ``p <= 64``).

    Example:
        >>> default_solver(1000, 5), default_solver(4 * 10**6, 33), default_solver(10**6, 33)
        ('newton', 'subsampled', 'lbfgs')
    """
    if use_newton(n_obs, n_params):
        return "newton"
    return "subsampled" if use_subsampled(n_obs, n_params) else "lbfgs"
