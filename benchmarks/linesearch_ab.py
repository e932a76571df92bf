"""mlefit's default L-BFGS with its weak-Wolfe line search against optax's zoom line search.

Run: ``python -m benchmarks.linesearch_ab [--reps 3]``. Everything but the line search is
mlefit's default fit (``default_optimizer`` is swapped in a fresh process per run, so the
Newton polish and the rest stay as they are). Prints, per variant and run:

- problems 2-4 of the suite: first call, steady state (median of 3), first - steady,
  steps and mean NLL;
- 32 non-convex fits from crude starts (Student t, Weibull, a two-normal mixture, a
  negative binomial; 8 seeds each, N = 400): final mean NLL, steps and status, and the
  largest NLL difference between the variants.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time


def _child(variant: str) -> dict:
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import jax.scipy.stats as st
    import numpy as np
    import optax

    import mlefit
    import mlefit._fit as F

    from . import problems as P

    if variant == "zoom":
        zoom = optax.lbfgs()
        F.default_optimizer = lambda: zoom

    out = {"variant": variant, "problems": {}, "nonconvex": []}
    warm = mlefit.fit(lambda p, x: st.norm.logpdf(x, p["m"], 1.0), jnp.arange(10.0),
                      init={"m": 0.0})
    jax.block_until_ready(warm.params)
    specs = {
        "logistic": (P.logistic_data, 10**6, P.logistic_logp, jnp.zeros(33), P.logistic_nll),
        "poisson": (P.poisson_data, 5 * 10**5, P.poisson_logp, jnp.zeros(17), P.poisson_nll),
        "softmax": (P.softmax_data, 2 * 10**5, P.softmax_logp, jnp.zeros((65, 10)),
                    P.softmax_nll),
    }
    for name, (make, n, logp, init, nll) in specs.items():
        A, B = make(n, seed=1), make(n, seed=2)
        ja = jax.block_until_ready(tuple(jnp.asarray(a) for a in A))
        jb = jax.block_until_ready(tuple(jnp.asarray(a) for a in B))

        def run(d, logp=logp, init=init):
            res = mlefit.fit(logp, d, init=init)
            jax.block_until_ready(res.params)
            return res

        t = time.perf_counter()
        res = run(ja)
        first = time.perf_counter() - t
        steady = []
        for d in (jb, ja, jb):
            t = time.perf_counter()
            run(d)
            steady.append(time.perf_counter() - t)
        s = statistics.median(steady)
        out["problems"][name] = {"first": first, "steady": s, "compile": first - s,
                                 "steps": int(res.steps), "nll": nll(res.params, A)}

    P_ = mlefit.Positive

    def student_t(p, x):
        return st.t.logpdf(x, p["df"], p["loc"], p["scale"])

    def weibull(p, x):
        return (jnp.log(p["k"] / p["lam"]) + (p["k"] - 1) * jnp.log(x / p["lam"])
                - (x / p["lam"]) ** p["k"])

    def mixture(p, x):
        w = jax.nn.sigmoid(p["a"])
        return jnp.logaddexp(jnp.log(w) + st.norm.logpdf(x, p["m1"], p["s1"]),
                             jnp.log1p(-w) + st.norm.logpdf(x, p["m2"], p["s2"]))

    def negbin(p, k):
        return st.nbinom.logpmf(k, p["r"], p["p"])

    for seed in range(8):
        rng = np.random.default_rng(seed)
        cases = [
            ("student t", student_t, rng.standard_t(3.0, 400) * 2 + 1,
             {"df": P_(1.0), "loc": 0.0, "scale": P_(1.0)}),
            ("weibull", weibull, rng.weibull(1.7, 400) * 3, {"k": P_(1.0), "lam": P_(1.0)}),
            ("mixture", mixture,
             np.concatenate([rng.normal(-2, 1, 200), rng.normal(3, 0.5, 200)]),
             {"a": 0.0, "m1": -1.0, "m2": 1.0, "s1": P_(1.0), "s2": P_(1.0)}),
            ("negbin", negbin, rng.negative_binomial(3, 0.4, 400).astype(float),
             {"r": P_(1.0), "p": mlefit.Interval(0.0, 1.0, 0.5)}),
        ]
        for name, f, x, init in cases:
            res = mlefit.fit(f, x, init=init)
            out["nonconvex"].append({"case": f"{name} {seed}", "nll": float(res.nll),
                                     "steps": int(res.steps),
                                     "status": str(res.optimizer_status)})
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3, help="fresh processes per variant")
    ap.add_argument("--child", choices=("zoom", "wolfe"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child)))
        return
    runs = {"zoom": [], "wolfe": []}
    for _ in range(args.reps):  # interleaved
        for variant in runs:
            cmd = [sys.executable, "-m", "benchmarks.linesearch_ab", "--child", variant]
            line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            runs[variant].append(json.loads(line.strip().splitlines()[-1]))
    for name in runs["zoom"][0]["problems"]:
        for variant, rs in runs.items():
            ps = [r["problems"][name] for r in rs]
            med = {k: statistics.median(p[k] for p in ps) for k in ("first", "steady", "compile")}
            print(f"{name:9s} {variant:5s}: first {med['first']:.3f} s, steady "
                  f"{med['steady']:.3f} s, first - steady {med['compile']:.3f} s "
                  f"(medians of {len(ps)}), steps {ps[0]['steps']}, NLL {ps[0]['nll']:.12f}")
    zoom, wolfe = runs["zoom"][0]["nonconvex"], runs["wolfe"][0]["nonconvex"]
    worst = max(abs(a["nll"] - b["nll"]) / abs(a["nll"]) for a, b in zip(zoom, wolfe, strict=True))
    conv = {v: sum(c["status"] == "converged" for c in runs[v][0]["nonconvex"]) for v in runs}
    steps = {v: sum(c["steps"] for c in runs[v][0]["nonconvex"]) for v in runs}
    print(f"non-convex fits: {len(zoom)}; converged zoom {conv['zoom']}, wolfe {conv['wolfe']};"
          f" total steps zoom {steps['zoom']}, wolfe {steps['wolfe']}; largest relative NLL"
          f" difference {worst:.1e}")


if __name__ == "__main__":
    main()
