"""Batched fits: fit_many against separate fits, closed forms and scipy; padding, bad
data sets, per-fit status, init handling, indexing and no recompilation."""

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.stats as jst
import numpy as np
import optax
import pytest
import scipy.stats

import mlefit
import mlefit._many as many
import mlefit._many_starts as starts
from mlefit import models as M
from mlefit.models import Gamma, Normal

from .helpers import rel_err


def normal(p, x):
    return jst.norm.logpdf(x, p["mu"], p["sigma"])


INIT = {"mu": 0.0, "sigma": mlefit.Positive(1.0)}
B, N = 5, 40


@pytest.fixture(scope="module")
def xs():
    rng = np.random.default_rng(1)
    return rng.normal(rng.uniform(-3, 3, (B, 1)), rng.uniform(0.5, 2.0, (B, 1)), (B, N))


@pytest.fixture(scope="module")
def res(xs):
    return mlefit.fit_many(normal, xs, INIT)


def closed_form_normal(x):
    return x.mean(axis=-1), x.std(axis=-1)  # MLE: mean and the biased standard deviation


# -- shapes, indexing, agreement with separate fits ---------------------------------------
def test_fields_have_a_leading_data_set_axis(res):
    assert res.batch_shape == (B,) and len(res) == B
    assert res.params["mu"].shape == (B,) and res.params["sigma"].shape == (B,)
    assert res.converged.shape == (B,) and bool(res.converged.all())
    assert res.nll.shape == res.n_obs.shape == res.steps.shape == res.grad_norm.shape == (B,)
    assert np.asarray(res.status).shape == (B,)
    assert res.data[0].shape == (B, N)


def test_matches_closed_form_and_separate_fits(res, xs):
    mu, sigma = closed_form_normal(xs)
    # tol = 1e-9 on the gradient of the mean NLL and a Hessian of order 1/sigma^2:
    # the estimates are within ~1e-9 of the optimum; 1e-8 leaves room for rounding.
    assert rel_err(res.params["mu"], mu) < 1e-8
    assert rel_err(res.params["sigma"], sigma) < 1e-8
    for b in range(B):
        single = mlefit.fit(normal, xs[b], INIT)
        assert rel_err(res.params["mu"][b], single.params["mu"]) < 1e-8
        assert rel_err(res.params["sigma"][b], single.params["sigma"]) < 1e-8
        assert rel_err(res.nll[b], single.nll) < 1e-12  # same optimum: NLL agrees to rounding


def test_batched_repr_counts_the_checked_statuses():
    # Data set 1 is all ones (no finite MLE): the optimiser says converged, res.status
    # says not_at_minimum, and the repr, the first thing a notebook shows, says the latter.
    y = np.random.default_rng(8).integers(0, 2, (3, 40)).astype(float)
    y[1] = 1.0
    with pytest.warns(UserWarning, match=r"Bernoulli: in 1 of 3 data sets a class of data "
                      r"never occurs \(first: data set 1, class\(es\) \[0\]"):
        res = mlefit.fit_many(mlefit.models.Bernoulli(), y)
    assert [str(s) for s in res.status] == ["converged", "not_at_minimum", "converged"]
    assert "status_counts={'converged': 2, 'not_at_minimum': 1}" in repr(res)


def test_indexing_gives_an_ordinary_fit(res, xs):
    r2 = res[2]
    assert isinstance(r2, mlefit.FitResult) and r2.batch_shape == ()
    assert r2.data[0].shape == (N,)
    text = repr(r2)
    assert "status=converged" in text and "mu" in text
    assert "batch_shape=(5,)" in repr(res) and "converged" in repr(res)
    if hasattr(r2, "summary"):
        s = r2.summary()
        assert "mu" in s and "sigma" in s
        # stderr of the mean of a Gaussian: sigma_hat / sqrt(n) (observed information)
        se = r2.stderr["mu"]
        assert rel_err(se, xs[2].std() / np.sqrt(N)) < 1e-6


