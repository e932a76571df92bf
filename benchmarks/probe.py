"""Measurements that need a fresh process; run by the suite, prints one JSON line.

    python -m benchmarks.probe memory N          # peak RSS of a float32 logistic fit
    python -m benchmarks.probe cache gauss N     # first fit in a fresh process
    python -m benchmarks.probe cache gamma BxN   # (MLEFIT_CACHE_DIR selects the cache)
"""

from __future__ import annotations

import gc
import json
import sys
import time

T_START = time.perf_counter()


def _memory(n: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import mlefit  # noqa: F401 - counted in the import time

    from .harness import peak_rss_bytes, reset_peak_rss, rss_bytes
    from .problems import logistic_logp

    jnp.zeros(1).block_until_ready()
    rss_runtime = rss_bytes()
    d, chunk = 33, 1_000_000
    rng = np.random.default_rng(0)
    w_true = np.random.default_rng(123).normal(0.0, 0.3, d).astype(np.float32)
    X = np.empty((n, d), np.float32)
    y = np.empty((n,), np.float32)
    for i in range(0, n, chunk):
        m = min(chunk, n - i)
        X[i:i + m, 0] = 1.0
        X[i:i + m, 1:] = rng.standard_normal((m, d - 1), dtype=np.float32)
        z = X[i:i + m] @ w_true
        y[i:i + m] = rng.random(m, dtype=np.float32) < 1.0 / (1.0 + np.exp(-z))
    Xj, yj = jnp.array(X, copy=True), jnp.array(y, copy=True)
    del X, y
    # The first computation on a fresh array settles its buffers (a transient of about 2x
    # the data on this CPU runtime, whatever the computation): done before measuring.
    jax.block_until_ready((jnp.sum(Xj), jnp.sum(yj)))
    gc.collect()
    data_bytes = Xj.nbytes + yj.nbytes
    rss_before = rss_bytes()
    out = {"n": n, "data_bytes": data_bytes, "rss_runtime": rss_runtime,
           "rss_before_fit": rss_before}
    for label in ("first", "second"):  # the first fit compiles, the second only runs
        can_reset = reset_peak_rss()
        t = time.perf_counter()
        res = mlefit.fit(logistic_logp, (Xj, yj), jnp.zeros(d, jnp.float32))
        jax.block_until_ready(res.params)
        out[f"{label}_s"] = time.perf_counter() - t
        out[f"{label}_peak_rss"] = peak_rss_bytes()
        out["peak_reset"] = can_reset
    out.update(fit_s=out["second_s"], peak_rss=out["second_peak_rss"], steps=int(res.steps),
               status=str(res.optimizer_status), nll=float(res.nll))
    try:
        stats = jax.devices()[0].memory_stats() or {}
        out["device_peak"] = stats.get("peak_bytes_in_use")
    except Exception:  # noqa: BLE001 - CPU devices may not report
        out["device_peak"] = None
    return out


def _cache(problem: str, size: str) -> dict:
    t0 = time.perf_counter()
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np

    import mlefit  # noqa: F401 - counted in the import time (which sets up the cache)

    import_s = time.perf_counter() - t0
    # Data are made before the clock starts: the times are the fits' alone.
    if problem == "gauss":
        from .problems import gauss_fit_once

        datasets = [jnp.asarray(np.random.default_rng(seed).normal(1.5, 2.5, int(size)))
                    for seed in (1, 2)]
        fit_once = gauss_fit_once
    elif problem == "gamma":
        from .problems import gamma_data, gamma_fit_once

        b, n = (int(v) for v in size.split("x"))
        datasets = [jnp.asarray(gamma_data(b, n, seed)) for seed in (1, 2)]
        fit_once = gamma_fit_once
    else:
        raise SystemExit(f"unknown problem {problem}")
    jax.block_until_ready(datasets)
    t = time.perf_counter()
    finish = fit_once(datasets[0])
    first = time.perf_counter() - t
    nll, steps = finish()
    t = time.perf_counter()
    fit_once(datasets[1])
    second = time.perf_counter() - t
    return {"import_s": import_s, "first_s": first, "second_s": second, "nll": nll,
            "steps": steps, "cache_dir": jax.config.jax_compilation_cache_dir}


def main(argv):
    if argv[0] == "memory":
        out = _memory(int(float(argv[1])))
    elif argv[0] == "cache":
        out = _cache(argv[1], argv[2])
    else:
        raise SystemExit(__doc__)
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
