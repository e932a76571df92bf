"""The front door: data in (arrays, lists, pandas, array-likes), labelled results out.

Expected values are closed forms (Gaussian means and variances, least squares with a
known noise scale) or NumPy on the same data, never the code under test.
"""

import pickle
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import jax.scipy.stats as jst
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mlefit
from mlefit import models as M
from mlefit._data import as_arrays, column_names

from .helpers import rel_err

RNG = np.random.default_rng(16)
N = 120
SAMPLE = RNG.weibull(2.0, N) * 3.0 + 0.1
FRAME = pd.DataFrame({
    "age": RNG.normal(size=N),
    "dose": RNG.normal(size=N),
    "group": np.where(RNG.random(N) < 0.5, "a", "b"),
    "X": SAMPLE,
})
FRAME["y"] = 1.0 + 2.0 * FRAME["age"] - 0.5 * FRAME["dose"] + RNG.normal(size=N)
FRAME["hit"] = (FRAME["y"] > 1.0).astype(int)
FRAME["count"] = RNG.poisson(np.exp(0.3 + 0.4 * FRAME["age"]))
FRAME["cls"] = RNG.integers(0, 3, N)


def normal(p, x):
    return jst.norm.logpdf(x, p["mu"], p["sigma"])


@pytest.fixture(scope="module")
def weibull_array():
    return mlefit.fit(M.Weibull(), SAMPLE)


# -- data in -------------------------------------------------------------------------------
@pytest.mark.parametrize("data", [FRAME["X"], FRAME[["X"]], list(SAMPLE)],
                         ids=["series", "one-column-frame", "list"])
def test_series_frame_and_list_are_the_sample(data, weibull_array):
    res = mlefit.fit(M.Weibull(), data)
    for k in ("shape", "scale"):
        assert float(res.params[k]) == float(weibull_array.params[k])  # same data, same fit


def test_list_of_numbers_is_one_sample_with_the_closed_form_mle():
    x = [1.0, 2.0, 4.0]
    res = mlefit.fit(M.Normal(), x)
    assert float(res.params["loc"]) == pytest.approx(7.0 / 3.0, rel=1e-9)
    assert float(res.params["scale"]) == pytest.approx(np.std(x), rel=1e-7)


def test_list_of_lists_is_a_matrix_and_tuple_is_conditional():
    (a,) = as_arrays([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]).arrays
    assert a.shape == (3, 2)
    X, y = as_arrays(([[1.0], [2.0]], [0.5, 1.5])).arrays
    assert X.shape == (2, 1) and y.shape == (2,)
    # In a tuple a DataFrame stays a matrix even with one column (a design of one feature).
    X, y = as_arrays((FRAME[["age"]], FRAME["y"])).arrays
    assert X.shape == (N, 1) and y.shape == (N,)


def test_array_like_with___array___is_accepted():
    class Wrapped:
        def __init__(self, a):
            self.a = a

        def __array__(self, dtype=None, copy=None):
            return np.asarray(self.a, dtype=dtype)

    (a,) = as_arrays(Wrapped(SAMPLE)).arrays
    np.testing.assert_array_equal(a, SAMPLE)


class Interchange:
    """Only the dataframe interchange protocol (no __array__, no columns)."""

    def __init__(self, frame):
        self.frame = frame

    def __dataframe__(self, nan_as_null=False, allow_copy=True):
        return self.frame.__dataframe__(nan_as_null=nan_as_null, allow_copy=allow_copy)