def test_batched_stderr_matches_closed_form(res, xs):
    from mlefit._inference import stderr_of

    se = stderr_of(res)
    assert se["mu"].shape == (B,)
    # Observed information of N(mu, sigma) at the MLE: se(mu) = sigma / sqrt(n),
    # se(sigma) = sigma / sqrt(2n); 1e-6 covers the 1e-9 optimisation tolerance.
    sigma = xs.std(axis=1)
    assert rel_err(se["mu"], sigma / np.sqrt(N)) < 1e-6
    assert rel_err(se["sigma"], sigma / np.sqrt(2 * N)) < 1e-6


def test_lbfgs_and_newton_agree(xs, res):
    r = mlefit.fit_many(normal, xs, INIT, optimizer=optax.lbfgs())
    assert bool(r.converged.all())
    assert rel_err(r.params["sigma"], res.params["sigma"]) < 1e-8
    by_name = mlefit.fit_many(normal, xs, INIT, optimizer="lbfgs")  # fit's L-BFGS
    assert bool(by_name.converged.all())
    assert rel_err(by_name.params["sigma"], res.params["sigma"]) < 1e-8
    assert int(np.max(by_name.steps)) > int(np.max(res.steps))  # not Newton's steps


def test_many_parameters_default_to_lbfgs():
    # 33 free parameters: above NEWTON_MAX_PARAMS, fit's L-BFGS is the default.
    x = np.random.default_rng(6).normal(size=(2, 6, 33))

    def iid(p, x):
        return jnp.sum(jst.norm.logpdf(x, p["mu"], 1.0))

    r = mlefit.fit_many(iid, x, {"mu": np.zeros(33)}, use_suffstats=False)
    assert r.params["mu"].shape == (2, 33) and bool(r.converged.all())
    np.testing.assert_allclose(np.asarray(r.params["mu"]), x.mean(axis=1), atol=1e-9)


def test_tuple_data_regression_matches_least_squares():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(4, 30))
    y = 1.0 + 2.0 * X + rng.normal(size=(4, 30))

    def linear(p, x, y):
        return jst.norm.logpdf(y, p["a"] + p["b"] * x, p["s"])

    r = mlefit.fit_many(linear, (X, y), {"a": 0.0, "b": 0.0, "s": mlefit.Positive(1.0)})
    for b in range(4):
        slope, intercept = np.polyfit(X[b], y[b], 1)  # the MLE of (a, b) is least squares
        assert rel_err(r.params["b"][b], slope) < 1e-8
        assert rel_err(r.params["a"][b], intercept) < 1e-8


# -- ragged data sets ----------------------------------------------------------------------
def test_padding_does_not_bias_anything(xs, res):
    lengths = np.array([N, 25, 10, 33, 3])
    w = (np.arange(N)[None, :] < lengths[:, None]).astype(float)
    padded = np.where(w > 0, xs, np.nan)  # padding may hold anything, NaN included
    # A tight tol lets Newton run to rounding, so the padded fits can be compared to the
    # closed-form MLE of the unpadded data sets to 1e-10.
    r = mlefit.fit_many(normal, padded, INIT, weights=w, tol=1e-13)
    rm = mlefit.fit_many(normal, padded, INIT, mask=w > 0, tol=1e-13)
    assert bool(r.converged.all())
    np.testing.assert_array_equal(np.asarray(r.n_obs), lengths)
    for b in range(B):
        mu, sigma = closed_form_normal(xs[b, : lengths[b]])
        assert abs(float(r.params["mu"][b]) - mu) < 1e-10 * sigma
        assert rel_err(r.params["sigma"][b], sigma) < 1e-10
        assert rel_err(rm.params["sigma"][b], sigma) < 1e-10
    # general weights: the weighted MLE is the weighted mean and standard deviation
    v = np.random.default_rng(11).uniform(0.1, 3.0, (B, N))
    rv = mlefit.fit_many(normal, xs, INIT, weights=v, tol=1e-13)
    wmu = (v * xs).sum(1) / v.sum(1)
    wsd = np.sqrt((v * (xs - wmu[:, None]) ** 2).sum(1) / v.sum(1))
    assert rel_err(rv.params["sigma"], wsd) < 1e-10
    assert np.max(np.abs(np.asarray(rv.params["mu"]) - wmu) / wsd) < 1e-10
    np.testing.assert_allclose(np.asarray(rv.n_obs), v.sum(1), rtol=1e-14)
    # data set 0 is not padded: the weighted and the unweighted fit agree
    assert rel_err(r.nll[0], res.nll[0]) < 1e-12
    assert np.isfinite(np.asarray(r.data[0])).all()  # padding replaced by valid observations


