"""The ``mlefit`` command line: fit a ready-made distribution to a column of a file.

    mlefit fit DATA --dist NAME [--column COL] [--level 0.95] [--json] [--plot FILE.png]
    mlefit compare DATA --dist A --dist B ...
    mlefit bench [PATH]

Bad input (a missing file, an unknown or ambiguous column or distribution, a cell that is
not a finite number, data outside the support) is one line on stderr and exit status 2,
before anything is compiled. Nothing is written to disk except the file named by ``--plot``
and mlefit's compilation cache (``MLEFIT_CACHE_DIR``; an unusable one is a one-line warning).
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import mlefit

from . import plot
from ._cli_models import (
    UsageError,
    _dist_list,
    _where,
    display_name,
    load_data,
    make_model,
    resolve_dist,
)
from ._nesting import NESTED
from ._report import param_table

__all__ = ["main"]

EXIT_OK, EXIT_NOT_CONVERGED, EXIT_USAGE = 0, 1, 2




def _nested() -> dict:
    """Nested pairs ``(restricted, full)`` by canonical name -> ``(restriction, boundary)``:
    the table ``mlefit.lr_test`` uses (:mod:`mlefit._nesting`), imported when needed."""

    return {
        (r.__name__.lower(), f.__name__.lower()): (x.what, x.boundary)
        for (r, f), x in NESTED.items()
    }




# -- entry point --------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Runs the ``mlefit`` command line and returns its exit status.

    0: success; 1: the fit ran but did not converge (the summary says why);
    2: bad input or usage, reported as one line on stderr.

    Example:
        >>> main(["--version"])  # doctest: +SKIP
        mlefit 0.1.0
        0
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not hasattr(args, "run"):
            raise UsageError("choose a command: fit, compare or bench (see 'mlefit --help')")
        return args.run(args)
    except UsageError as e:
        print(f"mlefit: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as e:  # --help and --version exit through argparse
        return e.code if isinstance(e.code, int) else EXIT_OK
    except KeyboardInterrupt:
        print("mlefit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `mlefit fit ... | head`: the reader left, not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that Python's exit flush stays quiet
        return EXIT_OK


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose usage errors are one line (no usage block) and exit 2."""

    def error(self, message):
        raise UsageError(f"{message} (see '{self.prog} --help')")


_FIT_EXAMPLES = """\
examples:
  mlefit fit --dist gamma                       # the bundled strike durations
  mlefit fit data.csv --dist normal --column height
  mlefit fit counts.npy --dist poisson --json
  mlefit fit data.csv --dist weibull --level 0.9 --plot weibull.png

DATA is a CSV file with a header row (comma, semicolon or tab separated) or a .npy
file; without DATA the bundled data set is used (62 U.S. strike durations in days,
Kennan 1985, public domain). Exit status: 0 converged, 1 the fit did not converge
(the summary says why), 2 bad input.
"""

_COMPARE_EXAMPLES = """\
examples:
  mlefit compare --dist exponential --dist gamma --dist weibull
  mlefit compare data.csv --column x --dist normal --dist studentt --dist laplace

Models are ranked by AIC (lower is better). Where one model is nested in another
(exponential in gamma and weibull) the likelihood-ratio
test is shown; where the restriction is on the boundary of the parameter space
(normal in studentt as df -> infinity, poisson in negbinomial) the chi-square
p-value would be wrong, so it is not reported.
"""

