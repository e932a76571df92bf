"""The weak-Wolfe line search of the default L-BFGS (mlefit._linesearch)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from mlefit._linesearch import scale_by_wolfe_linesearch
from mlefit._solver_optax import OptaxSolver, default_optimizer

C1, C2 = 1e-4, 0.9


def search(f, u, d, **kw):
    ls = scale_by_wolfe_linesearch(**kw)
    value, grad = jax.value_and_grad(f)(u)
    step, state = jax.jit(lambda u, d: ls.update(d, ls.init(u), u, value=value, grad=grad,
                                                 value_fn=f))(u, d)
    return value, grad, step, state


def quadratic(seed, n):
    """``(H, b)`` of ``f(u) = u^T H u / 2 - b^T u`` with ``H`` positive definite."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, n))
    return jnp.asarray(A @ A.T + 0.1 * np.eye(n)), jnp.asarray(rng.standard_normal(n))


def _quadratic_value(u, H, b):
    return 0.5 * u @ (H @ u) - b @ u


_LS = scale_by_wolfe_linesearch()


@jax.jit
def _search_quadratic(u, d, H, b):
    """The line search on a quadratic given as data: one compiled program per size."""
    f = lambda v: _quadratic_value(v, H, b)  # noqa: E731
    value, grad = jax.value_and_grad(f)(u)
    step, state = _LS.update(d, _LS.init(u), u, value=value, grad=grad, value_fn=f)
    return value, grad, step, state


