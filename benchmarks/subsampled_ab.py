"""Issue 18, side by side: the default solver (L-BFGS at these sizes), subsampled Newton
and L-BFGS by name, and scikit-learn, on problems 2 and 4 of ``benchmarks.run`` (steady
state, medians of ``--reps`` calls); the same fits of the ready-made model (its own start,
the intercept-only MLE, where the user's log-density starts at zero); then both solvers
started at the MLE (a refit).

    python -m benchmarks.subsampled_ab --reps 5

"passes" are full evaluations of the NLL and its gradient over the data, counted in a
separate, untimed fit whose objective calls back to Python once per evaluation;
scikit-learn reports iterations only (its L-BFGS evaluates at least once per iteration).
"""

import argparse
import statistics
import time
import warnings

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import mlefit  # noqa: E402
import mlefit._compiled  # noqa: E402
import mlefit._program  # noqa: E402

from .problems import logistic_data, logistic_logp, poisson_data, poisson_logp  # noqa: E402


def _median_time(run, reps):
    out = run()  # first call: compiles (mlefit)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def count_passes(logp, data, init, **kw) -> int:
    """Full-data evaluations of the objective in one fit (an instrumented program,
    compiled apart: the executable store is bypassed and the in-memory one cleared)."""
    calls = []
    real = mlefit._program.objective

    def counted(*args, **kwargs):
        f = real(*args, **kwargs)

        def g(u):
            jax.debug.callback(lambda: calls.append(1))
            return f(u)
        return g

    mlefit._compiled._MEMO.clear()
    mlefit._program.objective = counted
    try:
        jax.block_until_ready(mlefit.fit(logp, data, init, **kw).params)
        jax.effects_barrier()
    finally:
        mlefit._program.objective = real
        mlefit._compiled._MEMO.clear()
    return len(calls)


def _mlefit(logp, data, d, init=None, **kw):
    X, y = (jnp.asarray(a) for a in data)
    if init is None and not isinstance(logp, mlefit.models.AbstractConditionalModel):
        init = jnp.zeros(d)  # a ready-made model starts from its own init

    def run():
        res = mlefit.fit(logp, (X, y), init, **kw)
        jax.block_until_ready(res.params)
        return float(res.nll), int(res.steps)
    t0 = time.perf_counter()
    run()
    first_s = time.perf_counter() - t0
    steady, (nll, steps) = _median_time(run, REPS)
    passes = count_passes(logp, (X, y), init, **kw)
    return first_s - steady, steady, (nll, f"{steps} ({passes} passes)")


def _sklearn(cls, data, **kw):
    X, y = data

    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = cls(fit_intercept=False, max_iter=5000, **kw).fit(X, y)
        return None, int(np.max(m.n_iter_))
    steady, out = _median_time(run, REPS)
    return None, steady, out


def main():
    global REPS, DATA
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    REPS = ap.parse_args().reps
    mlefit.disable_compilation_cache()  # compile times measured, not loaded from disk
    from sklearn.linear_model import LogisticRegression, PoissonRegressor

    problems = [
        ("logistic 1e6 x 33", logistic_logp, logistic_data(1_000_000), 33,
         lambda **k: _sklearn(LogisticRegression, DATA, penalty=None, **k),
         mlefit.models.Logistic(intercept=False)),
        ("Poisson 5e5 x 17", poisson_logp, poisson_data(500_000), 17,
         lambda **k: _sklearn(PoissonRegressor, DATA, alpha=0.0, **k),
         mlefit.models.PoissonRegression(intercept=False)),
    ]
    print("| problem | tool | compile s | steady s (median) | steps (passes) | mean NLL | "
          "sklearn default / tool | sklearn tol 1e-9 / tool |")
    print("|---|---|---|---|---|---|---|---|")
    for name, logp, data, d, sk, model in problems:
        DATA = data
        n = data[0].shape[0]
        default = _mlefit(logp, data, d)  # first: its compile time is measured
        mle = mlefit.fit(logp, tuple(jnp.asarray(a) for a in data), jnp.zeros(d)).params
        rows = [(f"mlefit.fit default ({mlefit._defaults.default_solver(n, d)})", default),
                ("mlefit.fit optimizer='subsampled'",
                 _mlefit(logp, data, d, optimizer="subsampled")),
                ("mlefit.fit optimizer='lbfgs'", _mlefit(logp, data, d, optimizer="lbfgs")),
                ("scikit-learn lbfgs tol=1e-4 (default)", sk(tol=1e-4)),
                ("scikit-learn lbfgs tol=1e-9", sk(tol=1e-9)),
                (f"ready-made models.{type(model).__name__}, default",
                 _mlefit(model, data, d)),
                (f"ready-made models.{type(model).__name__}, optimizer='subsampled'",
                 _mlefit(model, data, d, optimizer="subsampled")),
                ("warm start at the MLE: optimizer='subsampled'",
                 _mlefit(logp, data, d, init=mle, optimizer="subsampled")),
                ("warm start at the MLE: optimizer='lbfgs'",
                 _mlefit(logp, data, d, init=mle, optimizer="lbfgs"))]
        sk_default, sk_tight = rows[3][1][1], rows[4][1][1]
        for tool, (compile_s, steady, (nll, steps)) in rows:
            c = "" if compile_s is None else f"{compile_s:.2f}"
            nll_s = "" if nll is None else f"{nll:.12f}"
            print(f"| {name} | {tool} | {c} | {steady:.3f} | {steps} | {nll_s} | "
                  f"{sk_default / steady:.2f} | {sk_tight / steady:.2f} |", flush=True)


REPS = 5
DATA = None

if __name__ == "__main__":
    main()