def test_padded_model_init_uses_only_the_used_observations(xs):
    lengths = np.array([N, 12, 10, 33, 4])
    mask = np.arange(N)[None, :] < lengths[:, None]
    padded = np.where(mask, xs, 1e6)
    r = mlefit.fit_many(Normal(), padded, mask=mask)
    for b in range(B):
        mu, sigma = closed_form_normal(xs[b, : lengths[b]])
        assert rel_err(r.params["loc"][b], mu) < 1e-8
        assert rel_err(r.params["scale"][b], sigma) < 1e-8


# -- per-fit convergence and bad data sets ------------------------------------------------
def test_a_converged_member_stops_while_others_continue(xs):
    # Data set 0 starts at its optimum; the others start far away.
    mu, sigma = closed_form_normal(xs)
    init = {
        "mu": np.where(np.arange(B) == 0, mu, 10.0),
        "sigma": mlefit.Positive(np.where(np.arange(B) == 0, sigma, 5.0)),
    }
    r = mlefit.fit_many(normal, xs, init, batched_init=True, history=True)
    steps = np.asarray(r.steps)
    assert steps[0] <= 1 and steps[1:].min() > steps[0]
    h = np.asarray(r.history_buffer)
    for b in range(B):
        assert np.isfinite(h[b, : steps[b] + 1]).all()
        assert np.isnan(h[b, steps[b] + 1 :]).all()  # nothing recorded after it stopped
        assert np.all(np.diff(h[b, : steps[b] + 1]) <= 1e-15)  # accepted steps never rise
    assert rel_err(r.params["mu"], mu) < 1e-8


def test_one_bad_data_set_does_not_spoil_the_others(xs):
    bad = xs.copy()
    bad[1] = 3.0  # zero spread: the NLL decreases without bound as sigma -> 0
    bad[3, 7] = np.nan
    with pytest.raises(ValueError, match="data set 3, observation 7"):
        mlefit.fit_many(normal, bad, INIT)
    r = mlefit.fit_many(normal, bad, INIT, check_finite=False)
    status = r.status
    assert status[3] == mlefit.Status.INIT_NOT_FINITE
    assert status[1] != mlefit.Status.CONVERGED
    assert np.isfinite(np.asarray(r.params["sigma"][1]))  # never NaN, even when it fails
    good = [0, 2, 4]
    mu, sigma = closed_form_normal(xs[good])
    assert all(status[b] == mlefit.Status.CONVERGED for b in good)
    assert rel_err(r.params["mu"][np.array(good)], mu) < 1e-8
    assert rel_err(r.params["sigma"][np.array(good)], sigma) < 1e-8


def test_model_init_failure_in_one_data_set_warns_and_reports(xs):
    bad = xs.copy()
    bad[2] = 1.5  # Normal.init refuses zero spread
    everything = np.ones((B, N), bool)  # (the mask only shares the compiled fit of the test above)
    with pytest.warns(UserWarning, match="data set 2"):
        r = mlefit.fit_many(Normal(), bad, mask=everything)
    assert r.status[2] != mlefit.Status.CONVERGED
    good = np.array([0, 1, 3, 4])
    assert bool(r.converged[good].all())
    assert rel_err(r.params["loc"][good], xs[good].mean(axis=1)) < 1e-8


