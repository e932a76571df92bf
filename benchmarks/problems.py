"""The benchmark problems: one function per problem, each returning table rows.

Every function takes the run's :class:`Config` and returns a list of
:class:`~benchmarks.harness.Row`. Peers are run with a stopping rule as close to
mlefit's as each allows (max-norm of the gradient of the mean NLL <= 1e-9 in float64);
where a peer is usually run with its defaults, a second row shows that too.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings

import jax
import jax.flatten_util
import jax.numpy as jnp
import jax.scipy.stats as jst
import numpy as np
import scipy.optimize
import scipy.special
import scipy.stats

import mlefit
import mlefit._defaults

from . import hand
from .harness import Outcome, Row, measure, timed

TOL64 = 1e-9
TOL32 = 1e-5


@dataclasses.dataclass
class Config:
    reps: int = 3  # steady-state calls per tool (new data, same shape)
    slow_reps: int = 1  # for peers that take seconds per call
    n_gauss: int = 1_000_000
    n_logistic: int = 1_000_000
    n_softmax: int = 200_000
    n_poisson: int = 500_000
    n_sets: int = 10_000  # problem 5: data sets
    n_per_set: int = 200
    loop_sets: int | None = None  # looping peers of problem 5 run on this many sets
    n_memory: int = 10_000_000  # problem 2 at float32, peak memory
    statsmodels_softmax: bool = False  # 60-400 s per call on 2 cores: opt-in, one call
    cpu_peers_at_scale: bool = True
    memory: bool = True
    cache: bool = True
    gpu: bool = False


def _scipy_opts(gtol=TOL64):
    # L-BFGS-B stops on the projected gradient max-norm (gtol) or a relative decrease
    # below ftol * eps; ftol tiny so that it stops on the same test as mlefit.
    return {"gtol": gtol, "ftol": 1e-15, "maxiter": 5000, "maxcor": 10}


def _np(x):
    return np.asarray(x, dtype=np.float64)


def _optimizer_converged(res) -> np.ndarray:
    # The optimiser's own verdict: res.status / res.converged also run the inference
    # checks (an exact Hessian), which a fit's timing must not include.
    return np.asarray(res.status_code) == int(mlefit.Status.CONVERGED)


def _mlefit_rows_note(res) -> str:
    if _optimizer_converged(res).all():
        return ""
    return f"optimizer status {mlefit.Status(int(np.asarray(res.status_code)))}"


def _steps_and_passes(res, data, kw) -> int | str:
    """``steps``, or ``"steps (passes)"`` where the solver makes one full pass over the data
    per step (subsampled Newton: the start's pass plus one per step)."""
    steps = int(res.steps)
    p = int(np.asarray(jax.flatten_util.ravel_pytree(res.u)[0]).size)
    n = int(np.shape(data[0] if isinstance(data, tuple) else data)[0])
    chosen = kw.get("optimizer")
    if chosen == "subsampled" or (chosen is None and mlefit._defaults.default_solver(n, p)
                                  == "subsampled"):
        return f"{steps} ({steps + 1} passes)"
    return steps


def _run_mlefit(model, init, **kw):
    def run(data):
        res = mlefit.fit(model, data, init, **kw)
        params = jax.tree.map(np.asarray, res.params)
        return Outcome(params, _steps_and_passes(res, data, kw),
                       {"note": _mlefit_rows_note(res), "res": res})

    return run


def _as_jax(*arrays):
    # Blocked on: device_put is asynchronous, and the first timed call would otherwise
    # wait for the copy (0.2 s for a 264 MB design matrix).
    return jax.block_until_ready(tuple(jax.device_put(a) for a in arrays))


# --------------------------------------------------------------------------------------
# 1. Gaussian


def gauss(cfg: Config) -> list[Row]:
    n = cfg.n_gauss
    name = f"1. Gaussian N={n:.0e}"
    print(name, flush=True)
    ra, rb = np.random.default_rng(1), np.random.default_rng(2)
    xa, xb = ra.normal(1.5, 2.5, n), rb.normal(1.5, 2.5, n)
    ja, jb = _as_jax(xa, xb)

    def nll(p, x):
        mu, sigma = float(p["mu"]), float(p["sigma"])
        return 0.5 * np.log(2 * np.pi) + np.log(sigma) + np.mean((x - mu) ** 2) / (2 * sigma**2)

    rows = []
    init = {"mu": 0.0, "sigma": mlefit.Positive(1.0)}
    run = _run_mlefit(gauss_normal_logp, init)
    rows.append(_row(name, "mlefit.fit", run, ja, jb, nll, cfg.reps, True, xa, is_ref=True))

    def closed(x):
        return Outcome({"mu": x.mean(), "sigma": x.std()}, "closed form")

    rows.append(measure(name, "closed form (NumPy mean, std): the floor", closed, xa, xb, nll,
                        reps=cfg.reps, compiles=False))

    def scipy_run(x):
        def fg(t):
            mu, s = t
            d = x - mu
            m2 = np.mean(d * d)
            e = np.exp(-2 * s)
            f = 0.5 * np.log(2 * np.pi) + s + 0.5 * m2 * e
            return f, np.array([-np.mean(d) * e, 1.0 - m2 * e])

        r = scipy.optimize.minimize(fg, np.zeros(2), jac=True, method="L-BFGS-B",
                                    options=_scipy_opts())
        return Outcome({"mu": r.x[0], "sigma": np.exp(r.x[1])}, int(r.nit))

    rows.append(measure(name, "scipy L-BFGS-B, NumPy gradient", scipy_run, xa, xb, nll,
                        reps=cfg.reps, compiles=False))

    try:
        from iminuit import Minuit

        def minuit_run(x):
            def f(mu, s):
                return x.size * (0.5 * np.log(2 * np.pi) + s + 0.5 * np.mean((x - mu) ** 2)
                                 * np.exp(-2 * s))

            def g(mu, s):
                d = x - mu
                m2, e = np.mean(d * d), np.exp(-2 * s)
                return x.size * np.array([-np.mean(d) * e, 1.0 - m2 * e])

            m = Minuit(f, mu=0.0, s=0.0, grad=g)
            m.errordef = Minuit.LIKELIHOOD
            m.migrad()
            return Outcome({"mu": m.values["mu"], "sigma": np.exp(m.values["s"])},
                           int(m.fmin.nfcn))

        rows.append(measure(name, "iminuit migrad, NumPy gradient (steps = calls)", minuit_run,
                            xa, xb, nll, reps=cfg.reps, compiles=False))
    except ImportError:
        pass

    def loss(t, x):
        return -jnp.mean(jst.norm.logpdf(x, t[0], jnp.exp(t[1])))

    def wrap(loop):
        def run(x):
            t, k = loop(jnp.zeros(2, x.dtype), x)
            t = np.asarray(t)
            return Outcome({"mu": t[0], "sigma": np.exp(t[1])}, int(k))

        return run

    rows.append(_row(name, "hand JAX: Python loop over jitted optax L-BFGS step",
                     wrap(hand.python_loop(loss, TOL64)), ja, jb, nll, cfg.reps, True, xa))
    rows.append(_row(name, "hand JAX: optax L-BFGS in one lax.while_loop",
                     wrap(hand.fused_loop(loss, TOL64)), ja, jb, nll, cfg.reps, True, xa))
    return rows


def gauss_normal_logp(p, x):
    return jst.norm.logpdf(x, p["mu"], p["sigma"])


def gauss_fit_once(x):
    """One Gaussian fit as a user writes it (cache probe); returns a finisher giving
    ``(mean NLL, steps)``, called after the clock stops."""
    res = mlefit.fit(gauss_normal_logp, x, {"mu": 0.0, "sigma": mlefit.Positive(1.0)})
    jax.block_until_ready(res.params)
    return lambda: (float(res.nll), int(res.steps))


def _row(name, tool, run, a, b, nll, reps, compiles, host_a, is_ref=False, note=""):
    row = measure(name, tool, run, a, b, nll, reps=reps, compiles=compiles, is_ref=is_ref,
                  host_data_a=host_a, note=note)
    extra_note = getattr(row, "extra", {}).get("note", "")
    if extra_note:
        row.note = (row.note + "; " if row.note else "") + extra_note
    return row


# --------------------------------------------------------------------------------------
# 2. Logistic regression


def logistic_data(n, d=32, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    w = np.random.default_rng(123).normal(0.0, 0.3, d + 1)
    X = np.empty((n, d + 1), dtype)
    X[:, 0] = 1.0
    X[:, 1:] = rng.standard_normal((n, d), dtype=np.float32 if dtype == np.float32
                                   else np.float64)
    z = X @ w.astype(dtype)
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-z))).astype(dtype)
    return X, y


