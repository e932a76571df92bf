"""Time to a first result: what a statistician waits for, in fresh processes.

    python -m benchmarks.latency            # 5 fresh processes per case, medians
    python -m benchmarks.latency --runs 3

Cases (each in a new Python process; ``import mlefit`` and loading the data are not timed):

- ``cold``: no compilation cache (``MLEFIT_CACHE_DIR=0``): ``fit(Logistic(), (X, y))`` on
  statsmodels' Spector data (32 rows, 3 regressors + constant) and ``res.summary()``;
  then, in the same process, the same model on the first 30 rows (``n30``) and on all 32
  rows with new values (``refit``);
- ``warm``: the same first fit + summary with a cache directory that a previous process
  filled;
- ``anes96``: multinomial logit on statsmodels' ANES96 data (944 rows, 7 classes, 5
  regressors + constant, 36 free parameters), default settings: steps, steady-state time
  (median of 7) and the log-likelihood against statsmodels' ``MNLogit``.

Peer: statsmodels ``Logit(...).fit(disp=0).summary()`` in the same kind of fresh process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap

SPECTOR = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    import statsmodels.api as sm
    d = sm.datasets.spector.load_pandas()
    X = d.exog.to_numpy(float); y = d.endog.to_numpy(float)
    X2 = X.copy(); X2[:, 0] += 0.01
    import jax
    jax.config.update("jax_enable_x64", True)
    import mlefit
    t0 = time.perf_counter()
    res = mlefit.fit(mlefit.models.Logistic(), (X, y))
    text = res.summary()
    t1 = time.perf_counter()
    r30 = mlefit.fit(mlefit.models.Logistic(), (X[:30], y[:30])); r30.summary()
    t2 = time.perf_counter()
    r32 = mlefit.fit(mlefit.models.Logistic(), (X2, y)); r32.summary()
    t3 = time.perf_counter()
    json.dump({"first": t1 - t0, "n30": t2 - t1, "refit": t3 - t2,
               "status": str(res.status), "steps": int(res.steps),
               "loglik": float(res.loglik)}, sys.stdout)
    """
)

PEER = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    import statsmodels.api as sm
    d = sm.datasets.spector.load_pandas()
    X = sm.add_constant(d.exog.to_numpy(float)); y = d.endog.to_numpy(float)
    t0 = time.perf_counter()
    r = sm.Logit(y, X).fit(disp=0); r.summary()
    t1 = time.perf_counter()
    json.dump({"first": t1 - t0, "loglik": float(r.llf)}, sys.stdout)
    """
)

ANES = textwrap.dedent(
    """
    import json, sys, time, warnings
    import numpy as np
    import statsmodels.api as sm
    d = sm.datasets.anes96.load_pandas().data
    y = d["PID"].to_numpy().astype(int)
    X = d[["logpopul", "selfLR", "age", "educ", "income"]].to_numpy(float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = sm.MNLogit(y, sm.add_constant(X)).fit(disp=0, method="newton", maxiter=100)
    import jax
    jax.config.update("jax_enable_x64", True)
    import mlefit
    model = mlefit.models.Softmax(num_classes=7)
    res = mlefit.fit(model, (X, y)); jax.block_until_ready(res.params)
    times = []
    for _ in range(7):
        t0 = time.perf_counter()
        r = mlefit.fit(model, (X, y)); jax.block_until_ready(r.params)
        times.append(time.perf_counter() - t0)
    json.dump({"steady": sorted(times)[3], "steps": int(res.steps), "status": str(res.status),
               "loglik": float(res.loglik), "ref_loglik": float(ref.llf)}, sys.stdout)
    """
)


def _run(code: str, env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def _median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5, help="fresh processes per case")
    p.add_argument("--skip-anes", action="store_true")
    args = p.parse_args(argv)
    base = dict(os.environ)
    cold_env = {**base, "MLEFIT_CACHE_DIR": "0"}
    cold = [_run(SPECTOR, cold_env) for _ in range(args.runs)]
    peer = [_run(PEER, base) for _ in range(args.runs)]
    with tempfile.TemporaryDirectory() as cache:
        warm_env = {**base, "MLEFIT_CACHE_DIR": cache}
        _run(SPECTOR, warm_env)  # fills the cache
        warm = [_run(SPECTOR, warm_env) for _ in range(args.runs)]
    print(f"Spector logit (32 x 3 + const), fit + summary, fresh processes, medians of "
          f"{args.runs}:")
    print(f"  mlefit, no cache:   first {_median(cold, 'first'):.3f} s   30 rows "
          f"{_median(cold, 'n30'):.4f} s   same shape, new data {_median(cold, 'refit'):.4f} s"
          f"   [{cold[0]['status']}, {cold[0]['steps']} steps]")
    print(f"  mlefit, warm cache: first {_median(warm, 'first'):.3f} s   30 rows "
          f"{_median(warm, 'n30'):.4f} s")
    ratio = _median(cold, "first") / _median(peer, "first")
    print(f"  statsmodels Logit:  first {_median(peer, 'first'):.3f} s   "
          f"ratio mlefit/statsmodels (no cache) {ratio:.1f}x")
    dll = abs(cold[0]["loglik"] - peer[0]["loglik"]) / abs(peer[0]["loglik"])
    print(f"  loglik mlefit {cold[0]['loglik']:.10f}  statsmodels {peer[0]['loglik']:.10f}  "
          f"rel diff {dll:.1e}")
    if not args.skip_anes:
        a = _run(ANES, base)
        rel = abs(a["loglik"] - a["ref_loglik"]) / abs(a["ref_loglik"])
        print(f"ANES96 multinomial logit (944 x 6, 7 classes), default fit: {a['steps']} steps, "
              f"steady {a['steady']:.4f} s (median of 7), {a['status']}, loglik "
              f"{a['loglik']:.8f} vs statsmodels MNLogit {a['ref_loglik']:.8f} (rel {rel:.1e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
