"""Overhead of ``progress=True`` (compiled chunks + a tqdm bar) on a full-batch fit.

Run: ``python -m benchmarks.progress_overhead``. Logistic regression N = 1e6, d = 33,
float64, data on the device (as in the rest of the suite); median of 5 steady-state fits
each way, interleaved; a short (converged, 9 steps) and a longer (stalled, 14 steps) fit.
"""

import io
import time

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

import mlefit  # noqa: E402

from .problems import logistic_data  # noqa: E402


def main():
    X, y = logistic_data(1_000_000)  # X holds the intercept column
    X, y = jax.block_until_ready((jnp.asarray(X), jnp.asarray(y)))
    init = None
    model = mlefit.models.Logistic(intercept=False)
    for max_steps in (None, 60):
        _compare(model, X, y, init, max_steps)


def _compare(model, X, y, init, max_steps):
    # max_steps=60 with tol=0: a longer fit (60 L-BFGS steps), the case a bar is for.
    extra = {} if max_steps is None else {"max_steps": max_steps, "tol": 0.0}
    timings = {"plain": [], "progress": []}
    for rep in range(6):
        for mode in ("plain", "progress"):
            kw = {} if mode == "plain" else {"progress": {"file": io.StringIO(), "mininterval": 0}}
            t = time.perf_counter()
            res = mlefit.fit(model, (X, y), init=init, **kw, **extra)
            jax.block_until_ready(res.nll)
            if rep:  # the first round compiles
                timings[mode].append(time.perf_counter() - t)
    plain, prog = np.median(timings["plain"]), np.median(timings["progress"])
    print(f"logistic 1e6 x 33, {int(res.steps)} steps: plain {plain:.3f} s, progress {prog:.3f} s, "
          f"overhead {100 * (prog / plain - 1):+.1f}%")


if __name__ == "__main__":
    main()