def logistic_nll(w, data):
    X, y = data
    z = X @ _np(w)
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def logistic_logp(w, x, y):
    """The model as a user writes it: the log-likelihood of ONE observation."""
    z = x @ w
    return y * z - jnp.logaddexp(0.0, z)


def _logistic_loss(w, X, y):
    z = X @ w
    return jnp.mean(jnp.logaddexp(0.0, z) - y * z)


def logistic(cfg: Config, dtype=np.float64) -> list[Row]:
    n = cfg.n_logistic
    f32 = dtype == np.float32
    name = f"2. Logistic N={n:.0e} d=33" + (" float32" if f32 else "")
    print(name, flush=True)
    A, B = logistic_data(n, seed=1, dtype=dtype), logistic_data(n, seed=2, dtype=dtype)
    Ah = tuple(_np(a) for a in A) if f32 else A
    ja, jb = _as_jax(*A), _as_jax(*B)
    tol = TOL32 if f32 else TOL64
    d = A[0].shape[1]
    rows = []
    run = _run_mlefit(logistic_logp, jnp.zeros(d, dtype))
    rows.append(_row(name, "mlefit.fit", run, ja, jb, logistic_nll, cfg.reps, True, Ah,
                     is_ref=True))

    def hand_run(loop):
        def run(data):
            w, k = loop(jnp.zeros(d, dtype), *data)
            return Outcome(np.asarray(w), int(k))

        return run

    if not f32:
        rows.append(_row(name, "hand JAX: Python loop over jitted optax L-BFGS step",
                         hand_run(hand.python_loop(_logistic_loss, tol)), ja, jb, logistic_nll,
                         cfg.reps, True, Ah))
    rows.append(_row(name, "hand JAX: optax L-BFGS in one lax.while_loop",
                     hand_run(hand.fused_loop(_logistic_loss, tol)), ja, jb, logistic_nll,
                     cfg.reps, True, Ah))
    if cfg.gpu and not cfg.cpu_peers_at_scale:
        return rows
    slow = cfg.slow_reps if cfg.gpu else cfg.reps
    try:
        from sklearn.linear_model import LogisticRegression

        def sk(tol_sk):
            def run(data):
                X, y = data
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    m = LogisticRegression(penalty=None, solver="lbfgs", fit_intercept=False,
                                           tol=tol_sk, max_iter=5000).fit(X, y)
                return Outcome(m.coef_.ravel(), int(np.max(m.n_iter_)))

            return run

        rows.append(measure(name, "scikit-learn LogisticRegression lbfgs (defaults, tol=1e-4)",
                            sk(1e-4), A, B, logistic_nll, reps=slow, compiles=False,
                            host_data_a=Ah))
        rows.append(measure(name, f"scikit-learn LogisticRegression lbfgs tol={tol:g}",
                            sk(tol), A, B, logistic_nll, reps=slow, compiles=False,
                            host_data_a=Ah))
    except ImportError:
        pass
    if f32:
        return rows
    import statsmodels.api as sm

    def sm_run(data):
        X, y = data
        r = sm.Logit(y, X).fit(disp=0)
        return Outcome(np.asarray(r.params), int(r.mle_retvals["iterations"]))

    rows.append(measure(name, "statsmodels Logit (Newton)", sm_run, A, B, logistic_nll,
                        reps=cfg.slow_reps, compiles=False))

    def scipy_run(data):
        X, y = data

        def fg(w):
            z = X @ w
            r = (1.0 / (1.0 + np.exp(-z)) - y) / len(y)
            return np.mean(np.logaddexp(0.0, z) - y * z), X.T @ r

        r = scipy.optimize.minimize(fg, np.zeros(d), jac=True, method="L-BFGS-B",
                                    options=_scipy_opts())
        return Outcome(r.x, f"{int(r.nit)} ({int(r.nfev)} passes)")

    rows.append(measure(name, "scipy L-BFGS-B, NumPy gradient", scipy_run, A, B, logistic_nll,
                        reps=slow, compiles=False))
    return rows


