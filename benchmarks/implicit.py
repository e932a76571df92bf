"""Fits that compose with JAX: the cost of a derivative through a fit, and vmap of the core.

    python benchmarks/implicit.py [--n 100000] [--d 32] [--sets 10000] [--reps 5]

1. ``jax.grad`` through a logistic regression fit (``n x d`` design, derivative of a
   linear function of the coefficients with respect to the design matrix):
   - ``fit (jit)``: the forward fit alone, ``jax.jit`` of ``mlefit.fit`` (traced core);
   - ``fit (concrete)``: ``mlefit.fit`` called as usual (AOT-compiled program);
   - ``grad implicit``: ``jax.jit(jax.grad(...))`` through ``mlefit.fit`` (implicit
     function theorem); its backward part is ``grad - fit (jit)``;
   - ``grad unrolled``: the peers a user without mlefit would write: ``K`` fixed steps of
     optax L-BFGS (unit step, no line search), or of gradient descent (step ``1/L``), in
     ``lax.scan`` on the same mean NLL, differentiated by ``jax.grad`` through the loop
     (``K`` = steps for its gradient to reach the fit's tolerance; at most 200 for
     L-BFGS, 3,000 for gradient descent). Measured: the unrolled optax L-BFGS derivative
     is NaN (its update divides by ``s^T y``, whose derivative is not finite where the
     memory is still empty), so gradient descent is the peer whose numbers compare.
2. ``jax.vmap`` of the core over ``sets`` Gamma data sets of 200 observations against
   ``mlefit.fit_many`` (same estimates).

Steady state: median of ``reps`` calls after a first (compiling) call. Float64, CPU.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import mlefit  # noqa: E402


def steady(fn, *args, reps: int) -> float:
    """Median wall time of ``reps`` calls after one warm-up call (results blocked on)."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def logistic_nll(params, X, y):
    eta = params["intercept"] + X @ params["coef"]
    return jnp.mean(jnp.logaddexp(0.0, eta) - y * eta)


def unrolled(X, y, steps: int):
    """``steps`` L-BFGS steps (unit step, no line search) in ``lax.scan``: a loop that
    ``jax.grad`` differentiates step by step. Returns the parameters and the gradient
    max-norm before each step."""
    opt = optax.lbfgs(learning_rate=1.0, linesearch=None)
    params = {"intercept": jnp.zeros((), X.dtype), "coef": jnp.zeros(X.shape[1], X.dtype)}

    def body(carry, _):
        p, state = carry
        g = jax.grad(logistic_nll)(p, X, y)
        updates, state = opt.update(g, state, p)
        norm = jnp.maximum(jnp.max(jnp.abs(g["coef"])), jnp.abs(g["intercept"]))
        return (optax.apply_updates(p, updates), state), norm

    (p, _), norms = jax.lax.scan(body, (params, opt.init(params)), None, length=steps)
    return p, norms


def unrolled_gd(X, y, steps: int, lr):
    """``steps`` of gradient descent with a fixed step ``lr`` (``1 / L``) in ``lax.scan``;
    returns the coefficients and the gradient max-norm before each step."""
    params = {"intercept": jnp.zeros((), X.dtype), "coef": jnp.zeros(X.shape[1], X.dtype)}

    def body(p, _):
        g = jax.grad(logistic_nll)(p, X, y)
        norm = jnp.maximum(jnp.max(jnp.abs(g["coef"])), jnp.abs(g["intercept"]))
        return jax.tree.map(lambda a, b: a - lr * b, p, g), norm

    p, norms = jax.lax.scan(body, params, None, length=steps)
    return p["coef"], norms


def unrolled_coef(X, y, steps: int):
    return unrolled(X, y, steps)[0]["coef"]


