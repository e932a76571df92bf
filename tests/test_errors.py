"""Unclear errors made clear (issue 17), and inference on streamed fits.

Each bad input is a one-line reproducer checked by its message; the inference of a
streamed fit is checked against the same fit in memory (a different code path: the
Hessian over all data at once) and against the closed form of the Gaussian MLE's
standard errors (``sigma / sqrt(n)`` and ``sigma / sqrt(2 n)``).
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import jax.scipy.stats as st
import numpy as np
import optax
import pytest

import mlefit
from mlefit import models

RNG = np.random.default_rng(17)
N = 301  # not a multiple of the chunk size: the last chunk is padded
X = RNG.normal(1.5, 2.0, size=N)
XD = np.c_[RNG.normal(size=N), RNG.normal(size=N)]  # a design matrix (n, 2)
YD = XD @ np.array([1.0, -0.5]) + 0.3 + RNG.normal(0.0, 0.7, size=N)


def normal(p, x):
    return st.norm.logpdf(x, p["mu"], p["sigma"])


def linear(p, x, y):
    return st.norm.logpdf(y, x @ p["b"] + p["c"], p["s"])


def normal_init():
    return {"mu": 0.0, "sigma": mlefit.Positive(1.0)}


def linear_init():
    return {"b": jnp.zeros(2), "c": 0.0, "s": mlefit.Positive(1.0)}


# ---------------------------------------------------------------------------------------
# 1. Inference on a streamed fit: one pass over the stream
# ---------------------------------------------------------------------------------------
@functools.cache
def normal_fits():
    """The Gaussian fit in memory, over an ArrayStream, and over a list of batches."""
    mem = mlefit.fit(normal, X, normal_init())
    arr = mlefit.fit(normal, mlefit.ArrayStream(X, chunk_size=64), normal_init())
    batches = [(X[i:i + 100],) for i in range(0, N, 100)]
    lst = mlefit.fit(normal, mlefit.batches(batches), normal_init())
    return mem, arr, lst


def test_streamed_stderr_equals_in_memory_and_the_closed_form():
    mem, arr, lst = normal_fits()
    for res in (arr, lst):
        assert res.data is None  # nothing kept in memory: the inference re-reads the stream
        for name in ("mu", "sigma"):
            # Both fits stop at gradient max-norm <= 1e-9 on the mean NLL, whose curvature
            # is 1 / sigma^2 ~ 0.25: estimates (and the stderr) agree to ~4e-9 relative.
            np.testing.assert_allclose(res.stderr[name], mem.stderr[name], rtol=1e-8)
        # The off-diagonal is 0 only at the exact MLE: at fits stopped within tol it is
        # of the order of the gradient, so it is compared on the scale of the matrix.
        scale = float(np.max(np.abs(np.asarray(mem.cov))))
        np.testing.assert_allclose(res.cov, mem.cov, rtol=1e-8, atol=1e-8 * scale)
    sigma = X.std()  # the Gaussian MLE: mean and biased standard deviation
    np.testing.assert_allclose(arr.stderr["mu"], sigma / np.sqrt(N), rtol=1e-8)
    np.testing.assert_allclose(arr.stderr["sigma"], sigma / np.sqrt(2 * N), rtol=1e-8)


def test_streamed_summary_and_wald_interval():
    mem, arr, _ = normal_fits()
    text = arr.summary()
    assert "std err" in text and "sigma" in text
    np.testing.assert_allclose(arr.confint(0.9), mem.confint(0.9), rtol=1e-8)
    z = 1.6448536269514722  # the 95% quantile of N(0, 1)
    se = X.std() / np.sqrt(N)
    np.testing.assert_allclose(arr.confint(0.9)[0], X.mean() + np.array([-z, z]) * se,
                               rtol=1e-8)


def test_streamed_sandwich_with_weights_equals_the_closed_form():
    w = RNG.uniform(0.5, 2.0, size=N)
    res = mlefit.fit(linear, mlefit.ArrayStream((XD, YD), weights=w, chunk_size=50),
                     linear_init())
    # Weighted least squares is the MLE of (b, c); s^2 = sum w r^2 / sum w.
    A = np.c_[XD, np.ones(N)]
    beta = np.linalg.solve(A.T @ (w[:, None] * A), A.T @ (w * YD))
    r = YD - A @ beta
    s = np.sqrt(np.sum(w * r**2) / np.sum(w))
    np.testing.assert_allclose(res.params["b"], beta[:2], rtol=1e-7)
    np.testing.assert_allclose(res.params["s"], s, rtol=1e-7)
    # Per-observation score of log N(y; a.beta, s) in (beta, s) and the Hessian of the
    # total NLL; sandwich = H^-1 (sum w_i s_i s_i^T) H^-1 (statsmodels' HC0).
    score = np.c_[r[:, None] * A / s**2, -1 / s + r**2 / s**3]
    info = np.zeros((4, 4))
    info[:3, :3] = (w[:, None] * A).T @ A / s**2
    info[:3, 3] = info[3, :3] = 2 * (w * r) @ A / s**3
    info[3, 3] = np.sum(w * (3 * r**2 / s**4 - 1 / s**2))
    h_inv = np.linalg.inv(info)
    sandwich = h_inv @ (score.T @ (w[:, None] * score)) @ h_inv
    # res.param_names order: b[0], b[1], c, s (sorted dict keys, then the array)
    np.testing.assert_allclose(res.covariance("sandwich"), sandwich, rtol=1e-6, atol=1e-12)


def test_streamed_profile_interval_says_what_to_do():
    _, arr, _ = normal_fits()
    with pytest.raises(ValueError, match=r"needs the data in memory.*method='wald'"):
        arr.confint(method="profile")
    with pytest.raises(ValueError, match=r"profile: needs the data in memory"):
        arr.profile("mu", [1.0, 2.0])


def test_one_shot_iterator_stderr_says_what_to_do():
    it = iter([(X[:150],), (X[150:300],)])
    res = mlefit.fit(normal, mlefit.batches(it), normal_init(), batch_size=50, epochs=1,
                     optimizer=optax.sgd(1e-2), key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"one-shot iterator.*re-iterable"):
        res.stderr  # noqa: B018 - the property raises


# ---------------------------------------------------------------------------------------
# 2. NaN in a stream: the row, the column and the chunk or batch
# ---------------------------------------------------------------------------------------
def test_stream_nan_in_memory_is_named_before_fitting():
    x = XD.copy()
    x[123, 1] = np.nan
    with pytest.raises(ValueError, match=r"data\[0\]: row 123, column 1 is nan \(chunk 2 of "
                                         r"chunk_size 50"):
        mlefit.ArrayStream((x, YD), chunk_size=50)


def test_stream_nan_in_a_file_is_named_at_its_chunk(tmp_path):
    x = X.copy()
    x[250] = np.inf
    np.save(tmp_path / "x.npy", x)
    s = mlefit.ArrayStream(str(tmp_path / "x.npy"), chunk_size=100)  # nothing read yet
    with pytest.raises(ValueError, match=r"data: row 250 is inf \(chunk 2 of 4, 100 rows each"):
        mlefit.fit(normal, s, normal_init())


def test_stream_nan_in_a_batch_of_an_iterable():
    y = YD.copy()
    batches = [(XD[i:i + 100], y[i:i + 100]) for i in range(0, 300, 100)]
    batches[2][1][7] = np.nan  # row 207 of the stream
    with pytest.raises(ValueError, match=r"data\[1\]: row 207 is nan \(batch 2 of epoch 0, "
                                         r"its row 7"):
        mlefit.fit(linear, mlefit.batches(batches), linear_init())


# ---------------------------------------------------------------------------------------
# 3. Data too large (or small) for the moments of a ready-made model's start
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("model", "data", "name"),
    [
        (models.Normal(), lambda s: X * s, "data"),
        (models.MultivariateNormal(), lambda s: XD * s, "data"),
        (models.LinearGaussian(), lambda s: (XD, YD * s), r"data\[1\]"),
    ],
)
def test_data_overflowing_the_start_is_blamed_on_the_data(model, data, name):
    with pytest.raises(ValueError, match=rf"^{name}: values up to .*e\+300 overflow float64 in "
                                         rf"the moments the {model.name} start needs.*"
                                         r"divide by 1e\+300"):
        mlefit.fit(model, data(1e300))
    with pytest.raises(ValueError, match=rf"^{name}: values at most .*e-300 in magnitude "
                                         r"underflow float64.*multiply by 1e\+30"):
        mlefit.fit(model, data(1e-300))


def test_data_overflowing_the_start_in_fit_many_and_streams():
    with pytest.raises(ValueError, match=r"data set 0: data: values up to .* overflow float64"):
        mlefit.fit_many(models.Normal(), np.stack([X, X]) * 1e300)
    with pytest.raises(ValueError, match=r"^data: values up to .* overflow float64"):
        mlefit.fit(models.Normal(), mlefit.ArrayStream(X * 1e300, chunk_size=64))


def test_cli_data_overflow_through_the_console_script(tmp_path):
    path = tmp_path / "big.csv"
    path.write_text("x\n" + "\n".join(f"{v:.17g}" for v in X[:20] * 1e300) + "\n")
    env = dict(os.environ, JAX_PLATFORMS="cpu", MLEFIT_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-m", "mlefit", "fit", str(path), "--dist", "normal"],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == "" and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("mlefit: error: ")
    assert "overflow float64 in the moments the Normal start needs" in proc.stderr
    assert "init:" not in proc.stderr


# ---------------------------------------------------------------------------------------
# 4. A log-density that is not finite at the start: suspects only when plausible
# ---------------------------------------------------------------------------------------
def nan_above_3(p, x):
    return st.norm.logpdf(x, p["mu"], p["sigma"]) + jnp.where(x > 3.0, jnp.nan, 0.0)


def inf_above_3(p, x):
    return st.norm.logpdf(x, p["mu"], p["sigma"]) + jnp.where(x > 3.0, jnp.inf, 0.0)


def log_scale(p, x):
    return -0.5 * ((x - p["mu"]) / p["sigma"]) ** 2 - jnp.log(p["sigma"])


def test_nan_for_some_observations_names_no_suspect():
    first = int(np.argmax(X > 3.0))
    count = int((X > 3.0).sum())
    with pytest.raises(ValueError) as e:
        mlefit.fit(nan_above_3, X, {"mu": 0.0, "sigma": mlefit.Positive(1.0)})
    msg = str(e.value)
    assert f"log p is not finite for {count} of {N} observations ({count} NaN)" in msg
    assert f"the first at index {first} (data[{first}] = " in msg
    assert "Suspects" not in msg and "scale must be" not in msg
    assert "No sign change of a parameter makes it finite" in msg


def test_nan_for_some_observations_of_a_stream_names_the_chunk():
    first = int(np.argmax(X > 3.0))
    chunk, row = divmod(first, 64)
    with pytest.raises(ValueError, match=rf"not finite in chunk {chunk} of the stream \(rows "
                                         rf"{64 * chunk} to .* the first at index {row} ") as e:
        mlefit.fit(nan_above_3, mlefit.ArrayStream(X, chunk_size=64),
                   {"mu": 0.0, "sigma": mlefit.Positive(1.0)})
    assert "Suspects" not in str(e.value)


def test_inf_for_some_observations_is_an_infinite_density():
    with pytest.raises(ValueError, match=r"\+inf\).*infinite density") as e:
        mlefit.fit(inf_above_3, X, {"mu": 0.0, "sigma": mlefit.Positive(1.0)})
    assert "Suspects" not in str(e.value)


def test_a_negative_unconstrained_scale_is_the_one_suspect():
    with pytest.raises(ValueError, match=r"Suspects: sigma=-2\.0: with sigma=2\.0 log p is "
                                         r"finite") as e:
        mlefit.fit(log_scale, X, {"mu": -1.0, "sigma": -2.0})
    assert "mu=-1.0:" not in str(e.value)  # mu is negative but not a suspect


# ---------------------------------------------------------------------------------------
# 5. Python control flow on traced values
# ---------------------------------------------------------------------------------------
def py_if(p, x):
    if x > 0:
        return st.norm.logpdf(x, p["mu"], 1.0)
    return st.norm.logpdf(x, p["mu"], 2.0)


def py_while(p, x):
    while x > 10:
        x = x - 1
    return st.norm.logpdf(x, p["mu"], 1.0)


def py_float(p, x):
    return st.norm.logpdf(x, float(p["mu"]), 1.0)


def py_int(p, x):
    return st.norm.logpdf(x, p["mu"], 1.0) * int(x)


def py_numpy(p, x):
    return st.norm.logpdf(np.asarray(x), p["mu"], 1.0)


@pytest.mark.parametrize("model", [py_if, py_while, py_float, py_int, py_numpy])
def test_python_control_flow_on_traced_values(model):
    with pytest.raises(TypeError, match=rf"model: '{model.__name__}' uses a traced value.*use "
                                        r"jnp.where \(or lax.cond\) instead of a Python if") as e:
        mlefit.fit(model, X, {"mu": 0.0})
    assert isinstance(e.value.__cause__, jax.errors.JAXTypeError)


def test_python_if_in_fit_many_and_streams():
    match = r"model: 'py_if' uses a traced value.*jnp.where"
    with pytest.raises(TypeError, match=match):
        mlefit.fit_many(py_if, np.stack([X, X]), {"mu": 0.0})
    with pytest.raises(TypeError, match=match):
        mlefit.fit(py_if, mlefit.ArrayStream(X, chunk_size=64), {"mu": 0.0})


class _TwoArgError(Exception):
    def __init__(self, code, detail):
        super().__init__(f"{code}: {detail}")


def test_other_model_errors_keep_their_type_or_become_type_errors():
    with pytest.raises(KeyError, match=r"model: calling missing_key\(params, \*obs\)"):
        mlefit.fit(missing_key, X, {"mu": 0.0})

    def two_arg(p, x):
        raise _TwoArgError(3, "bad")

    with pytest.raises(TypeError, match=r"model: calling two_arg.*failed: 3: bad"):
        mlefit.fit(two_arg, X, {"mu": 0.0})


def missing_key(p, x):
    return st.norm.logpdf(x, p["loc"], 1.0)


# ---------------------------------------------------------------------------------------
# 6. Complex data: the data are named, before compiling
# ---------------------------------------------------------------------------------------
COMPLEX = r"got complex numbers \(dtype complex128\); expected real numbers"


def test_complex_data_is_named_in_fit_fit_many_and_streams():
    z = X.astype(complex)
    with pytest.raises(TypeError, match=rf"^data: {COMPLEX}"):
        mlefit.fit(normal, z, normal_init())
    with pytest.raises(TypeError, match=rf"^data\[1\]: {COMPLEX}"):
        mlefit.fit(linear, (XD, YD.astype(complex)), linear_init())
    with pytest.raises(TypeError, match=rf"^data: {COMPLEX}"):
        mlefit.fit_many(normal, np.stack([z, z]), normal_init())
    with pytest.raises(TypeError, match=rf"^data: {COMPLEX}"):
        mlefit.ArrayStream(z)
    with pytest.raises(TypeError, match=rf"^data: {COMPLEX}"):
        mlefit.fit(normal, mlefit.batches([(z[:100],), (z[100:],)]), normal_init())
    with pytest.raises(TypeError, match=rf"^weights: {COMPLEX}"):
        mlefit.fit(normal, X, normal_init(), weights=np.ones(N, complex))


# -- found by a user's review (2026-12-03) ------------------------------------------------
def test_pandas_rows_with_different_indexes_are_refused():
    pd = pytest.importorskip("pandas")
    X = pd.DataFrame(XD, columns=["a", "b"])
    y = pd.Series(YD, name="y")
    shuffled = y.sample(frac=1.0, random_state=0)  # the same rows in another order
    k = int(np.flatnonzero(shuffled.index.to_numpy() != np.arange(N))[0])
    with pytest.raises(ValueError, match=rf"data\[1\]: its index differs from data\[0\]'s "
                       rf"\(row {k}: {shuffled.index[k]} against {k}\); rows are paired"):
        mlefit.fit(models.LinearGaussian(), (X, shuffled))
    w = pd.Series(np.ones(N), index=np.arange(N) + 1)
    with pytest.raises(ValueError, match=r"weights: its index differs from data\[0\]'s"):
        mlefit.fit(models.LinearGaussian(), (X, y), weights=w)
    # aligned (or arrays, which have no index) fit as before; realigned equals the original
    ref = mlefit.fit(models.LinearGaussian(), (XD, YD))
    again = mlefit.fit(models.LinearGaussian(), (X, shuffled.loc[X.index]))
    np.testing.assert_allclose(np.asarray(again.params["coef"]), np.asarray(ref.params["coef"]),
                               rtol=1e-10)


def test_weights_of_strings_are_a_type_error():
    with pytest.raises(TypeError, match=r"weights: expected numbers \(one per observation\), "
                       r"got dtype <U1"):
        mlefit.fit(normal, X, {"mu": 0.0, "sigma": mlefit.Positive(1.0)},
                   weights=np.array(["2"] * N))


@pytest.mark.parametrize("model, data, message", [
    (models.LinearGaussian(), XD, r"LinearGaussian takes a tuple \(x, y\) of 2 arrays, got "
     r"one array"),
    (models.LinearGaussian(), (XD, YD, YD), r"got a tuple of 3 arrays"),
    (models.Gamma(), (X ** 2, X ** 2), r"Gamma takes one array, got a tuple of 2 arrays"),
    (models.Censored(models.Exponential()), X ** 2,
     r"Censored\(Exponential\) takes a tuple \(x, censor\) of 2 arrays"),
])
def test_data_of_the_wrong_arity_names_what_the_model_takes(model, data, message):
    with pytest.raises(TypeError, match=r"data: .*" + message):
        mlefit.fit(model, data)


@pytest.mark.parametrize("penalty, shown", [
    (lambda p: jnp.log(p["mu"]), "-inf"), (lambda p: jnp.nan * p["mu"], "nan")])
def test_a_penalty_not_finite_at_the_start_is_named(penalty, shown):
    with pytest.raises(ValueError, match=rf"init: the penalty of model '.*' \(penalty=, or "
                       rf"-log_prior=\) is {shown} at the starting point"):
        mlefit.fit(normal, X, {"mu": 0.0, "sigma": mlefit.Positive(1.0)}, penalty=penalty)


def test_inference_of_a_result_holding_a_finished_tracer_says_why():
    init = {"mu": 0.0, "sigma": mlefit.Positive(1.0)}
    res = jax.jit(lambda s: mlefit.fit(normal, X, init, fixed={"sigma": s}))(2.0)
    assert float(res.params["sigma"]) == 2.0  # the fit itself is right
    with pytest.raises(TypeError, match="hold a value traced by a JAX transformation"):
        _ = res.stderr
    with pytest.warns(UserWarning, match="hold a value traced"):
        assert res.status == mlefit.Status.CONVERGED  # the optimiser's, checks skipped