def logistic32(cfg: Config) -> list[Row]:
    return logistic(cfg, np.float32)


# --------------------------------------------------------------------------------------
# 3. Softmax regression


def softmax_data(n, d=64, k=10, seed=0):
    rng = np.random.default_rng(seed)
    W = np.random.default_rng(321).normal(0.0, 0.15, (d + 1, k))
    X = np.empty((n, d + 1))
    X[:, 0] = 1.0
    X[:, 1:] = rng.standard_normal((n, d))
    logits = X @ W + rng.gumbel(size=(n, k))
    return X, np.argmax(logits, axis=1).astype(np.int32)


def softmax_nll(W, data):
    X, y = data
    Z = X @ _np(W)
    return float(np.mean(scipy.special.logsumexp(Z, axis=1) - Z[np.arange(len(y)), y]))


def softmax_logp(W, x, y):
    return jax.nn.log_softmax(x @ W)[y]


def softmax(cfg: Config) -> list[Row]:
    n, k = cfg.n_softmax, 10
    name = f"3. Softmax N={n:.0e} d=65 K={k}"
    print(name, flush=True)
    A, B = softmax_data(n, seed=1), softmax_data(n, seed=2)
    ja, jb = _as_jax(*A), _as_jax(*B)
    d = A[0].shape[1]
    rows = []
    rows.append(_row(name, "mlefit.fit", _run_mlefit(softmax_logp, jnp.zeros((d, k))), ja, jb,
                     softmax_nll, cfg.reps, True, A, is_ref=True))

    def loss(W, X, y):
        Z = X @ W
        return jnp.mean(jax.nn.logsumexp(Z, axis=1) - jnp.take_along_axis(Z, y[:, None], 1)[:, 0])

    fused = hand.fused_loop(loss, TOL64)

    def hand_run(data):
        W, s = fused(jnp.zeros((d, k)), *data)
        return Outcome(np.asarray(W), int(s))

    rows.append(_row(name, "hand JAX: optax L-BFGS in one lax.while_loop", hand_run, ja, jb,
                     softmax_nll, cfg.reps, True, A))
    if cfg.gpu and not cfg.cpu_peers_at_scale:
        return rows
    slow = cfg.slow_reps
    try:
        from sklearn.linear_model import LogisticRegression

        def sk(tol_sk):
            def run(data):
                X, y = data
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    m = LogisticRegression(penalty=None, solver="lbfgs", fit_intercept=False,
                                           tol=tol_sk, max_iter=5000).fit(X, y)
                return Outcome(m.coef_.T, int(np.max(m.n_iter_)))

            return run

        rows.append(measure(name, "scikit-learn multinomial lbfgs (defaults, tol=1e-4)",
                            sk(1e-4), A, B, softmax_nll, reps=slow, compiles=False))
        rows.append(measure(name, "scikit-learn multinomial lbfgs tol=1e-9", sk(TOL64), A, B,
                            softmax_nll, reps=slow, compiles=False))
    except ImportError:
        pass

    def scipy_run(data):
        X, y = data
        Y = np.zeros((len(y), k))
        Y[np.arange(len(y)), y] = 1.0

        def fg(w):
            W = w.reshape(d, k)
            Z = X @ W
            lse = scipy.special.logsumexp(Z, axis=1)
            P = np.exp(Z - lse[:, None])
            return np.mean(lse - Z[np.arange(len(y)), y]), (X.T @ (P - Y) / len(y)).ravel()

        r = scipy.optimize.minimize(fg, np.zeros(d * k), jac=True, method="L-BFGS-B",
                                    options=_scipy_opts())
        return Outcome(r.x.reshape(d, k), f"{int(r.nit)} ({int(r.nfev)} passes)")

    rows.append(measure(name, "scipy L-BFGS-B, NumPy gradient", scipy_run, A, B, softmax_nll,
                        reps=slow, compiles=False))
    if cfg.statsmodels_softmax:
        import statsmodels.api as sm

        def sm_run(data):
            X, y = data
            r = sm.MNLogit(y, X).fit(disp=0)
            W = np.concatenate([np.zeros((d, 1)), np.asarray(r.params)], axis=1)
            return Outcome(W, int(r.mle_retvals["iterations"]))

        rows.append(measure(name, "statsmodels MNLogit (Newton; one call)", sm_run, A, B,
                            softmax_nll, reps=0, compiles=False,
                            note="one call: first = steady"))
    return rows


