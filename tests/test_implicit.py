"""Fits that compose with JAX: ``fit`` under ``jit``/``vmap``/``grad`` and the implicit
derivative of the estimate (mlefit/_traced.py, mlefit/_implicit.py).

Expected values come from closed forms (the Gaussian MLE, the Gamma shape with a known
scale), from refits (drop-one, central finite differences of the concrete fit) and from
``fit_many``. Fits are jitted once per module (module-level functions), data are small.
"""

import warnings

import jax
import jax.numpy as jnp
import jax.scipy.stats as st
import numpy as np
import pytest
from jax.scipy.special import polygamma

import mlefit
from mlefit._implicit import argmin
from mlefit._newton import Newton


def normal(p, x):
    return st.norm.logpdf(x, p["mu"], p["sigma"])


INIT = {"mu": 0.0, "sigma": mlefit.Positive(1.0)}
RNG = np.random.default_rng(15)
X_NORMAL = jnp.asarray(RNG.normal(1.0, 2.0, 40))


@jax.jit
def normal_params(x, w):
    return mlefit.fit(normal, x, INIT, weights=w).params


def _mle(x):
    mu = np.mean(x)
    return mu, np.sqrt(np.mean((x - mu) ** 2))


# -- the traced core ---------------------------------------------------------------------
def test_jit_and_vmap_give_the_concrete_fit():
    n = X_NORMAL.shape[0]
    traced = normal_params(X_NORMAL, jnp.ones(n))
    concrete = mlefit.fit(normal, np.asarray(X_NORMAL), INIT).params
    mu, sigma = _mle(np.asarray(X_NORMAL))
    for k, v in (("mu", mu), ("sigma", sigma)):
        assert abs(float(traced[k]) - v) < 1e-12 * max(1.0, abs(v))
        assert abs(float(traced[k]) - float(concrete[k])) < 1e-12 * max(1.0, abs(v))
    stack = jnp.stack([X_NORMAL, 3.0 * X_NORMAL - 1.0])
    batched = jax.vmap(normal_params, in_axes=(0, None))(stack, jnp.ones(n))
    # A member may stop at the gradient tolerance (1e-9 on the mean NLL) rather than
    # after a last Newton step: its sigma is then within about tol * sigma^2 of the MLE.
    np.testing.assert_allclose(batched["sigma"], [sigma, 3.0 * sigma], rtol=1e-8)


def test_vmap_of_the_core_equals_fit_many():
    stack = jnp.asarray(RNG.gamma(2.0, 1.5, (6, 30)))
    init = {"mu": 1.0, "sigma": mlefit.Positive(1.0)}
    core = jax.vmap(lambda x: mlefit.fit(normal, x, init).params)(stack)
    many = mlefit.fit_many(normal, stack, init)
    for k in ("mu", "sigma"):
        np.testing.assert_allclose(core[k], many.params[k], rtol=0, atol=1e-8)


def test_host_methods_inside_jit_say_what_to_do():
    seen = {}

    def f(x):
        res = mlefit.fit(normal, x, INIT)
        seen["repr"] = repr(res)
        for what in ("summary", "stderr", "status"):
            with pytest.raises(TypeError, match="not available inside jit/vmap.*outside the "
                                                "transformation"):
                getattr(res, what)() if what == "summary" else getattr(res, what)
        return res

    res = jax.jit(f)(X_NORMAL)
    assert "traced" in seen["repr"]
    sigma = _mle(np.asarray(X_NORMAL))[1]
    # outside: the returned result is an ordinary one (inference works)
    np.testing.assert_allclose(res.stderr["mu"], sigma / np.sqrt(X_NORMAL.shape[0]), rtol=1e-8)
    assert "converged" in res.summary()


def test_static_and_integer_arguments_are_named():
    with pytest.raises(TypeError, match="tol: is a static argument of fit"):
        jax.grad(lambda t: mlefit.fit(normal, X_NORMAL, INIT, tol=t).params["mu"])(1e-9)
    with pytest.raises(TypeError, match="max_steps: is a static argument"):
        jax.vmap(lambda m: mlefit.fit(normal, X_NORMAL, INIT, max_steps=m).nll)(jnp.arange(2))
    with pytest.raises(ValueError, match="batch_size: minibatch fits are not available inside"):
        jax.jit(lambda x: mlefit.fit(normal, x, INIT, batch_size=8).nll)(X_NORMAL)
    counts = jnp.arange(10)
    with pytest.raises(TypeError, match="grad requires real- or complex-valued inputs.*int"):
        jax.grad(lambda c: mlefit.fit(normal, c, INIT).params["mu"])(counts)