def logistic_part(n: int, d: int, reps: int) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, d)) / np.sqrt(d)
    beta = rng.normal(size=d)
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-(0.2 + X @ beta)))).astype(float)
    X, y = jnp.asarray(X), jnp.asarray(y)
    c = jnp.asarray(rng.normal(size=d))
    model = mlefit.models.Logistic()

    def coef(X):
        return mlefit.fit(model, (X, y)).params["coef"]

    fit_jit = jax.jit(coef)
    grad_implicit = jax.jit(jax.grad(lambda X: jnp.dot(c, coef(X))))
    res = mlefit.fit(model, (np.asarray(X), np.asarray(y)))
    tol = res.tol
    # the unrolled peer's step count: until its gradient is within the fit's tolerance
    norms = np.asarray(jax.jit(unrolled, static_argnums=2)(X, y, 200)[1])
    below = np.flatnonzero(norms <= tol)
    steps = int(below[0]) if below.size else 200
    # gradient descent, step 1 / L with L = max eigenvalue of X1^T X1 / (4 n) (X1 = [1, X])
    X1 = np.column_stack([np.ones(n), np.asarray(X)])
    lr = 4.0 * n / np.linalg.eigvalsh(X1.T @ X1)[-1]
    gd_norms = np.asarray(jax.jit(unrolled_gd, static_argnums=2)(X, y, 3000, lr)[1])
    below = np.flatnonzero(gd_norms <= tol)
    gd_steps = int(below[0]) if below.size else 3000
    grad_gd = jax.jit(jax.grad(lambda X: jnp.dot(c, unrolled_gd(X, y, gd_steps, lr)[0])))
    t_gd = steady(grad_gd, X, reps=reps)
    rel_gd = float(jnp.linalg.norm(grad_implicit(X) - grad_gd(X))
                   / jnp.linalg.norm(grad_implicit(X)))
    fwd_unrolled = jax.jit(lambda X: jnp.dot(c, unrolled_coef(X, y, steps)))
    grad_unrolled = jax.jit(jax.grad(lambda X: jnp.dot(c, unrolled_coef(X, y, steps))))

    t_fit = steady(fit_jit, X, reps=reps)
    t_concrete = steady(lambda X: mlefit.fit(model, (X, y)).params, X, reps=reps)
    t_grad = steady(grad_implicit, X, reps=reps)
    t_unr_fwd = steady(fwd_unrolled, X, reps=reps)
    t_unr = steady(grad_unrolled, X, reps=reps)
    g_imp, g_unr = grad_implicit(X), grad_unrolled(X)
    rel = float(jnp.linalg.norm(g_imp - g_unr) / jnp.linalg.norm(g_imp))
    # the peer's derivative at the fit's own L-BFGS step count (converged to tol)
    k = int(res.steps)
    g_unr_k = jax.jit(jax.grad(lambda X: jnp.dot(c, unrolled_coef(X, y, k))))(X)
    rel_k = float(jnp.linalg.norm(g_imp - g_unr_k) / jnp.linalg.norm(g_imp))
    back = t_grad - t_fit
    print(f"\n## jax.grad through a logistic fit, n = {n}, d = {d} "
          f"(the fit: {int(res.steps)} steps, status {res.status})")
    print(f"{'':34s}{'seconds':>10s}{'ratio':>10s}")
    print(f"{'fit (jit, traced core)':34s}{t_fit:10.4f}{1.0:10.2f}")
    print(f"{'fit (concrete mlefit.fit)':34s}{t_concrete:10.4f}{t_concrete / t_fit:10.2f}")
    print(f"{'grad implicit (fit + backward)':34s}{t_grad:10.4f}{t_grad / t_fit:10.2f}")
    print(f"{'  backward part (grad - fit)':34s}{back:10.4f}{back / t_fit:10.2f}")
    print(f"{f'unrolled L-BFGS fwd ({steps} steps)':34s}{t_unr_fwd:10.4f}"
          f"{t_unr_fwd / t_fit:10.2f}")
    print(f"{f'grad unrolled ({steps} steps)':34s}{t_unr:10.4f}{t_unr / t_fit:10.2f}")
    print(f"{f'grad unrolled GD ({gd_steps} steps)':34s}{t_gd:10.4f}{t_gd / t_fit:10.2f}")
    print(f"grad unrolled L-BFGS / grad implicit: {t_unr / t_grad:.2f}x; "
          f"grad unrolled GD / grad implicit: {t_gd / t_grad:.2f}x")
    print(f"relative difference of the gradients, unrolled GD vs implicit: {rel_gd:.2e}")
    print(f"relative difference of the gradients, unrolled ({steps} steps) vs implicit: "
          f"{rel:.2e}; unrolled {k} steps vs implicit: {rel_k:.2e} "
          "(nan: the unrolled derivative is not finite)")


def gamma_part(sets: int, n: int, reps: int) -> None:
    rng = np.random.default_rng(1)
    X = jnp.asarray(rng.gamma(2.0, 1.5, (sets, n)))
    model = mlefit.models.Gamma()
    core = jax.jit(jax.vmap(lambda x: mlefit.fit(model, x).params))
    t_core = steady(core, X, reps=reps)
    t_many = steady(lambda X: mlefit.fit_many(model, X).params, X, reps=reps)
    a, b = core(X), mlefit.fit_many(model, X).params
    diff = max(float(jnp.max(jnp.abs(a[k] - b[k]) / jnp.abs(b[k]))) for k in a)
    print(f"\n## {sets} Gamma fits of {n} observations")
    print(f"{'':34s}{'seconds':>10s}{'ratio':>10s}")
    print(f"{'fit_many':34s}{t_many:10.4f}{1.0:10.2f}")
    print(f"{'jax.jit(jax.vmap(fit core))':34s}{t_core:10.4f}{t_core / t_many:10.2f}")
    print(f"max relative difference of the estimates: {diff:.1e}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--d", type=int, default=32)
    ap.add_argument("--sets", type=int, default=10_000)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args(argv)
    print(f"mlefit from {mlefit.__file__}; jax {jax.__version__}, {jax.default_backend()}")
    logistic_part(args.n, args.d, args.reps)
    gamma_part(args.sets, 200, args.reps)


if __name__ == "__main__":
    main()