# --------------------------------------------------------------------------------------
# 4. Poisson regression


def poisson_data(n, d=16, seed=0):
    rng = np.random.default_rng(seed)
    beta = np.random.default_rng(77).normal(0.0, 0.2, d + 1)
    beta[0] = 0.5
    X = np.empty((n, d + 1))
    X[:, 0] = 1.0
    X[:, 1:] = rng.standard_normal((n, d))
    return X, rng.poisson(np.exp(X @ beta)).astype(np.float64)


def poisson_nll(b, data):
    X, y = data
    eta = X @ _np(b)
    return float(np.mean(np.exp(eta) - y * eta + scipy.special.gammaln(y + 1.0)))


def poisson_logp(b, x, y):
    eta = x @ b
    return y * eta - jnp.exp(eta) - jax.scipy.special.gammaln(y + 1.0)


def poisson(cfg: Config) -> list[Row]:
    n = cfg.n_poisson
    name = f"4. Poisson N={n:.0e} d=17"
    print(name, flush=True)
    A, B = poisson_data(n, seed=1), poisson_data(n, seed=2)
    ja, jb = _as_jax(*A), _as_jax(*B)
    d = A[0].shape[1]
    rows = []
    rows.append(_row(name, "mlefit.fit", _run_mlefit(poisson_logp, jnp.zeros(d)), ja, jb,
                     poisson_nll, cfg.reps, True, A, is_ref=True))

    def loss(b, X, y):
        eta = X @ b
        return jnp.mean(jnp.exp(eta) - y * eta + jax.scipy.special.gammaln(y + 1.0))

    fused = hand.fused_loop(loss, TOL64)

    def hand_run(data):
        b, s = fused(jnp.zeros(d), *data)
        return Outcome(np.asarray(b), int(s))

    rows.append(_row(name, "hand JAX: optax L-BFGS in one lax.while_loop", hand_run, ja, jb,
                     poisson_nll, cfg.reps, True, A))
    if cfg.gpu and not cfg.cpu_peers_at_scale:
        return rows
    slow = cfg.slow_reps if cfg.gpu else cfg.reps
    try:
        from sklearn.linear_model import PoissonRegressor

        def sk(solver, tol_sk):
            def run(data):
                X, y = data
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    m = PoissonRegressor(alpha=0.0, solver=solver, fit_intercept=False,
                                         tol=tol_sk, max_iter=5000).fit(X, y)
                return Outcome(m.coef_, int(m.n_iter_))

            return run

        for solver in ("lbfgs", "newton-cholesky"):
            rows.append(measure(name, f"scikit-learn PoissonRegressor {solver} (tol=1e-4)",
                                sk(solver, 1e-4), A, B, poisson_nll, reps=slow,
                                compiles=False))
            rows.append(measure(name, f"scikit-learn PoissonRegressor {solver} tol=1e-9",
                                sk(solver, TOL64), A, B, poisson_nll, reps=slow,
                                compiles=False))
    except ImportError:
        pass
    import statsmodels.api as sm

    def sm_run(data):
        X, y = data
        r = sm.GLM(y, X, family=sm.families.Poisson()).fit()
        return Outcome(np.asarray(r.params), int(r.fit_history["iteration"]))

    rows.append(measure(name, "statsmodels GLM Poisson (IRLS)", sm_run, A, B, poisson_nll,
                        reps=cfg.slow_reps, compiles=False))

    def scipy_run(data):
        X, y = data

        def fg(b):
            eta = X @ b
            mu = np.exp(eta)
            return np.mean(mu - y * eta), X.T @ ((mu - y) / len(y))

        r = scipy.optimize.minimize(fg, np.zeros(d), jac=True, method="L-BFGS-B",
                                    options=_scipy_opts())
        return Outcome(r.x, f"{int(r.nit)} ({int(r.nfev)} passes)")

    rows.append(measure(name, "scipy L-BFGS-B, NumPy gradient", scipy_run, A, B, poisson_nll,
                        reps=slow, compiles=False))
    return rows