# -- implicit derivatives against closed forms --------------------------------------------
def test_gaussian_derivative_closed_form_reverse_and_forward():
    x = X_NORMAL
    n = x.shape[0]
    mu, sigma = _mle(np.asarray(x))
    rev, fwd = jax.jit(lambda x, w: (jax.jacrev(normal_params)(x, w),
                                     jax.jacfwd(normal_params)(x, w)))(x, jnp.ones(n))
    dmu = np.full(n, 1.0 / n)  # d mean / d x_i
    dsigma = (np.asarray(x) - mu) / (n * sigma)  # d sqrt(mean (x - mu)^2) / d x_i
    for jac in (rev, fwd):
        np.testing.assert_allclose(jac["mu"], dmu, rtol=0, atol=1e-10 / n)
        np.testing.assert_allclose(jac["sigma"], dsigma, rtol=0, atol=1e-10 / n)


influence = jax.jit(jax.jacrev(normal_params, argnums=1))


def test_influence_function_of_the_gaussian_mle():
    x = np.asarray(X_NORMAL)
    n = x.size
    mu, sigma = _mle(x)
    jac = influence(X_NORMAL, jnp.ones(n))
    # IF of the mean: x_i - mu; of the variance sigma^2: (x_i - mu)^2 - sigma^2.
    np.testing.assert_allclose(n * jac["mu"], x - mu, rtol=0, atol=1e-9)
    np.testing.assert_allclose(n * 2 * sigma * jac["sigma"], (x - mu) ** 2 - sigma**2,
                               rtol=0, atol=1e-9)


def test_influence_function_against_dropping_one_observation():
    # Refit without observation i (weight 0): theta_(-i) - theta ~ -IF_i / (n - 1), up to
    # O(1/n^2); exact for the mean.
    x = jnp.asarray(np.random.default_rng(3).normal(0.0, 1.0, 400))
    n = x.shape[0]
    jac = influence(x, jnp.ones(n))
    full = normal_params(x, jnp.ones(n))
    for i in (0, 7, int(np.argmax(np.abs(np.asarray(x))))):
        drop = normal_params(x, jnp.ones(n).at[i].set(0.0))
        for k in ("mu", "sigma"):
            change = float(drop[k] - full[k])
            predicted = -n * float(jac[k][i]) / (n - 1)
            assert abs(change - predicted) <= 5.0 / n * abs(predicted) + 1e-12


def test_derivative_in_a_fixed_value_closed_form():
    # Gamma with known scale: mean(log x) - log(scale) - digamma(shape*) = 0, so
    # d shape* / d scale = -1 / (scale * trigamma(shape*)).
    x = jnp.asarray(np.random.default_rng(4).gamma(2.5, 1.2, 60))
    gamma = mlefit.models.Gamma()
    f = jax.jit(jax.value_and_grad(lambda s: mlefit.fit(gamma, x, fixed={"scale": s})
                                   .params["shape"]))
    shape, d = f(1.3)
    assert abs(float(d) + 1.0 / (1.3 * float(polygamma(1, shape)))) < 1e-10


def test_start_has_zero_derivative():
    g = jax.grad(lambda m0: mlefit.fit(normal, X_NORMAL, {"mu": m0, "sigma":
                                                          mlefit.Positive(1.0)}).params["mu"])
    assert float(g(0.3)) == 0.0


# -- central finite differences (float64), non-closed-form models ---------------------------
def _check_fd(fun, x, v, h, rtol=1e-5):
    """Directional derivative of ``fun`` at ``x`` along ``v``: implicit (jvp and vjp) vs
    central differences of the same fit (one compiled program for all of it)."""

    @jax.jit
    def everything(x, v):
        value, tangent = jax.jvp(fun, (x,), (v,))
        _, vjp = jax.vjp(fun, x)
        out_ct = jnp.cos(jnp.arange(value.size, dtype=value.dtype))
        fd = (fun(x + h * v) - fun(x - h * v)) / (2 * h)
        return tangent, fd, jnp.vdot(out_ct, tangent), jnp.vdot(vjp(out_ct)[0], v)

    tangent, fd, lhs, rhs = everything(x, v)
    np.testing.assert_allclose(tangent, fd, rtol=rtol, atol=rtol * np.max(np.abs(fd)))
    # reverse mode: <ct, J v> = <J^T ct, v>
    assert abs(float(lhs) - float(rhs)) <= 1e-10 * max(1.0, abs(float(lhs)))