def test_a_data_set_without_an_mle_is_not_reported_converged():
    # Exponential data that are all 0: the MLE rate is infinite.
    rng = np.random.default_rng(11)
    x = rng.exponential(2.0, (4, 60))
    x[2] = 0.0
    good = np.array([0, 1, 3])
    # The ready-made model's start fails there: that set is not fitted (status, NaN, no
    # steps) and the others are.
    with pytest.warns(UserWarning, match="data set 2: Exponential: cannot start a fit: all"):
        r = mlefit.fit_many(mlefit.models.Exponential(), x)
    assert r.status[2] == mlefit.Status.INIT_NOT_FINITE
    assert int(r.steps[2]) == 0 and np.isnan(float(r.params["rate"][2]))
    assert bool(r.converged[good].all())
    assert rel_err(r.params["rate"][good], 1.0 / x[good].mean(axis=1)) < 1e-10
    # From a shared start the fit runs the rate up until its gradient -1/rate is below
    # tol; the status says it is not at a minimum (EDM = n / 2).
    r = mlefit.fit_many(mlefit.models.Exponential(), x, {"rate": mlefit.Positive(1.0)})
    assert r.optimizer_status[2] == mlefit.Status.CONVERGED
    assert r.status[2] == mlefit.Status.NOT_AT_MINIMUM
    assert bool(r.converged[good].all()) and not bool(r.converged[2])
    assert rel_err(r.params["rate"][good], 1.0 / x[good].mean(axis=1)) < 1e-8


def test_equal_values_are_caught_exactly_and_do_not_hold_up_the_batch():
    # log(2.0) repeated has a standard deviation of a rounding error above 0 (1.1e-16),
    # which passed a std > 0 test: LogNormal and Weibull started a fit from there.
    rng = np.random.default_rng(12)
    for model in (mlefit.models.Normal(), mlefit.models.LogNormal(), mlefit.models.Weibull(),
                  mlefit.models.Gamma()):
        x = rng.gamma(3.0, 1.0, (4, 50))
        x[0] = 2.0
        with pytest.warns(UserWarning, match="all 50 observations are equal"):
            r = mlefit.fit_many(model, x)
        assert r.status[0] == mlefit.Status.INIT_NOT_FINITE, model.name
        assert int(r.steps[0]) == 0 and int(np.max(r.steps)) < 20, model.name
        assert bool(r.converged[1:].all()), model.name
        with pytest.raises(ValueError, match="all 50 observations are equal"):
            mlefit.fit(model, x[0])


def test_nothing_fittable_raises():
    with pytest.raises(ValueError, match="every data set failed at the start"):
        mlefit.fit_many(normal, np.full((B, N), np.inf), INIT, check_finite=False)


# -- init: shared, batched, model-driven ----------------------------------------------------
def test_shared_and_batched_init_agree(xs, res):
    init = {"mu": np.linspace(-1, 1, B), "sigma": mlefit.Positive(np.linspace(0.5, 2.0, B))}
    r = mlefit.fit_many(normal, xs, init, batched_init=True, history=True)
    assert rel_err(r.params["mu"], res.params["mu"]) < 1e-8
    assert rel_err(r.params["sigma"], res.params["sigma"]) < 1e-8
    with pytest.raises(ValueError, match="leading axis of size B=5"):
        mlefit.fit_many(normal, xs, INIT, batched_init=True)


class TracedNormal(mlefit.AbstractModel):
    """A model whose init is pure jnp, so fit_many vmaps it."""

    def log_prob(self, params, x):
        return jst.norm.logpdf(x, params["loc"], params["scale"])

    def init(self, x):
        return {"loc": jnp.mean(x), "scale": mlefit.Positive(jnp.std(x))}


def test_traceable_model_init_is_vmapped(xs):
    r = mlefit.fit_many(TracedNormal(), xs, max_steps=0)  # the start is the closed form
    mu, sigma = closed_form_normal(xs)
    assert rel_err(r.params["loc"], mu) < 1e-12 and rel_err(r.params["scale"], sigma) < 1e-12
    bad = xs.copy()
    bad[4] = 0.0  # start scale 0 violates Positive: replaced, with a warning
    with pytest.warns(UserWarning, match="data set 4"):
        r = mlefit.fit_many(TracedNormal(), bad)
    assert bool(r.converged[:4].all()) and not bool(r.converged[4])


def _gen_xy(rng, b, n, y):
    X = rng.normal(size=(b, n, 2))
    return X, y(X)