# --------------------------------------------------------------------------------------
# 5. Many small fits: Gamma shape and scale of 10,000 data sets


def gamma_data(sets, n, seed=0):
    rng = np.random.default_rng(seed)
    shape = rng.uniform(0.5, 5.0, sets)[:, None]
    scale = rng.uniform(0.5, 3.0, sets)[:, None]
    return rng.gamma(shape, scale, (sets, n))


def gamma_nll_per_set(p, X):
    a, s = _np(p["shape"])[:, None], _np(p["scale"])[:, None]
    return -np.mean((a - 1) * np.log(X) - X / s - scipy.special.gammaln(a) - a * np.log(s), 1)


def gamma_nll(p, X):
    """Mean over data sets of each set's mean NLL."""
    return float(np.mean(gamma_nll_per_set(p, X)))


def gamma_logp(p, x):
    return jst.gamma.logpdf(x, p["shape"], scale=p["scale"])


def gamma_fit_once(X):
    """``fit_many`` of the Gamma model over the rows of ``X`` (cache probe); returns a
    finisher giving ``(mean NLL, max steps)``, called after the clock stops."""
    from mlefit.models import Gamma

    if getattr(mlefit, "fit_many", None) is None:
        p, steps = _fit_many_fallback(X)
    else:
        res = mlefit.fit_many(Gamma(), X)
        p, steps = res.params, res.steps
    jax.block_until_ready(p)
    return lambda: (gamma_nll(p, np.asarray(X)), int(np.max(np.asarray(steps))))


def _fit_many_fallback(X):
    """``jax.vmap`` of mlefit's compiled loop, for when ``mlefit.fit_many`` is missing."""
    from mlefit._constraints import constrain, split_init
    from mlefit._iterate import iterate
    from mlefit._objective import objective
    from mlefit._solver_optax import OptaxSolver, default_optimizer

    u0, tr = split_init({"shape": mlefit.Positive(1.0), "scale": mlefit.Positive(1.0)},
                        jnp.float64)

    @jax.jit
    def run(X):
        def one(x):
            f = objective(gamma_logp, tr, (x,), None)
            u, _, _, steps, _, _ = iterate(OptaxSolver(default_optimizer()), f, u0, TOL64,
                                           1000)
            return constrain(u, tr), steps

        return jax.vmap(one)(X)

    return run(X)