def _flat(params):
    return jnp.concatenate([jnp.ravel(p) for p in jax.tree_util.tree_leaves(params)])


def test_finite_differences_gamma():
    x = jnp.asarray(np.random.default_rng(5).gamma(1.7, 2.0, 80))
    fun = lambda x: _flat(mlefit.fit(mlefit.models.Gamma(), x).params)  # noqa: E731
    v = jnp.asarray(np.random.default_rng(6).normal(size=x.shape))
    _check_fd(fun, x, v, 1e-4)


def test_finite_differences_logistic_regression():
    rng = np.random.default_rng(7)
    X = rng.normal(size=(120, 3))
    y = (rng.uniform(size=120) < 1 / (1 + np.exp(-(0.3 + X @ [1.0, -0.5, 0.2])))).astype(float)
    model = mlefit.models.Logistic()
    fun = lambda X: _flat(mlefit.fit(model, (X, jnp.asarray(y))).params)  # noqa: E731
    v = jnp.asarray(rng.normal(size=X.shape))
    _check_fd(fun, jnp.asarray(X), v, 1e-4)


def mixture(p, x):
    a = st.norm.logpdf(x, p["m1"], p["s1"]) + jnp.log(p["w"])
    b = st.norm.logpdf(x, p["m2"], p["s2"]) + jnp.log1p(-p["w"])
    return jnp.logaddexp(a, b)


def test_finite_differences_mixture_at_a_local_optimum():
    rng = np.random.default_rng(8)
    x = jnp.asarray(np.concatenate([rng.normal(-2.0, 0.7, 70), rng.normal(1.5, 1.0, 50)]))
    init = {"w": mlefit.Interval(0.0, 1.0, 0.5), "m1": -1.0, "m2": 1.0,
            "s1": mlefit.Positive(1.0), "s2": mlefit.Positive(1.0)}

    def fit(x):
        res = mlefit.fit(mixture, x, init)
        return _flat(res.params), res.status_code

    res = mlefit.fit(mixture, np.asarray(x), init)  # the concrete fit: a local optimum
    assert res.converged and res.hessian_cond < 1e3
    v = jnp.asarray(rng.normal(size=x.shape))
    _check_fd(lambda x: fit(x)[0], x, v, 1e-4)


# -- a hyperparameter tuned through the fit -------------------------------------------------
def _ridge_problem():
    rng = np.random.default_rng(11)
    d, n_train, n_test = 8, 40, 400
    beta = rng.normal(0.0, 0.5, d)
    X = rng.normal(size=(n_train + n_test, d))
    y = (rng.uniform(size=n_train + n_test) < 1 / (1 + np.exp(-X @ beta))).astype(float)
    return (jnp.asarray(X[:n_train]), jnp.asarray(y[:n_train]),
            jnp.asarray(X[n_train:]), jnp.asarray(y[n_train:]))


def test_ridge_strength_by_gradient_descent_matches_a_grid_search():
    Xtr, ytr, Xte, yte = _ridge_problem()
    model = mlefit.models.Logistic()
    init = {"intercept": 0.0, "coef": jnp.zeros(Xtr.shape[1])}

    def heldout(log_lam):
        lam = jnp.exp(log_lam)
        res = mlefit.fit(model, (Xtr, ytr), init,
                         penalty=lambda p: lam * jnp.sum(p["coef"] ** 2))
        return mlefit.nll(model, res.params, (Xte, yte))

    grid = jnp.linspace(-4.0, 4.0, 17)  # step 0.5
    on_grid = jax.jit(jax.vmap(heldout))
    values = on_grid(grid)
    k = int(jnp.argmin(values))
    assert 0 < k < grid.size - 1  # an interior optimum: the comparison is meaningful
    value_and_grad = jax.jit(jax.value_and_grad(heldout))
    # the implicit derivative in the penalty's strength, against central differences
    t0 = grid[k] + 0.1
    _, g = value_and_grad(t0)
    up, down = on_grid(jnp.full(grid.shape, t0).at[0].add(1e-4).at[1].add(-1e-4))[:2]
    fd = (up - down) / 2e-4
    assert abs(float(g) - float(fd)) <= 1e-5 * abs(float(fd)) + 1e-10
    # gradient descent with a secant step size, from the grid's edge
    t, step = float(grid[2]), 1.0
    _, g_prev = value_and_grad(t)
    t_prev, t = t, t - step * float(jnp.sign(g_prev))
    for _ in range(40):
        _, g = value_and_grad(t)
        if abs(float(g)) < 1e-9:
            break
        curvature = (float(g) - float(g_prev)) / (t - t_prev)
        new = t - float(g) / curvature if curvature > 0 else t - float(jnp.sign(g)) * step
        t_prev, g_prev, t = t, g, float(np.clip(new, t - 2.0, t + 2.0))
    assert abs(t - float(grid[k])) <= float(grid[1] - grid[0])
    assert float(value_and_grad(t)[0]) <= float(values[k]) + 1e-12


