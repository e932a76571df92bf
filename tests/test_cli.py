"""The command line, run in-process (``main([...])``) plus one real subprocess.

Every bad input must be ONE line on stderr, exit status 2, no traceback, and no file
written; the expected numbers come from closed forms or scipy, never from mlefit.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.stats

import mlefit
from mlefit import _cli, datasets
from mlefit._cli import main

SETUP_CALLS: list = []


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Each test runs in its own empty folder; the JAX set-up before a fit is only counted
    (tests/conftest.py has turned float64 on)."""
    monkeypatch.chdir(tmp_path)
    SETUP_CALLS.clear()
    monkeypatch.setattr(_cli, "_setup_jax", lambda: SETUP_CALLS.append(1))


def _write(path, text):
    with open(path, "w", newline="") as f:
        f.write(text)
    return str(path)


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _assert_usage_error(tmp_path, capsys, argv, pattern):
    before = sorted(os.listdir(tmp_path))
    code, out, err = _run(capsys, *argv)
    assert code == 2, (code, out, err)
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("mlefit: error: "), err
    assert "Traceback" not in err
    import re

    assert re.search(pattern, err), err
    assert sorted(os.listdir(tmp_path)) == before  # nothing written
    assert not SETUP_CALLS  # rejected before anything is set up for fitting
    return err


# -- version, help, usage --------------------------------------------------------------------
def test_version(capsys):
    code, out, _ = _run(capsys, "--version")
    assert code == 0 and out.strip() == f"mlefit {mlefit.__version__}"


@pytest.mark.parametrize("command", [[], ["fit"], ["compare"], ["bench"]])
def test_help_has_an_example(capsys, command):
    code, out, _ = _run(capsys, *command, "--help")
    assert code == 0
    assert "example" in out and "mlefit " in out.split("example", 1)[1]


@pytest.mark.parametrize(
    "argv, pattern",
    [
        ([], r"choose a command: fit, compare or bench"),
        (["fit"], r"the following arguments are required: --dist"),
        (["fit", "--dist", "normal", "--level", "1.5"], r"--level: expected a number in \(0, 1\)"),
        (["frobnicate"], r"invalid choice: 'frobnicate'"),
        (["compare", "--dist", "normal"], r"at least two --dist"),
        (["compare", "--dist", "normal", "--dist", "gaussian"], r"normal is given twice"),
    ],
)
def test_usage_errors_are_one_line(tmp_path, capsys, argv, pattern):
    _assert_usage_error(tmp_path, capsys, argv, pattern)


def test_unknown_dist_lists_the_valid_ones(tmp_path, capsys):
    err = _assert_usage_error(
        tmp_path, capsys, ["fit", "--dist", "gamma2"], r"--dist: unknown distribution 'gamma2'"
    )
    valid = err.split("valid:", 1)[1]
    for name in ("normal", "lognormal", "exponential", "gamma", "weibull", "beta", "studentt",
                 "laplace", "poisson", "negbinomial", "bernoulli"):
        assert f" {name}" in valid
    # conditional models, mixtures and vector observations need more than one column
    assert "logistic" not in valid.split() and "mixture" not in valid
    assert "multivariatenormal" not in valid