def gamma_many(cfg: Config) -> list[Row]:
    sets, n = cfg.n_sets, cfg.n_per_set
    name = f"5. Gamma x {sets:,} data sets of {n}"
    print(name, flush=True)
    A, B = gamma_data(sets, n, 1), gamma_data(sets, n, 2)
    ja, jb = _as_jax(A, B)
    rows = []
    fit_many = getattr(mlefit, "fit_many", None)
    if fit_many is not None:
        from mlefit.models import Gamma

        def run(X):
            res = fit_many(Gamma(), X)
            conv = _optimizer_converged(res)
            p = jax.tree.map(np.asarray, res.params)
            note = "" if conv.all() else f"{int((~conv).sum())} not converged"
            return Outcome(p, int(np.max(np.asarray(res.steps))), {"note": note})

        rows.append(_row(name, "mlefit.fit_many(models.Gamma()) (steps = max)", run, ja, jb,
                         gamma_nll, cfg.reps, True, A, is_ref=True))

        def run_generic(X):
            res = fit_many(gamma_logp, X, {"shape": mlefit.Positive(1.0),
                                           "scale": mlefit.Positive(1.0)})
            conv = _optimizer_converged(res)
            p = jax.tree.map(np.asarray, res.params)
            note = "" if conv.all() else f"{int((~conv).sum())} not converged"
            return Outcome(p, int(np.max(np.asarray(res.steps))), {"note": note})

        rows.append(_row(name, "mlefit.fit_many(user log_prob, start 1, 1)", run_generic, ja,
                         jb, gamma_nll, cfg.reps, True, A))
    else:
        def run_fb(X):
            p, steps = _fit_many_fallback(X)
            return Outcome(jax.tree.map(np.asarray, p), int(np.max(steps)))

        rows.append(_row(name, "jax.vmap(mlefit iterate) (fit_many missing)", run_fb,
                         ja, jb, gamma_nll, cfg.reps, True, A, is_ref=True))

    m = cfg.loop_sets or sets
    scale = sets / m
    note = "" if m == sets else f"looped over {m:,} sets, time x{scale:g}"

    def looped(fit_one, label):
        def run(X):
            out = [fit_one(x) for x in X[:m]]
            a = np.array([o[0] for o in out])
            s = np.array([o[1] for o in out])
            steps = int(sum(o[2] for o in out))
            return Outcome({"shape": a, "scale": s}, f"{steps} total")

        row = measure(name, label, run, A, B, None, reps=cfg.slow_reps, compiles=False,
                      note=note)
        row.first_s *= scale
        row.steady_s *= scale
        # NLL per set against mlefit's fit of the same sets (the reference row).
        peer = gamma_nll_per_set(row.params, A[:m])
        if m == sets:
            row.nll = float(np.mean(peer))
        ref = next((r for r in rows if r.is_ref), None)
        if ref is not None:
            mine = gamma_nll_per_set(jax.tree.map(lambda v: np.asarray(v)[:m], ref.params),
                                     A[:m])
            excess = np.max((peer - mine) / np.abs(mine))
            row.note = (row.note + "; " if row.note else "") + (
                f"worst set's NLL vs mlefit's: {excess:+.1e} rel.")
        return row

    def scipy_gamma(x):
        a, _, s = scipy.stats.gamma.fit(x, floc=0)
        return a, s, 1

    def generic(x):
        mx, mlx = x.mean(), np.log(x).mean()

        def fg(t):
            a, s = np.exp(t)
            f = -(a - 1) * np.mean(np.log(x)) + np.mean(x) / s + scipy.special.gammaln(a) \
                + a * np.log(s)
            ga = a * (-np.mean(np.log(x)) + scipy.special.digamma(a) + np.log(s))
            gs = -np.mean(x) / s + a
            return f, np.array([ga, gs])

        v = x.var()
        r = scipy.optimize.minimize(fg, np.log([mx * mx / v, v / mx]), jac=True,
                                    method="L-BFGS-B", options=_scipy_opts())
        del mlx
        return np.exp(r.x[0]), np.exp(r.x[1]), r.nit

    rows.append(looped(scipy_gamma, "scipy.stats.gamma.fit(floc=0) loop (special-cased)"))
    rows.append(looped(generic, "scipy.optimize L-BFGS-B loop, NumPy gradient"))
    try:
        from iminuit import Minuit

        def minuit_one(x):
            lx, mx, nx = np.mean(np.log(x)), np.mean(x), x.size

            def f(la, ls):
                a, s = np.exp(la), np.exp(ls)
                return nx * (-(a - 1) * np.mean(np.log(x)) + np.mean(x) / s
                             + scipy.special.gammaln(a) + a * ls)

            v = x.var()
            mm = Minuit(f, la=np.log(mx * mx / v), ls=np.log(v / mx))
            mm.errordef = Minuit.LIKELIHOOD
            mm.migrad()
            del lx
            return np.exp(mm.values["la"]), np.exp(mm.values["ls"]), mm.fmin.nfcn

        rows.append(looped(minuit_one, "iminuit migrad loop (steps = calls)"))
    except ImportError:
        pass
    return rows


# --------------------------------------------------------------------------------------
# 6. Standard errors of problem 2