# Every ready-made model whose start fit_many vmaps: data for B = 4 data sets of 30.
TRACED_INITS = {
    "Normal": (M.Normal(), lambda r: r.normal(1, 2, (4, 30))),
    "LogNormal": (M.LogNormal(), lambda r: r.lognormal(0, 1, (4, 30))),
    "Exponential": (M.Exponential(), lambda r: r.exponential(2, (4, 30))),
    "Gamma": (M.Gamma(), lambda r: r.gamma(2, 1.5, (4, 30))),
    "Weibull": (M.Weibull(), lambda r: r.weibull(1.5, (4, 30))),
    "Beta": (M.Beta(), lambda r: r.beta(2, 5, (4, 30))),
    "StudentT": (M.StudentT(), lambda r: r.standard_t(4, (4, 30))),
    "Laplace": (M.Laplace(), lambda r: r.laplace(1, 2, (4, 30))),
    "MultivariateNormal": (M.MultivariateNormal(), lambda r: r.normal(size=(4, 30, 3))),
    "Bernoulli": (M.Bernoulli(), lambda r: (r.random((4, 30)) < 0.3).astype(float)),
    "Categorical": (M.Categorical(4), lambda r: r.integers(0, 4, (4, 30))),
    "Poisson": (M.Poisson(), lambda r: r.poisson(3.0, (4, 30)).astype(float)),
    "NegativeBinomial": (M.NegativeBinomial(), lambda r: r.negative_binomial(3, 0.4, (4, 30))),
    "LinearGaussian": (
        M.LinearGaussian(),
        lambda r: _gen_xy(r, 4, 30, lambda X: X @ [1.0, -2.0] + r.normal(size=(4, 30))),
    ),
    "Logistic": (
        M.Logistic(),
        lambda r: _gen_xy(r, 4, 30, lambda X: (X[..., 0] > 0).astype(float)),
    ),
    "Softmax": (M.Softmax(3), lambda r: _gen_xy(r, 4, 30, lambda X: r.integers(0, 3, (4, 30)))),
    "PoissonRegression": (
        M.PoissonRegression(),
        lambda r: _gen_xy(r, 4, 30, lambda X: r.poisson(2.0, (4, 30))),
    ),
}


def _start_values(init) -> list:
    leaves = jax.tree_util.tree_leaves(init, is_leaf=mlefit._constraints.is_constraint)
    return [np.asarray(getattr(v, "value", v), float) for v in leaves]


@pytest.mark.parametrize("name", sorted(TRACED_INITS))
def test_ready_made_starts_are_vmapped_and_equal_the_host_ones(name):
    """fit_many computes the models' starts in one vmapped call (no Python loop over data
    sets); each equals the model's NumPy start on that data set alone (float64 rounding)."""
    model, gen = TRACED_INITS[name]
    data = gen(np.random.default_rng(7))
    data = data if isinstance(data, tuple) else (data,)
    traced = starts._traced_model_init(model, tuple(jnp.asarray(a) for a in data))
    assert traced is not None, f"{name}.init is not traceable: fit_many would loop in Python"
    got = _start_values(traced)
    for b in range(data[0].shape[0]):
        want = _start_values(model.init(*(a[b] for a in data)))
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g[b], w, rtol=1e-12, atol=1e-14)


def test_vmapped_start_failure_names_the_models_reason(xs):
    bad = xs.copy()
    bad[3] = 2.0
    with pytest.warns(UserWarning, match=r"data set 3: Normal: cannot start a fit: all 40"):
        r = mlefit.fit_many(Normal(), bad)
    assert r.status[3] != mlefit.Status.CONVERGED and bool(
        np.asarray(r.converged)[[0, 1, 2, 4]].all()
    )


def test_no_valid_start_names_the_models_reason():
    with pytest.raises(ValueError, match=r"any data set; data set 0: Normal: cannot start a fit"):
        mlefit.fit_many(Normal(), np.full((3, 10), 2.0))