# -- bad data ---------------------------------------------------------------------------------
BAD_FILES = [
    # (file name, content, extra args, expected message)
    ("nofile.csv", None, [], r"nofile\.csv: no such file"),
    ("two.csv", "a,b\n1,2\n", [], r"two\.csv: the header on line 1 has 2 columns \('a', 'b'\); "
     r"choose one with --column"),
    ("two.csv", "a,b\n1,2\n", ["--column", "c"], r"two\.csv: no column 'c'; the header on line 1 "
     r"has 'a', 'b'"),
    ("two.csv", "a,b\n1,2\n", ["--column", "2"], r"two\.csv: no column 2; .*indices 0 to 1"),
    ("text.csv", "x\n1.5\n2\nabc\n", [], r"text\.csv, line 4, column 'x': 'abc' is not a number"),
    ("nan.csv", "x,y\n1,2\nNaN,3\n", ["--column", "x"],
     r"nan\.csv, line 3, column 'x': missing value 'NaN'"),
    ("empty_cell.csv", "x,y\n1,2\n,3\n", ["--column", "0"],
     r"empty_cell\.csv, line 3, column 'x': empty cell"),
    ("short.csv", "x,y\n1,2\n3\n", ["--column", "y"],
     r"short\.csv, line 3, column 'y': missing value \(the row has only 1 field"),
    ("dec.csv", "x;y\n1,5;2\n2,5;3\n", ["--column", "x"],
     r"dec\.csv, line 2, column 'x': '1,5' is not a number \(a decimal comma\?"),
    ("inf.csv", "x\n1\ninf\n", [], r"inf\.csv, line 3, column 'x': 'inf' is not a finite number"),
    ("header_only.csv", "x\n", [], r"header_only\.csv, column 'x': no values \(the file has a "
     r"header on line 1 but no data rows\)"),
    ("blank.csv", "\n\n", [], r"blank\.csv: the file is empty"),
    ("neg.csv", "x\n1.0\n2.0\n-3.0\n", [], r"neg\.csv, line 4, column 'x': data outside the "
     r"support of gamma: data\[2\] = -3\.0"),
    ("same.csv", "x\n2\n2\n2\n", [], r"same\.csv, column 'x': cannot fit gamma: .*all 3 "
     r"observations are equal"),
    # a header with a name twice: never the first one silently (issue 17)
    ("dup.csv", "x,x\n1,5\n2,6\n", ["--column", "x"], r"dup\.csv: the header on line 1 has "
     r"the column 'x' twice \(indices 0, 1\); rename the columns, or choose one by its 0-based"),
    ("dup3.csv", "y;x;x;x\n0;1;2;3\n", ["--column", " x "], r"dup3\.csv: the header on line 1 "
     r"has the column 'x' 3 times \(indices 1, 2, 3\)"),
    ("dup.csv", "x,x\n1,5\n2,6\n", [], r"dup\.csv: the header on line 1 has 2 columns "
     r"\('x', 'x'\); choose one with --column INDEX \('x' more than once\)$"),
]


@pytest.mark.parametrize("name, content, extra, pattern", BAD_FILES)
def test_bad_csv_is_one_line_exit_2(tmp_path, capsys, name, content, extra, pattern):
    if content is not None:
        _write(tmp_path / name, content)
    _assert_usage_error(tmp_path, capsys, ["fit", name, "--dist", "gamma", *extra], pattern)


def test_bad_npy(tmp_path, capsys):
    np.save(tmp_path / "nan.npy", np.array([1.0, np.nan, 2.0]))
    np.save(tmp_path / "m.npy", np.ones((4, 3)))
    np.save(tmp_path / "s.npy", np.array(["a", "b"]))
    _assert_usage_error(tmp_path, capsys, ["fit", "nan.npy", "--dist", "normal"],
                        r"nan\.npy, index 1, column 0: value nan is not a finite number")
    _assert_usage_error(tmp_path, capsys, ["fit", "m.npy", "--dist", "normal"],
                        r"m\.npy: the array has 3 columns; choose one with --column INDEX")
    _assert_usage_error(tmp_path, capsys, ["fit", "m.npy", "--dist", "normal", "--column", "x"],
                        r"m\.npy: a \.npy file has no column names")
    _assert_usage_error(tmp_path, capsys, ["fit", "s.npy", "--dist", "normal"],
                        r"s\.npy: expected a numeric array")


def test_support_error_in_npy_names_the_index(tmp_path, capsys):
    np.save(tmp_path / "c.npy", np.array([0.0, 2.0, 1.5]))
    _assert_usage_error(tmp_path, capsys, ["fit", "c.npy", "--dist", "poisson"],
                        r"c\.npy, index 2, column 0: data outside the support of poisson")