@settings(max_examples=30, deadline=None)
@given(seed=hs.integers(0, 2**31 - 1), n=hs.integers(1, 6), scale=hs.floats(1e-3, 1e3))
def test_accepted_step_meets_the_weak_wolfe_conditions(seed, n, scale):
    H, b = quadratic(seed, n)
    f = lambda v: _quadratic_value(v, H, b)  # noqa: E731
    u = jnp.asarray(np.random.default_rng(seed + 1).standard_normal(n))
    d = -scale * jax.grad(f)(u)  # a descent direction, too long or too short by `scale`
    value, grad, step, state = _search_quadratic(u, d, H, b)
    t = float(state.step)
    slope = float(grad @ d)
    assert t > 0
    # Conditions checked independently of the implementation, from f itself.
    new_value, new_grad = jax.value_and_grad(f)(u + t * d)
    assert float(new_value) <= float(value) + C1 * t * slope
    assert float(new_grad @ d) >= C2 * slope
    # The state carries value and gradient at the new point, and the step is t * d.
    np.testing.assert_allclose(state.value, new_value, rtol=1e-12)
    np.testing.assert_allclose(state.grad, new_grad, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(step, t * d, rtol=1e-15)


def test_a_direction_that_climbs_is_replaced_by_minus_the_gradient():
    f = lambda u: jnp.sum((u - 1.0) ** 2)  # noqa: E731
    u = jnp.zeros(3)
    value, grad, step, state = search(f, u, +jax.grad(f)(u))  # uphill
    assert float(grad @ step) < 0
    assert float(state.value) < float(value)
    np.testing.assert_allclose(step / float(state.step), -grad)


def test_non_finite_trials_shrink_the_step_until_finite():
    # f(u) = -log(1 - u) - 2u is finite only for u < 1; the minimum is at u = 1/2.
    f = lambda u: -jnp.log1p(-u[0]) - 2.0 * u[0]  # noqa: E731
    u = jnp.asarray([0.0])
    value, grad, step, state = search(f, u, jnp.asarray([10.0]))  # t = 1 lands at u = 10
    assert np.isfinite(float(state.value))
    assert 0 < float(u[0] + step[0]) < 1
    assert float(state.value) < float(value)


def test_no_acceptable_trial_leaves_the_point_unchanged():
    # f rises along d, but the gradient given (wrong, as a rounding-dominated one can be)
    # says it descends: no trial lowers f.
    f = lambda u: u[0] + 1.0  # noqa: E731
    u = jnp.ones(2)
    ls = scale_by_wolfe_linesearch(max_evals=5)
    step, state = ls.update(jnp.asarray([1.0, 0.0]), ls.init(u), u, value=f(u),
                            grad=jnp.asarray([-1.0, 0.0]), value_fn=f)
    assert float(state.step) == 0.0 and int(state.evals) == 5
    np.testing.assert_array_equal(step, 0.0)
    assert float(state.value) == 2.0


def test_unexpected_extra_arguments_are_refused():
    ls = scale_by_wolfe_linesearch()
    u = jnp.ones(1)
    with pytest.raises(TypeError, match="unexpected arguments"):
        ls.update(u, ls.init(u), u, value=1.0, grad=u, value_fn=jnp.sum, batch=3)


def rosenbrock(u):
    return jnp.sum(100.0 * (u[1:] - u[:-1] ** 2) ** 2 + (1.0 - u[:-1]) ** 2)


@pytest.mark.parametrize("n", [2, 10])
def test_default_lbfgs_solves_rosenbrock(n):
    """Non-convex: the curvature condition keeps the L-BFGS pairs s.y > 0 throughout."""
    opt = default_optimizer()
    vg = jax.value_and_grad(rosenbrock)

    @jax.jit
    def run(u):
        def body(c):
            u, s, v, g, k, min_sy = c
            step, s = opt.update(g, s, u, value=v, grad=g, value_fn=rosenbrock)
            un = optax.apply_updates(u, step)
            vn, gn = s[-1].value, s[-1].grad
            return un, s, vn, gn, k + 1, jnp.minimum(min_sy, (un - u) @ (gn - g))

        v, g = vg(u)
        c = (u, opt.init(u), v, g, 0, jnp.inf)
        return jax.lax.while_loop(lambda c: (jnp.max(jnp.abs(c[3])) > 1e-9) & (c[4] < 500),
                                  body, c)

    u, _, v, g, k, min_sy = run(jnp.full((n,), -1.2).at[1::2].set(1.0))
    assert int(k) < 500 and float(jnp.max(jnp.abs(g))) <= 1e-9
    np.testing.assert_allclose(u, 1.0, atol=1e-8)  # the minimum is (1, ..., 1)
    assert float(min_sy) > 0


def test_under_vmap_each_search_stops_on_its_own():
    """A batch of searches: one accepts its first trial, the other bisects; each gets the
    step it gets alone."""
    f = lambda u: jnp.sum(u**2)  # noqa: E731
    ls = scale_by_wolfe_linesearch()

    def one(scale):
        u = jnp.ones(1)
        value, grad = jax.value_and_grad(f)(u)
        return ls.update(-scale * grad / 2, ls.init(u), u, value=value, grad=grad, value_fn=f)

    steps, states = jax.jit(jax.vmap(one))(jnp.asarray([1.0, 1000.0]))
    assert int(states.evals[0]) == 1 and float(states.step[0]) == 1.0  # the Newton step
    assert int(states.evals[1]) > 5 and float(states.value[1]) < 1.0
    alone_step, alone = jax.jit(one)(1000.0)
    np.testing.assert_allclose(steps[1], alone_step, rtol=1e-15)
    assert int(alone.evals) == int(states.evals[1])


def test_exhausted_search_keeps_only_a_fallback_with_positive_curvature():
    # On the concave stretch of f = -u^2 + u^4 / 4, trials lower f while phi' keeps
    # falling: s.y < 0 there, which would spoil the L-BFGS memory; no step is taken.
    f = lambda u: jnp.sum(-(u**2) + 0.25 * u**4)  # noqa: E731
    u = jnp.asarray([0.1])
    value, grad = jax.value_and_grad(f)(u)
    ls = scale_by_wolfe_linesearch(max_evals=2)
    step, state = ls.update(jnp.asarray([0.01]), ls.init(u), u, value=value, grad=grad,
                            value_fn=f)
    assert float(state.step) == 0.0 and float(state.value) == float(value)
    np.testing.assert_array_equal(step, 0.0)


def test_exhausted_search_takes_its_lowest_trial_when_curvature_is_positive():
    # f = u^2 from u = 1 along d = -0.01: every trial lowers f with positive curvature but
    # is still descending steeply; after 3 doublings (t = 1, 2, 4) the lowest is t = 4.
    f = lambda u: jnp.sum(u**2)  # noqa: E731
    u = jnp.asarray([1.0])
    value, grad = jax.value_and_grad(f)(u)
    ls = scale_by_wolfe_linesearch(max_evals=3)
    step, state = ls.update(jnp.asarray([-0.01]), ls.init(u), u, value=value, grad=grad,
                            value_fn=f)
    assert float(state.step) == 4.0 and int(state.evals) == 3
    np.testing.assert_allclose(step, [-0.04])
    np.testing.assert_allclose(state.value, 0.96**2)


def test_rounding_level_values_are_judged_by_the_derivative():
    # f = 1e8 + (u - 1)^2 near its minimum: values differ below rounding. The full step
    # t = 1 overshoots (u -> 0.99997, farther from 1) and must not be taken.
    f = lambda u: jnp.sum(1e8 + (u - 1.0) ** 2)  # noqa: E731
    u = jnp.asarray([1.0 + 1e-5])
    value, grad, step, state = search(f, u, jnp.asarray([-4e-5]))
    assert abs(float(u[0] + step[0]) - 1.0) < 1e-5  # closer to the minimum than before


def test_a_trial_with_a_finite_value_but_non_finite_gradient_is_refused():
    # The sqrt(|u|) term has no finite derivative at 0, where the trial t = 1 lands; the
    # value there is finite and lowest, but the trial must be refused (then t = 1/2).
    f = lambda u: jnp.sum((u - 0.2) ** 2 + 1e-3 * jnp.sqrt(jnp.abs(u)))  # noqa: E731
    u = jnp.asarray([1.0])
    value, grad, step, state = search(f, u, jnp.asarray([-1.0]))
    assert np.isfinite(np.asarray(state.grad)).all()
    assert float(state.step) == 0.5 and float(state.value) < float(value)


@pytest.mark.parametrize("params_dtype,value_dtype", [("float32", "float64"),
                                                      ("float64", "float32")])
def test_fit_loop_with_an_objective_in_another_float_dtype(params_dtype, value_dtype):
    """The state is a loop carry: its dtypes must not change, and f's value must not be
    rounded to the parameters' dtype."""
    from mlefit._iterate import iterate

    target = np.array([1.0, -2.0, 3.0])

    def f(u):
        return jnp.sum((u.astype(value_dtype) - target.astype(value_dtype)) ** 2) + 999.0

    u0 = jnp.zeros(3, params_dtype)
    u, value, grad, steps, status, _ = jax.jit(
        lambda u0: iterate(OptaxSolver(default_optimizer()), f, u0, 1e-5, 100)
    )(u0)
    assert int(status) == 0  # converged
    assert value.dtype == jnp.dtype(value_dtype) and u.dtype == jnp.dtype(params_dtype)
    np.testing.assert_allclose(u, target, rtol=1e-5)
    assert float(value) == float(f(u))  # the value reported is f at the point returned