def test_gamma_matches_scipy_with_and_without_suffstats():
    rng = np.random.default_rng(3)
    x = rng.gamma(np.array([0.7, 2.0, 5.0])[:, None], np.array([2.0, 1.0, 0.3])[:, None], (3, 150))
    r = mlefit.fit_many(Gamma(), x)  # fitted from mean(x) and mean(log x)
    raw = mlefit.fit_many(Gamma(), x, use_suffstats=False)  # from the observations
    assert bool(r.converged.all()) and bool(raw.converged.all())
    assert rel_err(r.params["shape"], raw.params["shape"]) < 1e-8
    assert rel_err(r.nll, raw.nll) < 1e-13  # the same NLL to rounding
    for b in range(3):
        a, _, scale = scipy.stats.gamma.fit(x[b], floc=0)
        # scipy solves the 1-D shape equation to its default xtol (~1e-8 relative)
        assert rel_err(r.params["shape"][b], a) < 1e-6
        assert rel_err(r.params["scale"][b], scale) < 1e-6
        # and our NLL is at least as low as scipy's, to rounding
        nll_scipy = -scipy.stats.gamma.logpdf(x[b], a, scale=scale).mean()
        assert float(r.nll[b]) <= nll_scipy + 1e-12


class Coin(eqx.Module):
    logit: jax.Array

    def log_prob(self, y):
        return y * jax.nn.log_sigmoid(self.logit) + (1 - y) * jax.nn.log_sigmoid(-self.logit)


def test_module_model_shares_its_start():
    y = np.array([[1.0, 1.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0]])
    r = mlefit.fit_many(Coin(jnp.array(0.0)), y)
    p = jax.nn.sigmoid(r.params.logit)
    assert rel_err(p, np.array([0.75, 0.25])) < 1e-8  # MLE: the sample proportion


# -- compile once ------------------------------------------------------------------------------
def test_second_call_with_same_shapes_does_not_retrace(xs, res):
    before = eqx.debug.get_num_traces(many._fit_many_traced)
    r = mlefit.fit_many(normal, xs + 1.0, INIT)
    assert eqx.debug.get_num_traces(many._fit_many_traced) == before
    assert rel_err(r.params["mu"], res.params["mu"] + 1.0) < 1e-8


# -- errors before compiling -----------------------------------------------------------------
def test_bad_input_errors(xs):
    with pytest.raises(ValueError, match=r"shape \(B, n, ...\)"):
        mlefit.fit_many(normal, xs[0], INIT)
    with pytest.raises(ValueError, match=r"weights: expected shape \(5, 40\)"):
        mlefit.fit_many(normal, xs, INIT, weights=np.ones((5, 39)))
    w = np.ones((B, N))
    w[2, 5] = -1.0
    with pytest.raises(ValueError, match="data set 2, observation 5"):
        mlefit.fit_many(normal, xs, INIT, weights=w)
    w[2, 5] = 1.0
    w[4] = 0.0
    with pytest.raises(ValueError, match="data set 4 has no observation"):
        mlefit.fit_many(normal, xs, INIT, weights=w)
    with pytest.raises(TypeError, match="mask: expected a boolean"):
        mlefit.fit_many(normal, xs, INIT, mask=np.ones((B, N)))
    with pytest.raises(ValueError, match="named optimizers of fit_many are 'newton' and 'lbfgs'"):
        mlefit.fit_many(normal, xs, INIT, optimizer="bfgs")
    with pytest.raises(ValueError, match="share the data-set and observation axes"):
        mlefit.fit_many(lambda p, x, y: 0.0, (xs, xs[:, :3]), INIT)
    x = np.abs(xs)
    x[3, 11] = -1.0
    with pytest.raises(ValueError, match="data set 3: Gamma: data\\[11\\]"):
        mlefit.fit_many(Gamma(), x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="init: the NLL"):
            mlefit.fit_many(normal, xs, {"mu": 0.0, "sigma": 0.0})