def test_plot_without_matplotlib(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    _assert_usage_error(tmp_path, capsys, ["fit", "--dist", "normal", "--plot", "f.png"],
                        r"--plot needs matplotlib.*pip install 'mlefit\[plot\]'")


def test_plot_bad_target(tmp_path, capsys):
    _assert_usage_error(tmp_path, capsys, ["fit", "--dist", "normal", "--plot", "f.xyz"],
                        r"unknown image format 'xyz'")
    _assert_usage_error(tmp_path, capsys, ["fit", "--dist", "normal", "--plot", "no/dir/f.png"],
                        r"the folder .* does not exist")


# -- the reader, directly ---------------------------------------------------------------------
def test_read_column_variants(tmp_path):
    # semicolon- and tab-separated files, a BOM, spaces around cells, a blank last line
    p = _write(tmp_path / "s.csv", "\ufeffa; b\n1; 2.5\n3;4e1\n\n")
    np.testing.assert_array_equal(datasets.read_column(p, "b"), [2.5, 40.0])
    np.testing.assert_array_equal(datasets.read_column(p, 0), [1.0, 3.0])
    p = _write(tmp_path / "t.csv", "a\tb\n1\t2\n")
    np.testing.assert_array_equal(datasets.read_column(p, "b"), [2.0])
    np.save(tmp_path / "m.npy", np.arange(6).reshape(3, 2))
    np.testing.assert_array_equal(datasets.read_column(tmp_path / "m.npy", "1"), [1.0, 3.0, 5.0])
    col = datasets.read_column_with_lines(_write(tmp_path / "l.csv", "x\n\n7\n8\n"))
    assert col.lines.tolist() == [3, 4] and col.name == "x"
    # a name that is in the header twice is chosen by its index
    p = _write(tmp_path / "dup.csv", "x,x\n1,5\n2,6\n")
    np.testing.assert_array_equal(datasets.read_column(p, 1), [5.0, 6.0])


def test_bundled_data():
    x = datasets.strikes()
    # the published data: 62 strikes, durations 1..216 days (statsmodels' strikes.csv)
    assert x.shape == (62,) and x.min() == 1 and x.max() == 216
    assert x.dtype == np.float64
    assert os.path.getsize(datasets.strikes_path()) < 50_000
    assert (datasets.strikes_path().parent / "README.md").is_file()


# -- fits -------------------------------------------------------------------------------------
def test_fit_json_matches_closed_form(tmp_path, capsys):
    # 62 observations, like the bundled data: the compiled Normal fit is shared
    x = np.random.default_rng(0).normal(3.0, 2.0, 62)
    rows = "".join(f"{i},{float(v)!r}\n" for i, v in enumerate(x))
    _write(tmp_path / "d.csv", "id,value\n" + rows)
    code, out, err = _run(capsys, "fit", "d.csv", "--column", "value", "--dist", "normal",
                          "--json", "--level", "0.9")
    assert code == 0, err
    rep = json.loads(out)  # stdout is JSON and nothing else
    assert set(rep) >= {"dist", "data", "params", "level", "loglik", "aic", "bic", "converged",
                        "status", "n_params"}
    assert rep["data"]["n_obs"] == 62 and rep["level"] == 0.9 and rep["converged"]
    mu, sigma = x.mean(), x.std()  # closed-form MLE
    p = rep["params"]
    assert set(p) == {"loc", "scale"}
    # the fit stops at gradient 1e-9 on the mean NLL: estimates to ~1e-8 relative
    assert p["loc"]["estimate"] == pytest.approx(mu, rel=1e-7)
    assert p["scale"]["estimate"] == pytest.approx(sigma, rel=1e-7)
    # stderr of the mean sigma/sqrt(n); Wald interval mu -/+ z_0.95 * se
    se = sigma / math.sqrt(x.size)
    assert p["loc"]["stderr"] == pytest.approx(se, rel=1e-6)
    z = scipy.stats.norm.ppf(0.95)
    assert p["loc"]["ci_low"] == pytest.approx(mu - z * se, rel=1e-6)
    assert p["loc"]["ci_high"] == pytest.approx(mu + z * se, rel=1e-6)
    ll = scipy.stats.norm.logpdf(x, mu, sigma).sum()
    assert rep["loglik"] == pytest.approx(ll, rel=1e-10)
    assert rep["aic"] == pytest.approx(2 * 2 - 2 * ll, rel=1e-10)
    assert rep["bic"] == pytest.approx(2 * math.log(62) - 2 * ll, rel=1e-10)


def test_fit_bundled_text_summary_and_plot(tmp_path, capsys):
    code, out, err = _run(capsys, "fit", "--dist", "gamma", "--plot", "fit.png")
    assert code == 0, err
    assert sorted(os.listdir(tmp_path)) == ["fit.png"]  # nothing else written
    assert (tmp_path / "fit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    x = datasets.strikes()
    shape, _, scale = scipy.stats.gamma.fit(x, floc=0)
    ll = scipy.stats.gamma.logpdf(x, shape, scale=scale).sum()
    for word in ("strikes.csv", "n = 62", "estimate", "std err", "[0.025", "0.975]",
                 "Log-likelihood:", "AIC:", "BIC:", "Status:         converged"):
        assert word in out
    line = next(s for s in out.splitlines() if s.startswith("Log-likelihood:"))
    # the summary shows 6 significant digits
    assert float(line.split()[1]) == pytest.approx(ll, rel=1e-5)
    assert out.rstrip().endswith("Plot written to fit.png")


def test_compare_ranks_by_aic_with_lr_tests(tmp_path, capsys):
    code, out, err = _run(capsys, "compare", "--dist", "exponential", "--dist", "gamma",
                          "--dist", "weibull", "--json")
    assert code == 0, err
    rep = json.loads(out)
    x = datasets.strikes()
    # closed-form exponential MLE, scipy for gamma and weibull (location fixed at 0)
    ll = {
        "exponential": scipy.stats.expon.logpdf(x, scale=x.mean()).sum(),
        "gamma": scipy.stats.gamma.logpdf(x, *scipy.stats.gamma.fit(x, floc=0)).sum(),
        "weibull": scipy.stats.weibull_min.logpdf(
            x, *scipy.stats.weibull_min.fit(x, floc=0)).sum(),
    }
    aic = {"exponential": 2 - 2 * ll["exponential"], "gamma": 4 - 2 * ll["gamma"],
           "weibull": 4 - 2 * ll["weibull"]}
    assert [r["dist"] for r in rep["ranking"]] == sorted(aic, key=aic.get)
    for r in rep["ranking"]:
        assert r["aic"] == pytest.approx(aic[r["dist"]], rel=1e-7)
    tests = {(t["restricted"], t["full"]): t for t in rep["lr_tests"]}
    assert set(tests) == {("exponential", "gamma"), ("exponential", "weibull")}
    t = tests[("exponential", "gamma")]
    lr = 2 * (ll["gamma"] - ll["exponential"])
    assert t["df"] == 1 and t["statistic"] == pytest.approx(lr, rel=1e-6, abs=1e-8)
    assert t["p_value"] == pytest.approx(scipy.stats.chi2.sf(lr, 1), rel=1e-5)


def test_compare_boundary_case_has_no_p_value(tmp_path, capsys):
    x = np.random.default_rng(1).standard_t(2.5, 62)
    np.save(tmp_path / "t.npy", x)
    code, out, err = _run(capsys, "compare", "t.npy", "--dist", "normal", "--dist", "studentt")
    assert code in (0, 1), err
    line = next(s for s in out.splitlines() if "normal within studentt" in s)
    assert "boundary" in line and "p =" not in line
    assert out.index("studentt") < out.index("normal ")  # t-distributed data: studentt first


def test_not_converged_is_exit_1_and_says_so(tmp_path, capsys, monkeypatch):
    real_fit_one = _cli.fit_one

    def stopped_early(canonical, model, col):  # the same fit, as if max_steps ran out
        res = real_fit_one(canonical, model, col)
        return dataclasses.replace(res, status_code=np.asarray(mlefit.Status.MAX_STEPS))

    monkeypatch.setattr(_cli, "fit_one", stopped_early)
    code, out, _ = _run(capsys, "fit", "--dist", "normal", "--json")
    rep = json.loads(out)
    assert code == 1 and rep["converged"] is False and rep["status"] == "max_steps"
    code, out, _ = _run(capsys, "fit", "--dist", "normal")
    assert code == 1 and "stopped at max_steps" in out


def test_bench_outside_a_checkout(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(_cli, "repo_root", lambda: None)
    _assert_usage_error(tmp_path, capsys, ["bench"], r"clone mlefit")


def test_bench_runs_the_suite_module(tmp_path, capsys, monkeypatch):
    calls = []
    monkeypatch.setattr(_cli, "repo_root", lambda: tmp_path)
    monkeypatch.setattr(_cli.subprocess, "call", lambda cmd, cwd: calls.append((cmd, cwd)) or 0)
    assert main(["bench", "out.md", "--quick"]) == 0
    (cmd, cwd), = calls
    assert cmd[1:] == ["-m", "benchmarks.run", "--quick", "--out", str(tmp_path / "out.md")]
    assert cwd == tmp_path


def test_console_entry_point_subprocess(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", MLEFIT_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-m", "mlefit", "fit", "--dist", "normal", "--json"],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    x = datasets.strikes()
    rep = json.loads(proc.stdout)
    # the Normal MLE in closed form: mean and biased standard deviation
    assert rep["params"]["loc"]["estimate"] == pytest.approx(x.mean(), rel=1e-12)
    assert rep["params"]["scale"]["estimate"] == pytest.approx(x.std(), rel=1e-9)


def test_console_duplicate_column_and_unusable_cache_folder(tmp_path):
    """Through ``python -m mlefit`` (issue 17): a header with the column twice is one error
    line and exit 2; an unusable MLEFIT_CACHE_DIR is one warning line, and the fit runs."""
    _write(tmp_path / "dup.csv", "x,x\n1,5\n2,6\n4,7\n")
    (tmp_path / "a_file").write_text("not a folder")
    base = dict(os.environ, JAX_PLATFORMS="cpu")
    runs = {
        "dup": (["fit", "dup.csv", "--dist", "normal", "--column", "x"],
                dict(base, MLEFIT_CACHE_DIR=str(tmp_path / "cache"))),
        "cache": (["fit", "--dist", "normal", "--json"],
                  dict(base, MLEFIT_CACHE_DIR=str(tmp_path / "a_file" / "cache"))),
    }
    procs = {k: subprocess.Popen([sys.executable, "-m", "mlefit", *argv], env=env,
                                 cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
             for k, (argv, env) in runs.items()}
    out = {k: (*p.communicate(timeout=240), p.returncode) for k, p in procs.items()}

    stdout, stderr, code = out["dup"]
    assert code == 2 and stdout == "" and stderr.count("\n") == 1, stderr
    assert stderr.startswith("mlefit: error: dup.csv: the header on line 1 has the column 'x' "
                             "twice (indices 0, 1)")
    assert not list((tmp_path / "cache").iterdir())  # rejected before compiling anything

    stdout, stderr, code = out["cache"]
    assert code == 0 and stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    assert (f"RuntimeWarning: MLEFIT_CACHE_DIR='{tmp_path}/a_file/cache': the cache folder "
            f"'{tmp_path}/a_file/cache' is below a file") in stderr
    x = datasets.strikes()  # the bundled data; the Normal MLE is the sample mean
    assert json.loads(stdout)["params"]["loc"]["estimate"] == pytest.approx(x.mean(), rel=1e-12)