def stderr(cfg: Config) -> list[Row]:
    n = cfg.n_logistic
    name = f"6. Std errors, logistic N={n:.0e}"
    print(name, flush=True)
    A, B = logistic_data(n, seed=1), logistic_data(n, seed=2)
    ja, jb = _as_jax(*A), _as_jax(*B)
    d = A[0].shape[1]
    import statsmodels.api as sm

    rows = []
    try:
        from mlefit._inference import stderr_of  # uncached res.stderr, for timing
    except ImportError:
        print("  mlefit._inference.stderr_of missing: skipped", flush=True)
        return rows
    fits = {id(ja): mlefit.fit(logistic_logp, ja, jnp.zeros(d)),
            id(jb): mlefit.fit(logistic_logp, jb, jnp.zeros(d))}

    def mle_se(data):
        return Outcome(np.asarray(stderr_of(fits[id(data)])), "")

    _, se_m = timed(lambda: mle_se(ja))
    se_s = np.asarray(sm.Logit(A[1], A[0]).fit(disp=0).bse)
    diff = float(np.max(np.abs(se_m.params - se_s) / se_s))

    def fit_and_se(data):
        res = mlefit.fit(logistic_logp, data, jnp.zeros(d))
        return Outcome(np.asarray(res.stderr), int(res.steps))

    def sm_fit_and_se(data):
        r = sm.Logit(data[1], data[0]).fit(disp=0)
        return Outcome(np.asarray(r.bse), int(r.mle_retvals["iterations"]))

    note = f"max rel. diff of std errors vs statsmodels: {diff:.1e}"
    rows.append(measure(name, "mlefit res.stderr (exact Hessian + inverse)", mle_se, ja, jb,
                        None, reps=cfg.reps, compiles=True, is_ref=True, note=note))
    rows.append(measure(name, "mlefit.fit + res.stderr", fit_and_se, ja, jb, None,
                        reps=cfg.slow_reps, compiles=True))
    rows.append(measure(name, "statsmodels Logit fit + bse", sm_fit_and_se, A, B, None,
                        reps=cfg.slow_reps, compiles=False))

    def sm_bse_only(data):
        r = sm.Logit(data[1], data[0]).fit(disp=0)
        t = time.perf_counter()
        cov = r.cov_params()
        bse = np.sqrt(np.diag(cov))
        return Outcome(bse, f"{time.perf_counter() - t:.4f}s of it cov_params")

    rows.append(measure(name, "statsmodels Logit fit + cov_params (numerical path timing)",
                        sm_bse_only, A, B, None, reps=0, compiles=False))
    return rows


# --------------------------------------------------------------------------------------
# The physical floor: bandwidth, and one loss+gradient evaluation of problem 2