_BENCH_EXAMPLES = """\
examples:
  mlefit bench                      # the full suite, written to benchmarks/RESULTS.md
  mlefit bench /tmp/results.md      # written to another file
  mlefit bench --quick              # small sizes, about a minute, nothing written
  mlefit bench --only logistic,gamma

Runs the benchmark suite of a source checkout (python -m benchmarks.run); it needs
the repository, not just the installed package.
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``mlefit`` (sub-commands fit, compare, bench)."""

    parser = _Parser(
        prog="mlefit",
        description="Maximum-likelihood fits of ready-made distributions, on JAX.",
        epilog="example:\n  mlefit fit --dist gamma\n  mlefit fit data.csv --dist normal "
        "--column x\n\nrun 'mlefit COMMAND --help' for each command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mlefit {mlefit.__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    p = sub.add_parser(
        "fit",
        help="fit one distribution to one column of a file",
        description="Fit a distribution by maximum likelihood and print estimates, standard\n"
        "errors, confidence intervals, log-likelihood, AIC, BIC and convergence.",
        epilog=_FIT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_data_arguments(p)
    p.add_argument("--dist", required=True, metavar="NAME",
                   help=f"the distribution, one of: {_dist_list()}")
    p.add_argument("--level", type=_level, default=0.95,
                   help="confidence level of the intervals (default 0.95)")
    p.add_argument("--json", action="store_true",
                   help="print the result as JSON on stdout, nothing else")
    p.add_argument("--plot", metavar="FILE.png",
                   help="write the fitted density over a histogram and a Q-Q plot "
                   "(needs matplotlib: pip install 'mlefit[plot]')")
    p.set_defaults(run=run_fit)

    p = sub.add_parser(
        "compare",
        help="fit several distributions and rank them by AIC",
        description="Fit each --dist to the same data; print a table ranked by AIC and\n"
        "likelihood-ratio tests between nested models.",
        epilog=_COMPARE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_data_arguments(p)
    p.add_argument("--dist", action="append", required=True, metavar="NAME",
                   help=f"a distribution to fit; repeat for each model (at least two): "
                   f"{_dist_list()}")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    p.set_defaults(run=run_compare)

    p = sub.add_parser(
        "bench",
        help="run the benchmark suite (from a source checkout)",
        description="Run the benchmark suite and write its markdown table.",
        epilog=_BENCH_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("path", nargs="?", metavar="PATH",
                   help="where to write the results (default benchmarks/RESULTS.md)")
    p.add_argument("--quick", action="store_true", help="small sizes, one repetition")
    p.add_argument("--only", metavar="NAMES", help="comma-separated problem names")
    p.set_defaults(run=run_bench)
    return parser


def _add_data_arguments(p):
    p.add_argument("data", nargs="?", metavar="DATA",
                   help="a .csv file with a header row, or a .npy file; default: the "
                   "bundled strike durations")
    p.add_argument("--column", metavar="COL",
                   help="column name or 0-based index (not needed for a one-column file)")


def _level(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}")
    return v


# -- runtime set-up -------------------------------------------------------------------------
def _setup_jax() -> None:
    """float64 for accurate fits. (The persistent compilation cache is mlefit's default,
    set when it is imported: ``MLEFIT_CACHE_DIR`` moves it or turns it off.)"""

    jax.config.update("jax_enable_x64", True)


# -- fitting and reporting ------------------------------------------------------------------
def fit_one(canonical: str, model, col):
    """Fits the model to the column; UsageError for data the model cannot take."""


    options = {}
    if sys.stderr.isatty() and "progress" in inspect.signature(mlefit.fit).parameters:
        options["progress"] = {"delay": 1.0}  # a bar only for fits longer than a second
    try:
        return mlefit.fit(model, jnp.asarray(col.values), **options)
    except ValueError as e:
        raise UsageError(f"{_where(col)}: cannot fit {display_name(canonical)}: {e}") from None


def _flat_names_values(tree, names=None):
    """Flattened ``(names, values)`` of a params-like pytree, in ``tree_leaves`` order."""

    out_names, out_values = [], []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        base = jax.tree_util.keystr(path, simple=True, separator=".") or "param"
        v = np.asarray(leaf, dtype=float)
        if v.ndim == 0:
            out_names.append(base)
            out_values.append(float(v))
        else:
            for idx in np.ndindex(v.shape):
                out_names.append(f"{base}[{','.join(map(str, idx))}]")
                out_values.append(float(v[idx]))
    if names is not None and len(names) == len(out_names):
        out_names = list(names)
    return out_names, out_values


def _finite_or_none(v: float):
    return v if math.isfinite(v) else None


def report(res, canonical: str, col, level: float) -> dict:
    """The result of one fit as plain data: what ``fit`` prints as text or JSON."""


    table = param_table(res, level)  # rows in res.param_names order
    names = table.names
    est, se, low, high = (
        np.asarray(table[:, c]).tolist() for c in ("estimate", "stderr", "ci_low", "ci_high")
    )
    status = res.status
    params = {
        n: {
            "estimate": _finite_or_none(e),
            "stderr": _finite_or_none(s),
            "ci_low": _finite_or_none(lo),
            "ci_high": _finite_or_none(hi),
        }
        for n, e, s, lo, hi in zip(names, est, se, low, high, strict=True)
    }
    return {
        "dist": display_name(canonical),
        "model": res.model_name,
        "data": {"source": col.path, "column": col.name, "n_obs": int(col.values.size)},
        "params": params,
        "level": level,
        "n_params": len(names),
        "loglik": _finite_or_none(float(res.loglik)),
        "aic": _finite_or_none(float(res.aic)),
        "bic": _finite_or_none(float(res.bic)),
        "converged": bool(np.asarray(res.converged)),
        "status": str(status),
        "message": status.message,
        "steps": int(res.steps),
        "grad_norm": float(res.grad_norm),
    }


def format_report(res, rep: dict) -> str:
    """The text of ``mlefit fit``: where the data came from, then ``res.summary``."""
    d = rep["data"]
    head = f"{rep['dist']} fit to {_source_label(d)}, n = {d['n_obs']}"
    return head + "\n\n" + res.summary(level=rep["level"])


# -- plot -----------------------------------------------------------------------------------
_PLOT_FORMATS = {"png", "pdf", "svg", "jpg", "jpeg", "eps", "ps", "tif", "tiff", "webp"}


def check_plot_target(path: str) -> None:
    """UsageError before any fitting when ``--plot`` cannot be honoured."""
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    if ext not in _PLOT_FORMATS:
        raise UsageError(
            f"--plot {path}: unknown image format {ext!r}; use a name ending in .png, .pdf or .svg"
        )
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UsageError(f"--plot {path}: the folder {parent} does not exist")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError(
            "--plot needs matplotlib, which is not installed: pip install 'mlefit[plot]'"
        ) from None


def write_plot(res, values, path: str, label: str | None = None) -> None:
    """Fitted density over the data (bars for a discrete model) and a Q-Q plot, to ``path``."""
    import matplotlib

    matplotlib.use("Agg", force=True)  # files only: never open a window from the CLI
    import matplotlib.pyplot as plt


    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    plot.density(res, values, ax=ax1, label=label)  # histogram or bars, from the model
    plot.qq(res, values, ax=ax2, label=label)
    try:
        fig.savefig(path, dpi=120)
    except OSError as e:
        raise UsageError(f"--plot {path}: cannot write the file ({e})") from None
    finally:
        plt.close(fig)


# -- commands -------------------------------------------------------------------------------
def run_fit(args) -> int:
    canonical, cls = resolve_dist(args.dist)
    if args.plot:
        check_plot_target(args.plot)
    col = load_data(args.data, args.column)
    model = make_model(canonical, cls, col)
    _setup_jax()  # only now, when the input is known to be good
    res = fit_one(canonical, model, col)
    rep = report(res, canonical, col, args.level)
    if args.plot:
        write_plot(res, col.values, args.plot, str(col.name))
    if args.json:
        print(json.dumps(_json_safe(rep), indent=2, allow_nan=False))
    else:
        print(format_report(res, rep))
        if args.plot:
            print(f"Plot written to {args.plot}")
    return EXIT_OK if rep["converged"] else EXIT_NOT_CONVERGED


def lr_row(restricted: str, full: str, res_r, res_f) -> dict:
    """The likelihood-ratio test of a nested pair, or why it is not reported."""
    restriction, boundary = _nested()[(restricted, full)]
    stat = max(2.0 * (float(res_f.loglik) - float(res_r.loglik)), 0.0)
    row = {
        "restricted": display_name(restricted),
        "full": display_name(full),
        "restriction": restriction,
        "statistic": stat,
        "df": None,
        "p_value": None,
        "note": None,
    }
    if boundary:
        row["note"] = (
            "boundary case: the restriction is on the edge of the parameter space, so the "
            "chi-square reference does not hold; no p-value"
        )
        return row

    test = mlefit.lr_test(res_r, res_f)
    row["statistic"], row["df"], row["p_value"] = test.statistic, test.df, test.pvalue
    return row


def run_compare(args) -> int:
    resolved = []
    for name in args.dist:
        canonical, cls = resolve_dist(name)
        if canonical in (c for c, _ in resolved):
            raise UsageError(f"--dist: {display_name(canonical)} is given twice")
        resolved.append((canonical, cls))
    if len(resolved) < 2:
        raise UsageError("compare needs at least two --dist options (use 'fit' for one)")
    col = load_data(args.data, args.column)
    models = {c: make_model(c, cls, col) for c, cls in resolved}
    _setup_jax()  # only now, when the input is known to be good
    fits = {c: fit_one(c, m, col) for c, m in models.items()}
    rows = []
    for c, res in fits.items():
        k = len(_flat_names_values(res.params)[0])
        rows.append({
            "dist": display_name(c),
            "n_params": k,
            "loglik": float(res.loglik),
            "aic": float(res.aic),
            "bic": float(res.bic),
            "status": str(res.status),
            "converged": bool(res.converged),
        })
    rows.sort(key=lambda r: (math.isnan(r["aic"]), r["aic"]))
    best = rows[0]["aic"]
    for r in rows:
        r["delta_aic"] = r["aic"] - best
    tests = [
        lr_row(r, f, fits[r], fits[f]) for (r, f) in _nested() if r in fits and f in fits
    ]
    out = {
        "data": {"source": col.path, "column": col.name, "n_obs": int(col.values.size)},
        "ranking": rows,
        "lr_tests": tests,
    }
    if args.json:
        print(json.dumps(_json_safe(out), indent=2, allow_nan=False))
    else:
        print(format_compare(out))
    return EXIT_OK if all(r["converged"] for r in rows) else EXIT_NOT_CONVERGED


def _json_safe(obj):
    if isinstance(obj, float):
        return _finite_or_none(obj)
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def _source_label(d: dict) -> str:
    if d["source"].startswith("bundled"):
        return d["source"]
    if d["source"].lower().endswith(".npy"):  # no header: the column is an index
        return f"{d['source']}, column {d['column']}"
    return f"{d['source']}, column {d['column']!r}"


def format_compare(out: dict) -> str:
    d = out["data"]
    src = _source_label(d)
    head = (
        f"{'rank':<6}{'dist':<18}{'k':>3}{'log-lik':>14}{'AIC':>14}{'dAIC':>10}{'BIC':>14}"
        f"  status"
    )
    lines = [f"models fitted to {src} (n = {d['n_obs']}), ranked by AIC", "", head, "-" * len(head)]
    for i, r in enumerate(out["ranking"], 1):
        lines.append(
            f"{i:<6}{r['dist']:<18}{r['n_params']:>3}{r['loglik']:>14.6g}{r['aic']:>14.6g}"
            f"{r['delta_aic']:>10.4g}{r['bic']:>14.6g}  {r['status']}"
        )
    if out["lr_tests"]:
        lines += ["", "likelihood-ratio tests (nested models):"]
        for t in out["lr_tests"]:
            head = (f"  {t['restricted']} within {t['full']} ({t['restriction']}): "
                    f"LR = {t['statistic']:.4g}")
            if t["p_value"] is None:
                lines.append(f"{head}; {t['note']}")
            else:
                lines.append(f"{head}, df = {t['df']}, p = {t['p_value']:.4g}")
    return "\n".join(lines)


def repo_root() -> Path | None:
    """The source checkout with ``benchmarks/run.py``: the one of the imported ``mlefit``
    (an editable install), else the current folder if it is a clone; ``None`` if neither."""
    for root in (Path(__file__).resolve().parent.parent, Path.cwd()):
        if (root / "benchmarks" / "run.py").is_file() and (root / "mlefit").is_dir():
            return root
    return None


def run_bench(args) -> int:
    root = repo_root()
    if root is None:
        raise UsageError(
            "the benchmark suite lives in the source repository, not in the installed "
            "package: clone mlefit, 'pip install -e .[bench]', and run 'mlefit bench' "
            "(or 'python -m benchmarks.run') from the clone"
        )
    cmd = [sys.executable, "-m", "benchmarks.run"]
    if args.quick:
        cmd.append("--quick")
    if args.only:
        cmd += ["--only", args.only]
    if args.path:
        cmd += ["--out", os.path.abspath(args.path)]
    return subprocess.call(cmd, cwd=root)