# -- the Newton solver ---------------------------------------------------------------------
def test_newton_loop_on_rosenbrock_with_indefinite_hessian():
    from mlefit._newton import newton_loop

    def rosen(u):
        return (1.0 - u[0]) ** 2 + 100.0 * (u[1] - u[0] ** 2) ** 2

    # At (0, 1) the Hessian is indefinite (eigenvalues -398 and 200): the solver must
    # fall back to a shifted (descent) direction and still reach the minimum (1, 1).
    u, v, g, steps, status, hist = jax.jit(lambda u0: newton_loop(rosen, u0, 1e-10, 200, True))(
        jnp.array([0.0, 1.0])
    )
    assert int(status) == mlefit.Status.CONVERGED
    np.testing.assert_allclose(np.asarray(u), [1.0, 1.0], atol=1e-8)
    h = np.asarray(hist)[: int(steps) + 1]
    assert np.all(np.diff(h) <= 1e-15)  # monotone: refused steps keep the value

    # One compiled loop, two starts: log(-1) is NaN; from 5.0, two steps are not enough.
    short = jax.jit(lambda u0: newton_loop(lambda u: jnp.sum(u**4 - jnp.log(u)), u0, 1e-12, 2))
    assert int(short(jnp.array([-1.0]))[4]) == mlefit.Status.INIT_NOT_FINITE
    _, _, _, steps, status, _ = short(jnp.array([5.0]))
    assert int(status) == mlefit.Status.MAX_STEPS and int(steps) == 2


# -- sufficient statistics -------------------------------------------------------------------
SUFFSTATS_CASES = {
    "norm": (lambda p, x: jst.norm.logpdf(x, p["a"], p["b"]), {"a": 0.3, "b": 1.4}, "normal"),
    "gamma": (
        lambda p, x: jst.gamma.logpdf(x, p["a"], scale=p["b"]),
        {"a": 2.3, "b": 1.7},
        "gamma",
    ),
    "beta": (lambda p, x: jst.beta.logpdf(x, p["a"], p["b"]), {"a": 2.0, "b": 3.0}, "beta"),
    "expon": (lambda p, x: jst.expon.logpdf(x, scale=p["a"]), {"a": 0.7}, "gamma"),
    "lognormal": (
        lambda p, x: jst.norm.logpdf(jnp.log(x), p["a"], p["b"]) - jnp.log(x),
        {"a": 0.3, "b": 1.4},
        "gamma",
    ),
}


def _draw(kind, rng):
    if kind == "normal":
        return rng.normal(1e6, 1.0, (2, 30))  # a large offset: needs centred moments
    if kind == "gamma":
        return rng.gamma(2.0, 1.5, (2, 30))
    return rng.beta(2.0, 3.0, (2, 30))


@pytest.mark.parametrize("name", sorted(SUFFSTATS_CASES))
def test_suffstats_reduction_equals_the_direct_mean_loglik(name):
    from mlefit import _suffstats as ss
    from mlefit._likelihood import mean_nll

    logp, params, kind = SUFFSTATS_CASES[name]
    data = jnp.asarray(_draw(kind, np.random.default_rng(4)))
    plan = ss.plan_for(logp, params, (jax.ShapeDtypeStruct((), jnp.float64),))
    spec = ss.specialise(plan, (data,), None)
    assert spec is not None
    x = data[1]
    stats = ss.suffstats(spec, (x,), None)

    def reduced(p):
        return ss.reduced_mean_loglik(spec, p, stats)

    def direct(p):
        return -mean_nll(logp, p, (x,))

    @jax.jit
    def both(p):
        # (beta: no Hessian; compiling two derivatives of betaln takes ~10 s)
        hess = (lambda f: f) if name == "beta" else jax.hessian
        return [(f(p), jax.grad(f)(p), hess(f)(p)) for f in (reduced, direct)]

    (v_r, g_r, h_r), (v_d, g_d, h_d) = both(params)
    # Same function, different order of floating-point sums: ~1e-15 relative (the
    # Normal with a 1e6 offset loses ~1e-12 in either form: its NLL is ~1e11).
    assert rel_err(v_r, v_d) < 1e-12
    for a, b in [(g_r, g_d), (h_r, h_d)]:
        la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
        for u, v in zip(la, lb, strict=True):
            np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-9)


