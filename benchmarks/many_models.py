"""fit_many of ready-made models over 10,000 data sets of 200 observations: first call
(tracing and compiling included) and steady state (median of 3), per model.

    python benchmarks/many_models.py [--sets 10000] [--n 200]

Run as a file so that ``PYTHONPATH=<another checkout>`` compares versions of mlefit.
"""

from __future__ import annotations

import argparse
import time

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

import mlefit  # noqa: E402
from mlefit import models  # noqa: E402

DATA = {
    "Normal": (models.Normal, lambda r, s: r.normal(1.0, 2.0, s)),
    "Exponential": (models.Exponential, lambda r, s: r.exponential(2.0, s)),
    "LogNormal": (models.LogNormal, lambda r, s: r.lognormal(0.0, 1.0, s)),
    "Gamma": (models.Gamma, lambda r, s: r.gamma(2.0, 1.5, s)),
    "Weibull": (models.Weibull, lambda r, s: r.weibull(1.5, s)),
    "Poisson": (models.Poisson, lambda r, s: r.poisson(3.0, s).astype(float)),
}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", type=int, default=10_000)
    ap.add_argument("--n", type=int, default=200)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    print(f"mlefit from {mlefit.__file__}; {args.sets} data sets of {args.n}")
    for name, (make, gen) in DATA.items():
        a, b = (jax.device_put(gen(rng, (args.sets, args.n))) for _ in range(2))
        jax.block_until_ready((a, b))
        t = time.perf_counter()
        res = mlefit.fit_many(make(), a)
        jax.block_until_ready(res.params)
        first = time.perf_counter() - t
        steady = []
        for x in (b, a, b):
            t = time.perf_counter()
            res = mlefit.fit_many(make(), x)
            jax.block_until_ready(res.params)
            steady.append(time.perf_counter() - t)
        ok = float(np.mean(np.asarray(res.status_code) == 0))
        print(f"{name:12s} first {first:6.3f} s  steady {np.median(steady):7.4f} s  "
              f"max steps {int(np.max(np.asarray(res.steps))):3d}  converged {ok:.3f}", flush=True)


if __name__ == "__main__":
    main()