def test_dataframe_interchange_protocol():
    frame = pd.DataFrame({"a": np.arange(4, dtype=np.int32), "b": [0.5, 1.5, 2.5, 3.5],
                          "c": [True, False, True, True]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = as_arrays(Interchange(frame))
        names = column_names(Interchange(frame))
    np.testing.assert_array_equal(data.arrays[0], frame.to_numpy(dtype=float))
    assert data.columns == (("a", "b", "c"),) and names == (("a", "b", "c"),)
    # A nullable column's missing value becomes NaN, which fit then reports by row.
    nullable = pd.DataFrame({"a": pd.array([1, None, 3], dtype="Int64")})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (a,) = as_arrays(Interchange(nullable)).arrays
    assert a[0] == 1 and np.isnan(a[1]) and a[2] == 3
    with pytest.raises(ValueError, match="1 observation\\(s\\) with NaN"):
        mlefit.fit(M.Normal(), Interchange(nullable))


def test_frame_without_pandas_by_duck_typing():
    class Frame:  # polars-like: columns, __array__, per-column access
        columns = ["u", "v"]

        def __init__(self, a):
            self.a = a

        def __array__(self, dtype=None, copy=None):
            return np.asarray(self.a, dtype=dtype)

        def __getitem__(self, name):
            return self.a[:, self.columns.index(name)]

    X = FRAME[["age", "dose"]].to_numpy()
    res = mlefit.fit(M.LinearGaussian(), (Frame(X), FRAME["y"].to_numpy()))
    assert res.param_names == ["intercept", "coef[u]", "coef[v]", "scale"]


def test_non_numeric_column_is_named_with_its_dtype():
    with pytest.raises(TypeError, match="data\\[0\\]: column 'group' has dtype"):
        mlefit.fit(M.LinearGaussian(), (FRAME[["age", "group"]], FRAME["y"]))
    with pytest.raises(TypeError, match="data: column 'group' has dtype"):
        mlefit.fit(M.Normal(), FRAME["group"])
    cat = FRAME[["age"]].assign(g=FRAME["group"].astype("category"))
    with pytest.raises(TypeError, match="column 'g' has dtype category"):
        mlefit.fit(M.LinearGaussian(), (cat, FRAME["y"]))


def test_mixed_numeric_dtypes_convert():
    frame = pd.DataFrame({"i": [1, 2, 3], "f": [0.5, 1.5, 2.5], "b": [True, False, True]})
    (a,) = as_arrays(frame).arrays
    np.testing.assert_array_equal(a, [[1, 0.5, 1], [2, 1.5, 0], [3, 2.5, 1]])


def test_streams_are_declared_never_guessed():
    gen = (SAMPLE[i:i + 10] for i in range(0, N, 10))
    with pytest.raises(TypeError, match="mlefit.batches"):
        mlefit.fit(M.Normal(), gen)
    with pytest.raises(TypeError, match="a list of arrays is ambiguous"):
        mlefit.fit(M.Normal(), [SAMPLE[:60], SAMPLE[60:]])
    with pytest.raises(TypeError, match="a list of arrays is ambiguous"):
        mlefit.fit(M.LinearGaussian(), [(FRAME[["age"]], FRAME["y"])])
    with pytest.raises(TypeError, match="got dict"):
        mlefit.fit(M.Normal(), {"x": SAMPLE})
    with pytest.raises(TypeError, match="batches: expected an iterable of batches"):
        mlefit.batches(SAMPLE)
    # Declared, the same chunks are a stream: the full-batch fit is the closed form.
    src = mlefit.batches([SAMPLE[i:i + 40] for i in range(0, N, 40)])
    res = mlefit.fit(normal, src, {"mu": 0.0, "sigma": mlefit.Positive(1.0)}, tol=1e-10)
    assert float(res.params["mu"]) == pytest.approx(SAMPLE.mean(), abs=1e-8)


def test_fit_many_takes_lists_and_names_like_fit():
    data = SAMPLE[:100].reshape(4, 25)
    many = mlefit.fit_many(M.Weibull(), data.tolist())
    assert many.batch_shape == (4,)
    one = mlefit.fit(M.Weibull(), data[0])
    assert many.param_names == one.param_names == ["shape", "scale"]  # the model's order
    np.testing.assert_allclose(np.asarray(many.confint())[0], np.asarray(one.confint()),
                               rtol=1e-5)


def test_pandas_is_never_imported_by_mlefit():
    code = (
        "import sys, mlefit\n"
        "r = mlefit.fit(mlefit.models.Normal(), [1.0, 2.0, 4.0, 3.0])\n"
        "r.summary(); r.confint(); r.cov; r.param_names\n"
        "print('pandas' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, check=True)
    assert out.stdout.strip() == "False"


# -- names from columns --------------------------------------------------------------------
@pytest.mark.parametrize(
    "model, y",
    [(M.LinearGaussian(), "y"), (M.Logistic(), "hit"), (M.PoissonRegression(), "count")],
    ids=["linear", "logistic", "poisson"],
)
def test_coefficients_are_named_by_the_columns(model, y):
    res = mlefit.fit(model, (FRAME[["age", "dose"]], FRAME[y]))
    expect = ["intercept", "coef[age]", "coef[dose]"] + (["scale"] if y == "y" else [])
    assert res.param_names == expect
    assert list(res.to_frame().index) == expect
    assert res.cov.names == expect and res.confint().names == expect
    # Same fit as with arrays, whose names stay positional.
    arr = mlefit.fit(model, (FRAME[["age", "dose"]].to_numpy(), FRAME[y].to_numpy()))
    assert arr.param_names == [n.replace("age", "0").replace("dose", "1") for n in expect]
    np.testing.assert_allclose(np.asarray(res.cov), np.asarray(arr.cov), rtol=1e-6)
    assert "coef[age]" in res.summary()


def test_softmax_names_the_feature_axis_only():
    res = mlefit.fit(M.Softmax(3), (FRAME[["age", "dose"]], FRAME["cls"]))
    assert res.param_names == ["intercept[0]", "intercept[1]", "coef[age,0]",
                               "coef[age,1]", "coef[dose,0]", "coef[dose,1]"]


class Rates(mlefit.AbstractModel):
    """Poisson counts per column, one log-rate per column: a user model with labels."""

    def log_prob(self, params, k):
        return jnp.sum(jst.poisson.logpmf(k, jnp.exp(params["log_rate"])))

    def init(self, k):
        return {"log_rate": np.log(np.asarray(k, float).mean(axis=0) + 0.5)}

    def param_labels(self, columns):
        return {} if columns is None else {"log_rate": (columns,)}


def test_user_model_hook_and_its_checks():
    counts = pd.DataFrame({"north": RNG.poisson(2.0, 50), "south": RNG.poisson(5.0, 50)})
    res = mlefit.fit(Rates(), counts)
    assert res.param_names == ["log_rate[north]", "log_rate[south]"]
    # MLE log-rate: log(mean); its variance 1 / (n * mean) (Poisson information).
    m = counts.to_numpy().mean(axis=0)
    np.testing.assert_allclose(np.asarray(res.params["log_rate"]), np.log(m), rtol=1e-8)
    np.testing.assert_allclose(np.diag(res.cov), 1.0 / (50 * m), rtol=1e-6)
    cov_south = float(res.cov["log_rate[south]", "log_rate[south]"])
    assert cov_south == pytest.approx(1.0 / (50 * m[1]), rel=1e-6)

    class Wrong(Rates):
        def param_labels(self, columns):
            return {"log_rate": (("a", "b", "c"),)}

    with pytest.raises(ValueError, match="gives 3 labels for axis 0 of log_rate"):
        mlefit.fit(Wrong(), counts)
    dup = pd.DataFrame(counts.to_numpy(), columns=["x", "x"])
    with pytest.raises(ValueError, match="repeat 'x'"):
        mlefit.fit(Rates(), dup)


# -- order: as written in init -------------------------------------------------------------
def test_order_of_init_sigma_before_mu():
    x = SAMPLE
    res = mlefit.fit(normal, x, {"sigma": mlefit.Positive(1.0), "mu": 0.0})
    assert res.param_names == ["sigma", "mu"]
    s2, n = x.var(), x.size
    # Gaussian MLE covariance: var(sigma) = s^2 / (2n), var(mu) = s^2 / n, independent
    # (the off-diagonal is 0 at the exact MLE; the fit stops within tol, ~1e-9 of var mu).
    np.testing.assert_allclose(np.asarray(res.cov), [[s2 / (2 * n), 0.0], [0.0, s2 / n]],
                               rtol=1e-6, atol=1e-7 * s2 / n)
    assert float(res.cov["mu", "mu"]) == pytest.approx(s2 / n, rel=1e-6)
    # The unconstrained Hessian: d2 N / d mu2 = n / s^2 at the MLE.
    assert float(res.hessian["mu", "mu"]) == pytest.approx(n / s2, rel=1e-6)
    ci = res.confint()
    assert ci.names == ["sigma", "mu"] and ci.columns == ["lower", "upper"]
    assert float(ci["mu", "upper"]) == pytest.approx(x.mean() + 1.959963984540054
                                                     * np.sqrt(s2 / n), rel=1e-6)
    table = res.to_frame()
    assert list(table.index) == ["sigma", "mu"]
    assert table.loc["mu", "stderr"] == pytest.approx(np.sqrt(s2 / n), rel=1e-6)
    lines = res.summary().splitlines()
    assert [i for i, ln in enumerate(lines) if ln.startswith("sigma")] < [
        i for i, ln in enumerate(lines) if ln.startswith("mu ")]


def test_covariance_rows_follow_init_against_least_squares():
    # y = c + alpha x + Z b + e, e ~ N(0, 1) with the scale known: cov = (A^T A)^-1
    # exactly, A = [1, x, Z] in the order c, alpha, b (JAX's own order: alpha, b, c).
    n = 80
    x, Z = RNG.normal(size=n), RNG.normal(size=(n, 3))
    y = 0.3 + 1.1 * x + Z @ np.array([0.5, -1.0, 2.0]) + RNG.normal(size=n)

    def model(p, xi, zi, yi):
        return jst.norm.logpdf(yi, p["c"] + p["alpha"] * xi + zi @ p["b"], 1.0)

    res = mlefit.fit(model, (x, Z, y), {"c": 0.0, "alpha": 0.0, "b": jnp.zeros(3)})
    assert res.param_names == ["c", "alpha", "b[0]", "b[1]", "b[2]"]
    A = np.column_stack([np.ones(n), x, Z])
    beta, *_ = np.linalg.lstsq(A, y, rcond=None)
    assert rel_err(np.asarray(res.to_frame()["estimate"]), beta) < 1e-7
    assert rel_err(np.asarray(res.cov), np.linalg.inv(A.T @ A)) < 1e-8
    assert float(res.stderr["c"]) == pytest.approx(np.sqrt(float(res.cov["c", "c"])), rel=1e-12)
    ci = res.confint(params=["b[1]", "c"])
    assert ci.names == ["b[1]", "c"]
    assert float(ci["c", "lower"]) == pytest.approx(
        beta[0] - 1.959963984540054 * np.sqrt(np.linalg.inv(A.T @ A)[0, 0]), rel=1e-7)


# -- labelled results ----------------------------------------------------------------------
def test_to_frame_without_pandas(monkeypatch):
    res = mlefit.fit(normal, SAMPLE, {"mu": 0.0, "sigma": mlefit.Positive(1.0)})
    monkeypatch.setattr("mlefit._result.optional_pandas", lambda: None)
    t = res.to_frame()
    assert isinstance(t, mlefit.LabelledArray) and t.shape == (2, 6)
    assert t.columns == ["estimate", "stderr", "z", "pvalue", "ci_low", "ci_high"]
    se = np.sqrt(SAMPLE.var() / N)
    assert float(t["mu", "stderr"]) == pytest.approx(se, rel=1e-6)
    z = SAMPLE.mean() / se
    from scipy.stats import norm

    assert float(t["mu", "pvalue"]) == pytest.approx(2 * norm.sf(abs(z)), rel=1e-6)
    assert set(t.to_dict()) == set(t.columns)


def test_labelled_array_is_the_array_it_was():
    v = np.arange(6.0).reshape(3, 2)
    a = mlefit.LabelledArray(v, (("a", "b", "c"), ("lower", "upper")))
    assert a[1, 0] == 2.0 and float(a["b", "lower"]) == 2.0
    assert type(np.asarray(a)) is np.ndarray
    assert type(a * 2) is np.ndarray and float((a * 2)[2, 1]) == 10.0
    np.testing.assert_array_equal(a["c"], [4.0, 5.0])
    assert a["c"].names == ["lower", "upper"]
    assert a[["c", "a"]].names == ["c", "a"]
    np.testing.assert_array_equal(a[:, "upper"], [1.0, 3.0, 5.0])
    assert a[::-1].names == ["c", "b", "a"]
    assert jnp.asarray(a).shape == (3, 2)
    b = pickle.loads(pickle.dumps(a))
    assert b.names == a.names and b.columns == a.columns
    assert a.copy().names == a.names and a.astype(np.float32).columns == a.columns
    assert a.T.names == ["lower", "upper"] and a.T.columns == ["a", "b", "c"]
    sq = mlefit.LabelledArray(np.eye(2), (("a", "b"), ("lower", "upper")))
    assert sq.T.names == ["lower", "upper"] and np.transpose(sq).columns == ["a", "b"]
    with pytest.raises(KeyError, match="'d': not a label of axis 0"):
        a["d"]
    assert "lower" in repr(a) and "b" in repr(a)
    frame = a.to_pandas()
    assert list(frame.index) == ["a", "b", "c"] and frame.loc["b", "upper"] == 3.0


@settings(max_examples=40, deadline=None)
@given(
    p=st.integers(1, 6),
    data=st.data(),
)
def test_selecting_by_names_is_selecting_by_positions(p, data):
    names = tuple(f"p{i}" for i in range(p))
    m = np.arange(p * p, dtype=float).reshape(p, p)
    cov = mlefit.LabelledArray(m, (names, names))
    rows = data.draw(st.lists(st.integers(0, p - 1), min_size=1, max_size=p, unique=True))
    cols = data.draw(st.lists(st.integers(0, p - 1), min_size=1, max_size=p, unique=True))
    sub = cov[[names[i] for i in rows], [names[j] for j in cols]]
    np.testing.assert_array_equal(np.asarray(sub), m[np.ix_(rows, cols)])
    assert sub.names == [names[i] for i in rows] and sub.columns == [names[j] for j in cols]


def test_bootstrap_confint_is_a_labelled_method():
    res = mlefit.fit(M.Weibull(), SAMPLE)
    boot = mlefit.bootstrap(res, n=200, key=jax.random.key(3))
    ci = boot.confint()
    assert ci.names == ["shape", "scale"] == boot.param_names
    np.testing.assert_allclose(np.asarray(ci["scale"]), boot.intervals["scale"], rtol=1e-12)
    # A percentile interval at another level, from the same replicates.
    reps = np.asarray(boot.estimates["shape"])[boot.converged]
    np.testing.assert_allclose(np.asarray(boot.confint(0.5, params="shape"))[0],
                               np.quantile(reps, [0.25, 0.75]), rtol=1e-12)
    table = boot.to_frame()
    assert list(table.index) == ["shape", "scale"]
    assert table.loc["shape", "stderr"] == pytest.approx(np.std(reps, ddof=1), rel=1e-12)
    assert table.loc["scale", "estimate"] == float(res.params["scale"])
