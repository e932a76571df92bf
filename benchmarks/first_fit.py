"""The first fit in a fresh process, L-BFGS against subsampled Newton, on the logistic
problem of ``benchmarks.run`` at several sizes: where the default solver's rule
(``mlefit._defaults.use_subsampled``) switches.

    python -m benchmarks.first_fit --rows 1e6,2e6,3e6 --runs 3

Each run is a new Python process (data on the device, JAX warmed by a trivial jit, the
executable store off) that times its first and second fit; runs alternate the solvers,
and the table shows medians.
"""

import argparse
import json
import statistics
import subprocess
import sys

CHILD = r"""
import json, sys, time
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import mlefit
from benchmarks.problems import logistic_data, logistic_logp
mlefit.disable_compilation_cache()
n, optimizer = int(float(sys.argv[1])), sys.argv[2]
X, y = jax.block_until_ready(tuple(map(jnp.asarray, logistic_data(n))))
jax.block_until_ready(jax.jit(lambda a: a + 1)(jnp.ones(3)))
times = []
for _ in range(2):
    t = time.perf_counter()
    res = mlefit.fit(logistic_logp, (X, y), jnp.zeros(X.shape[1]), optimizer=optimizer)
    jax.block_until_ready(res.params)
    times.append(time.perf_counter() - t)
print("RESULT " + json.dumps({"first": times[0], "second": times[1], "steps": int(res.steps)}))
"""


def run(n: float, optimizer: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(n), optimizer], capture_output=True,
                         text=True, check=True)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="1e6,2e6,3e6")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    print("| logistic, 33 parameters | L-BFGS first / second fit | subsampled first / second fit |")
    print("|---|---|---|")
    for n in (float(r) for r in args.rows.split(",")):
        got = {"lbfgs": [], "subsampled": []}
        for _ in range(args.runs):
            for optimizer in got:
                got[optimizer].append(run(n, optimizer))
        cells = []
        for optimizer in got:
            first = statistics.median(r["first"] for r in got[optimizer])
            second = statistics.median(r["second"] for r in got[optimizer])
            cells.append(f"{first:.2f} s / {second:.2f} s")
        print(f"| {n:.0e} rows (`n p = {n * 33:.1e}`) | {cells[0]} | {cells[1]} |", flush=True)


if __name__ == "__main__":
    main()