def read_bandwidth(nbytes=1 << 30, reps=15) -> dict:
    """Best read rate of a full reduction over ``nbytes`` (XLA, all cores), GB/s."""
    dt = jnp.float32
    x = jnp.ones((nbytes // 4,), dt)
    f = jax.jit(jnp.sum)
    f(x).block_until_ready()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        f(x).block_until_ready()
        ts.append(time.perf_counter() - t)
    del x
    return {"bytes": nbytes, "best_s": min(ts), "median_s": float(np.median(ts)),
            "GBps_best": nbytes / min(ts) / 1e9, "GBps_median": nbytes / np.median(ts) / 1e9}


def _best(f, *args, reps=15):
    jax.block_until_ready(f(*args))
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(f(*args))
        ts.append(time.perf_counter() - t)
    return min(ts), float(np.median(ts))


def floor(cfg: Config) -> list[Row]:
    """Rows with the loss+gradient evaluation times; prints the bandwidth."""
    from mlefit._constraints import split_init
    from mlefit._objective import objective

    n = cfg.n_logistic
    name = f"floor: one loss+grad, logistic N={n:.0e} d=33"
    print(name, flush=True)
    bw = read_bandwidth(1 << 31 if cfg.gpu else 1 << 30)
    X, y = _as_jax(*logistic_data(n, seed=3))
    floor_s = X.nbytes / (bw["GBps_best"] * 1e9)
    print(f"  read bandwidth {bw['GBps_best']:.1f} GB/s best, {bw['GBps_median']:.1f} median;"
          f" floor {floor_s * 1e3:.2f} ms for {X.nbytes / 1e6:.0f} MB", flush=True)
    w = jnp.full(X.shape[1], 0.01)
    u, tr = split_init(w, jnp.float64)
    rows = []

    def add(tool, f, note=""):
        best, med = _best(f, w, X, y)
        rows.append(Row(name, tool, None, best, med, None, None,
                        note or f"best {best * 1e3:.1f} ms = {best / floor_s:.1f}x floor"))
        print(f"  {tool:60s} best {best * 1e3:7.2f} ms  median {med * 1e3:7.2f} ms  "
              f"({best / floor_s:.1f}x floor)", flush=True)

    rows.append(Row(name, f"memory read floor: {X.nbytes / 1e6:.0f} MB at "
                    f"{bw['GBps_best']:.1f} GB/s", None, floor_s, floor_s, None, None,
                    "jnp.sum over 1 GiB, best of 15", is_ref=True))

    def mlefit_vg(enabled: bool):
        old = os.environ.get("MLEFIT_FASTGRAD")
        os.environ["MLEFIT_FASTGRAD"] = "1" if enabled else "0"
        try:
            g = jax.jit(lambda w, X, y: jax.value_and_grad(
                objective(logistic_logp, tr, (X, y), None))(w))
            jax.block_until_ready(g(w, X, y))  # trace now, under this setting
        finally:
            if old is None:
                os.environ.pop("MLEFIT_FASTGRAD", None)
            else:
                os.environ["MLEFIT_FASTGRAD"] = old
        return g

    add("mlefit objective (fast gradient): value_and_grad", mlefit_vg(True))
    add("plain jax.value_and_grad of the per-observation model (vmap)", mlefit_vg(False))
    add("plain jax.value_and_grad, hand-vectorised loss (X @ w)",
        jax.jit(jax.value_and_grad(_logistic_loss)))

    def two_pass(w, X, y):
        z = X @ w
        r = (jax.nn.sigmoid(z) - y) / y.shape[0]
        return jnp.mean(jnp.logaddexp(0.0, z) - y * z), jnp.sum(X * r[:, None], 0)

    add("hand two-pass formulation: X @ w, then sum(X * r[:, None], 0)", jax.jit(two_pass))
    add("  of which X @ w alone (one pass)", jax.jit(lambda w, X, y: X @ w))
    add("  of which sum(X * y[:, None], 0) alone (one pass)",
        jax.jit(lambda w, X, y: jnp.sum(X * y[:, None], 0)))
    for r in rows:
        r.extra = {"bandwidth": bw, "floor_s": floor_s}  # type: ignore[attr-defined]
    return rows


# --------------------------------------------------------------------------------------
# Subprocess measurements: peak memory, persistent compilation cache


def _subprocess(args, env=None, timeout=900):
    e = dict(os.environ)
    e.update(env or {})
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-m", "benchmarks.probe", *args], cwd=root, env=e,
                         capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"probe {args} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    return json.loads(lines[-1])


def memory(cfg: Config) -> list[Row]:
    n = cfg.n_memory
    name = f"memory: logistic N={n:.0e} d=33 float32"
    print(name, flush=True)
    rows = []
    for label, env in (("mlefit.fit (fast gradient)", {}),
                       ("mlefit.fit, MLEFIT_FASTGRAD=0", {"MLEFIT_FASTGRAD": "0"})):
        r = _subprocess(["memory", str(n)], env=env)
        data = r["data_bytes"]
        note = (f"data {data / 1e6:.0f} MB; process peak RSS during the fit "
                f"{r['peak_rss'] / 1e6:.0f} MB = {r['peak_rss'] / data:.2f}x data "
                f"(first fit, compiling: {r['first_peak_rss'] / data:.2f}x); above the "
                f"resident data and runtime: {(r['peak_rss'] - r['rss_before_fit']) / data:+.2f}x"
                f" data; JAX runtime alone {r['rss_runtime'] / 1e6:.0f} MB")
        if r.get("device_peak"):
            note += f"; device peak {r['device_peak'] / 1e6:.0f} MB"
        rows.append(Row(name, label, r["first_s"] - r["second_s"], r["first_s"],
                        r["second_s"], r["nll"], r["steps"], note, is_ref=not env))
        print(f"  {label}: {note}", flush=True)
    return rows


def cache(cfg: Config) -> list[Row]:
    name = "cache: fresh process, first fit"
    print(name, flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="mlefit-bench-cache-") as d:
        for problem, size in (("gauss", str(cfg.n_gauss)),
                              ("gamma", f"{cfg.n_sets}x{cfg.n_per_set}")):
            for label, env in (("no cache", {"MLEFIT_CACHE_DIR": "0"}),
                               ("cache cold (empty dir)", {"MLEFIT_CACHE_DIR": d}),
                               ("cache warm (same model, shape)", {"MLEFIT_CACHE_DIR": d})):
                r = _subprocess(["cache", problem, size], env=env)
                note = (f"import mlefit {r['import_s']:.2f}s; first fit {r['first_s']:.3f}s; "
                        f"second fit {r['second_s']:.3f}s")
                rows.append(Row(f"{name}: {problem} {size}", label, None, r["first_s"],
                                r["second_s"], r["nll"], r["steps"], note,
                                is_ref=label.startswith("cache warm")))
                print(f"  {problem} {label}: {note}", flush=True)
    return rows


PROBLEMS = {
    "gauss": gauss,
    "logistic": logistic,
    "logistic32": logistic32,
    "softmax": softmax,
    "poisson": poisson,
    "gamma": gamma_many,
    "stderr": stderr,
    "floor": floor,
    "memory": memory,
    "cache": cache,
}
