"""NIST StRD nonlinear regressions (tests/nist_nls.py: 20 problems, both starts) fitted as
Gaussian MLEs; prints, per fit, the status and the log relative error (LRE, correct
significant digits) of the parameters and of the residual sum of squares.

    python -m benchmarks.nist_sweep                   # default fit and optimizer="newton"
    python -m benchmarks.nist_sweep --only default    # one of: default, newton

A fit "hits" when it reaches NIST's certified RSS to 1e-9 relative (LRE RSS >= 9); the
summary also counts fits that claim convergence without it (there should be none). The LRE
of b is 0 for an equivalent relabelled solution (Lanczos's and MGH17's exponential terms
swapped, Eckerle4's (b1, b2) negated): the RSS identifies those.
"""

from __future__ import annotations

import argparse
import time

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

from tests.nist_nls import PROBLEMS, fit_nist, rss  # noqa: E402

SETTINGS = {"default": {}, "newton": {"optimizer": "newton"}}


def _lre(est, ref) -> float:
    rel = np.max(np.abs(np.asarray(est) - ref) / np.abs(ref))
    return float(np.clip(-np.log10(max(rel, 1e-300)), 0.0, 15.0))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=sorted(SETTINGS))
    args = ap.parse_args(argv)
    names = [args.only] if args.only else list(SETTINGS)
    heads = [f"{s + ': status, steps, LRE b, LRE RSS, s':52s}" for s in names]
    print(f"{'problem':9s} st " + " ".join(heads))
    tally = {s: [0, 0] for s in names}
    for name in PROBLEMS:
        cert, rss_cert = np.asarray(PROBLEMS[name][5]), PROBLEMS[name][6]
        for start in (1, 2):
            cells = []
            for s in names:
                t = time.perf_counter()
                res = fit_nist(name, start, **SETTINGS[s])
                b = np.asarray(res.params["b"])
                dt = time.perf_counter() - t
                lre_rss = _lre(rss(name, b), rss_cert)
                hit = lre_rss >= 9
                tally[s][0] += hit
                tally[s][1] += bool(res.converged) and not hit
                cells.append(f"{str(res.status):30s} {int(res.steps):6d} {_lre(b, cert):4.1f} "
                             f"{lre_rss:4.1f} {dt:4.1f}")
            print(f"{name:9s} {start}  " + "   ".join(cells), flush=True)
    for s, (hits, false) in tally.items():
        print(f"{s}: {hits} of {2 * len(PROBLEMS)} fits at the certified RSS; "
              f"{false} claim convergence elsewhere")


if __name__ == "__main__":
    main()