def test_models_that_are_not_affine_are_fitted_from_the_observations():
    from mlefit import _suffstats as ss

    scalar = (jax.ShapeDtypeStruct((), jnp.float64),)
    t = ss.plan_for(
        lambda p, x: jst.t.logpdf(x, p["df"], p["loc"], 1.0), {"df": 3.0, "loc": 0.0}, scalar
    )
    assert t is None  # log(1 + (x - loc)^2 / df): not affine in any data feature
    # Poisson's xlogy(k, mu) branches on k != 0, which differs between observations
    pois = ss.plan_for(lambda p, k: jst.poisson.logpmf(k, p["mu"]), {"mu": 2.0}, scalar)
    k = jnp.asarray([[0.0, 1.0, 3.0], [2.0, 0.0, 1.0]])
    assert pois is None or ss.specialise(pois, (k,), None) is None
    r = mlefit.fit_many(
        lambda p, k: jst.poisson.logpmf(k, p["mu"]), k, {"mu": mlefit.Positive(1.0)}
    )
    assert rel_err(r.params["mu"], np.asarray(k).mean(axis=1)) < 1e-8  # MLE: the mean


@pytest.mark.filterwarnings("ignore:mlefit. this fit runs in float32")
def test_float32_data_fit_in_float32(xs):
    x32 = xs.astype(np.float32)
    r = mlefit.fit_many(normal, x32, INIT)
    assert r.params["mu"].dtype == jnp.float32 and r.nll.dtype == jnp.float32
    assert bool(r.converged.all())  # default tol in float32: 1e-5
    mu, sigma = closed_form_normal(xs)
    # float32 rounding of 40-term sums is ~1e-6 relative; the gradient tol 1e-5 on a
    # Hessian of order 1/sigma^2 leaves errors up to ~1e-5 * sigma^2.
    assert np.max(np.abs(np.asarray(r.params["mu"]) - mu) / sigma) < 1e-4
    assert rel_err(r.params["sigma"], sigma) < 1e-4


def test_a_ready_made_start_blames_nan_not_zero_spread():
    # check_finite=False lets a NaN reach the model's start: the set's warning names the
    # NaN and its observation (it said "all 30 observations are equal"), and the other
    # data sets are fitted as usual.
    x = np.random.default_rng(1).gamma(2.0, 1.5, (4, 30))
    x[1, 5] = np.nan
    with pytest.warns(UserWarning, match=r"data set 1: Gamma: cannot start a fit: data\[5\] "
                      r"is not finite"):
        res = mlefit.fit_many(mlefit.models.Gamma(), x, check_finite=False)
    assert [str(s) for s in res.status] == [
        "converged", "init_not_finite", "converged", "converged"]


@pytest.mark.parametrize("kind", ["variance", "frequency"])
def test_weights_kind_per_data_set_is_fits(kind):
    # fit_many(weights=, weights_kind=) is fit per data set: n_obs, standard errors, AIC.
    rng = np.random.default_rng(0)
    x, w = rng.normal(1.0, 2.0, (3, 40)), rng.uniform(0.2, 2.0, (3, 40))
    many = mlefit.fit_many(mlefit.models.Normal(), x, weights=w, weights_kind=kind)
    for b in range(3):
        one = mlefit.fit(mlefit.models.Normal(), x[b], weights=w[b], weights_kind=kind)
        assert float(many.n_obs[b]) == pytest.approx(float(one.n_obs), rel=1e-14)
        for name in ("loc", "scale"):
            assert float(many[b].stderr[name]) == pytest.approx(float(one.stderr[name]),
                                                                rel=1e-8)
        assert float(many[b].aic) == pytest.approx(float(one.aic), rel=1e-12)
    assert float(many.n_obs[0]) == (40.0 if kind == "variance" else pytest.approx(w[0].sum()))


def test_fractional_frequency_weights_are_warned_about_as_in_fit():
    x = np.random.default_rng(0).normal(size=(2, 10))
    w = np.ones((2, 10))
    w[1, 3] = 0.5
    with pytest.warns(UserWarning, match=r"weights\[1, 3\] = 0.5 is not a whole number"):
        mlefit.fit_many(mlefit.models.Normal(), x, weights=w)
    with pytest.raises(ValueError, match="weights_kind: expected one of"):
        mlefit.fit_many(mlefit.models.Normal(), x, weights=w, weights_kind="analytic")