# -- failures are NaN, with the reason --------------------------------------------------------
def test_unconverged_fit_gives_nan_with_a_warning_outside_jit():
    def mu_of(x):
        return mlefit.fit(normal, x, INIT, max_steps=1).params["mu"]

    with pytest.warns(RuntimeWarning, match="did not converge \\(status max_steps\\)"):
        g = jax.grad(mu_of)(X_NORMAL)
    assert np.all(np.isnan(g))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = jax.jit(jax.grad(mu_of))(X_NORMAL)  # inside jit: NaN only
    assert np.all(np.isnan(g))


def test_singular_hessian_names_the_direction():
    def sum_model(p, x):  # only a + b is identified
        return st.norm.logpdf(x, p["a"] + p["b"], 1.0)

    def a_of(x):
        return mlefit.fit(sum_model, x, {"a": 0.0, "b": 0.0}).params["a"]

    with pytest.warns(RuntimeWarning, match="direction 0.707\\*a -0.707\\*b is not identified"):
        g = jax.grad(a_of)(X_NORMAL)
    assert np.all(np.isnan(g))


def test_conjugate_gradients_above_the_cholesky_size(monkeypatch):
    # CG on Hessian-vector products above the Cholesky limit (lowered here so that the
    # test stays small). A separable quadratic: x*_j = a_j / (1 + c_j).
    import mlefit._implicit as implicit

    monkeypatch.setattr(implicit, "CHOLESKY_MAX_PARAMS", 3)
    p = 6
    c = jnp.linspace(0.5, 2.0, p)

    def xstar(a):
        f = lambda x, a: 0.5 * jnp.sum((1 + c) * x**2) - jnp.dot(a, x)  # noqa: E731
        return argmin(Newton(), f, jnp.zeros(p), a, 1e-12, 20)[0]

    a = jnp.linspace(-1.0, 1.0, p)
    v = jnp.cos(jnp.arange(p))
    tangent, cotangent = jax.jit(lambda a, v: (jax.jvp(xstar, (a,), (v,))[1],
                                               jax.vjp(xstar, a)[1](v)[0]))(a, v)
    np.testing.assert_allclose(tangent, v / (1 + c), rtol=1e-8)
    np.testing.assert_allclose(cotangent, v / (1 + c), rtol=1e-8)
    assert p > implicit.CHOLESKY_MAX_PARAMS


def test_traced_data_outside_the_support_is_a_status():
    # Gamma from sufficient statistics (support conditions chosen in the trace): a
    # negative observation gives the status the raw objective would, not a wrong fit.
    x = jnp.asarray(np.random.default_rng(9).gamma(2.0, 1.0, 30))
    init = {"shape": mlefit.Positive(1.0), "scale": mlefit.Positive(1.0)}
    codes = jax.jit(jax.vmap(lambda x: mlefit.fit(mlefit.models.Gamma(), x, init).status_code))(
        jnp.stack([x, x.at[3].set(-1.0)]))
    assert codes.tolist() == [mlefit.Status.CONVERGED, mlefit.Status.INIT_NOT_FINITE]


def test_traced_fixed_value_outside_its_constraint_is_a_status():
    # The host refuses fixed={"sigma": -1.0} for a Positive sigma; traced, the value is
    # only known in the program: the fit ends init_not_finite instead of fitting a
    # normal density with a negative scale (which JAX evaluates without complaint).
    x = jnp.asarray(np.random.default_rng(3).normal(1.0, 2.0, 50))
    init = {"mu": 0.0, "sigma": mlefit.Positive(1.0)}
    normal = lambda p, x: jax.scipy.stats.norm.logpdf(x, p["mu"], p["sigma"])  # noqa: E731
    codes = jax.jit(jax.vmap(lambda s: mlefit.fit(normal, x, init, fixed={"sigma": s})
                             .status_code))(jnp.array([2.0, -1.0, 0.0]))
    assert codes.tolist() == [mlefit.Status.CONVERGED, mlefit.Status.INIT_NOT_FINITE,
                              mlefit.Status.INIT_NOT_FINITE]
