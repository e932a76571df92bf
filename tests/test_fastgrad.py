"""The fast gradient equals plain autodiff, under jit, vmap and second derivatives."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.stats as st
import numpy as np
import pytest

from mlefit import _fastgrad
from mlefit._constraints import Positive, constrain, split_init
from mlefit._fastgrad import MIN_OBS, fast_objective, fast_value_and_grad, rewrite_count
from mlefit._likelihood import mean_nll
from mlefit._model import as_problem

N = MIN_OBS + 5  # just above the threshold: small data, the rewrite is on
# Plain and fast gradients are the same sums in a different order: in float64 they agree
# to a few ulps of the largest term, far below 1e-12 relative to the gradient's max-norm.
RTOL = 1e-12


def _rel(a, b) -> float:
    a, b = np.ravel(np.asarray(a, float)), np.ravel(np.asarray(b, float))
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def _tree_rel(a, b) -> float:
    return max(_rel(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def _logistic(w, x, y):
    z = x @ w
    return y * z - jnp.logaddexp(0.0, z)


def _softmax(p, x, y):
    return jax.nn.log_softmax(x @ p["W"] + p["b"])[y]


def _gauss_reg(p, x, y):
    return st.norm.logpdf(y, x @ p["beta"], p["sigma"])


class _Linear(eqx.Module):
    w: jax.Array
    b: jax.Array

    def log_prob(self, x, y):
        return st.norm.logpdf(y, jnp.dot(self.w, x) + self.b, 1.5)


def _data(seed=0, n=N, d=4):
    rng = np.random.default_rng(seed)
    X = jnp.asarray(rng.standard_normal((n, d)))
    y01 = jnp.asarray((rng.random(n) < 0.4).astype(float))
    labels = jnp.asarray(rng.integers(0, 3, n))
    yreal = X @ jnp.arange(1.0, d + 1) + jnp.asarray(rng.standard_normal(n))
    return X, y01, labels, yreal


def _case(name):
    """(loss(u, data, weights), u, data, weights) for each model form."""
    X, y01, labels, yreal = _data()
    d = X.shape[1]
    if name == "logistic":
        logp, init, data, weights = _logistic, jnp.full(d, 0.1), (X, y01), None
    elif name == "softmax":
        init = {"W": jnp.linspace(-0.3, 0.3, d * 3).reshape(d, 3), "b": jnp.zeros(3)}
        logp, data, weights = _softmax, (X, labels), None
    elif name == "gauss_positive":
        init = {"beta": jnp.zeros(d), "sigma": Positive(2.0)}
        logp, data, weights = _gauss_reg, (X, yreal), None
    elif name == "module":
        problem, init = as_problem(_Linear(jnp.full(d, 0.2), jnp.asarray(0.1)), None, (X, yreal))
        logp, data, weights = problem.logp, (X, yreal), None
    elif name == "column":  # a (d, 1) weight matrix: the cotangent is N x 1
        logp = lambda W, x, y: st.norm.logpdf(y, (x @ W)[0], 2.0)  # noqa: E731
        init, data, weights = jnp.full((d, 1), 0.3), (X, yreal), None
    elif name == "weights_zeros":
        w = np.random.default_rng(1).random(N)
        w[::7] = 0.0
        logp, init, data, weights = _logistic, jnp.full(d, -0.2), (X, y01), jnp.asarray(w)
    else:
        raise AssertionError(name)
    u, transforms = split_init(init, jnp.float64)

    def loss(v, data, weights):
        return mean_nll(logp, constrain(v, transforms), data, weights)

    return loss, u, data, weights


CASES = ["logistic", "softmax", "gauss_positive", "module", "column", "weights_zeros"]


@pytest.mark.parametrize("name", CASES)
def test_value_and_grad_equal_plain_autodiff(name):
    loss, u, data, weights = _case(name)
    # the fast path is really taken; softmax's X^T R (N x K cotangent) stays a GEMM
    assert rewrite_count(loss, u, data, weights) >= (0 if name == "softmax" else 1)
    f = fast_objective(loss, data, weights)
    got = jax.jit(jax.value_and_grad(f))(u)
    want = jax.jit(jax.value_and_grad(lambda v: loss(v, data, weights)))(u)
    assert _rel(got[0], want[0]) <= RTOL
    assert _tree_rel(got[1], want[1]) <= RTOL
    assert _tree_rel(fast_value_and_grad(loss, u, data, weights), want) <= RTOL


@pytest.mark.parametrize("name", ["logistic", "softmax"])
def test_under_vmap_over_data_sets(name):
    loss, u, data, weights = _case(name)
    X, y = data
    # Three data sets: the originals with rows rolled (same shapes, different values).
    Xs = jnp.stack([jnp.roll(X, k, axis=0) for k in range(3)])
    ys = jnp.stack([jnp.roll(y, 2 * k) for k in range(3)])

    def batched(make):
        return jax.jit(jax.vmap(lambda X, y: jax.value_and_grad(make((X, y)))(u)))(Xs, ys)

    got = batched(lambda d: fast_objective(loss, d, None))
    want = batched(lambda d: (lambda v: loss(v, d, None)))
    assert _tree_rel(got, want) <= RTOL


@pytest.mark.parametrize("name", ["logistic", "gauss_positive"])
def test_hessian_of_objective_equals_plain(name):
    # forward-over-reverse differentiates the rewritten gradient program itself
    loss, u, data, weights = _case(name)
    f = fast_objective(loss, data, weights)
    flat, unravel = jax.flatten_util.ravel_pytree(u)
    got = jax.jit(jax.hessian(lambda x: f(unravel(x))))(flat)
    want = jax.jit(jax.hessian(lambda x: loss(unravel(x), data, weights)))(flat)
    assert _rel(got, want) <= 1e-11  # second derivatives: one more rounding layer


def test_derivative_with_respect_to_data_falls_back_to_plain():
    loss, u, (X, y), _ = _case("logistic")
    got = jax.jit(jax.grad(lambda X: fast_objective(loss, (X, y), None)(u)))(X)
    want = jax.jit(jax.grad(lambda X: loss(u, (X, y), None)))(X)
    assert _rel(got, want) <= RTOL


def test_closed_over_parameter_is_differentiable():
    # a profile likelihood closes over a fixed parameter; d/d(fixed) must still be right
    X, y01, _, _ = _data()

    def outer(s):
        loss = lambda v, data, w: mean_nll(lambda p, x, y: _logistic(p * s, x, y), v, data, w)
        return fast_objective(loss, (X, y01), None)(jnp.full(X.shape[1], 0.1))

    plain = lambda s: mean_nll(lambda p, x, y: _logistic(p * s, x, y), jnp.full(4, 0.1), (X, y01))
    assert _rel(jax.grad(outer)(1.3), jax.grad(plain)(1.3)) <= RTOL


def test_float32_agrees_with_plain():
    loss, u, (X, y), _ = _case("logistic")
    X32, y32, u32 = X.astype(jnp.float32), y.astype(jnp.float32), u.astype(jnp.float32)
    got = jax.jit(jax.value_and_grad(fast_objective(loss, (X32, y32), None)))(u32)
    want = jax.jit(jax.value_and_grad(lambda v: loss(v, (X32, y32), None)))(u32)
    assert got[1].dtype == jnp.float32
    # float32 sums of ~2000 terms in different order: ~sqrt(n) * eps32 relative
    assert _tree_rel(got, want) <= 1e-5


def test_nothing_to_rewrite_returns_plain_loss():
    x = jnp.asarray(np.random.default_rng(0).standard_normal(N))
    u, transforms = split_init({"mu": 0.0, "sigma": Positive(1.0)}, jnp.float64)

    def loss(v, data, weights):
        p = constrain(v, transforms)
        return mean_nll(lambda q, x: st.norm.logpdf(x, q["mu"], q["sigma"]), p, data, weights)

    assert rewrite_count(loss, u, (x,), None) == 0
    f = fast_objective(loss, (x,), None)
    assert _tree_rel(jax.grad(f)(u), jax.grad(lambda v: loss(v, (x,), None))(u)) <= RTOL


def test_small_data_and_switch_off_use_plain_loss(monkeypatch):
    loss, u, (X, y), _ = _case("logistic")
    jaxpr = jax.make_jaxpr(jax.grad(fast_objective(loss, (X, y), None)))(u)
    assert "optimization_barrier" in str(jaxpr)  # the marker of the fast path
    small = (X[:100], y[:100])
    jaxpr = jax.make_jaxpr(jax.grad(fast_objective(loss, small, None)))(u)
    assert "optimization_barrier" not in str(jaxpr)
    monkeypatch.setenv("MLEFIT_FASTGRAD", "0")
    assert not _fastgrad.enabled()
    jaxpr = jax.make_jaxpr(jax.grad(fast_objective(loss, (X, y), None)))(u)
    assert "optimization_barrier" not in str(jaxpr)


def test_wide_products_stay_matrix_products():
    # 20 inputs, 32 hidden units: the W1 gradient X^T H (N x 20 by N x 32) is a real
    # matrix product (GEMM), both sides wider than MAX_THIN
    rng = np.random.default_rng(2)
    X = jnp.asarray(rng.standard_normal((N, 20)))
    y = jnp.asarray(rng.standard_normal(N))
    p = {"W1": jnp.asarray(rng.standard_normal((20, 32))) * 0.1, "w2": jnp.zeros(32)}

    def loss(v, data, weights):
        logp = lambda q, x, y: st.norm.logpdf(y, jnp.tanh(x @ q["W1"]) @ q["w2"], 1.0)
        return mean_nll(logp, v, data, weights)

    # only the thin product (the w2 gradient) is rewritten, not the W1 one
    assert rewrite_count(loss, p, (X, y), None) == 1
    f = fast_objective(loss, (X, y), None)
    assert _tree_rel(jax.grad(f)(p), jax.grad(lambda v: loss(v, (X, y), None))(p)) <= RTOL


@pytest.mark.parametrize(
    "lhs_shape, rhs_shape, dims, thin",
    [
        ((N,), (N, 3), (((0,), (0,)), ((), ())), 0),  # r @ X
        ((N, 3), (N,), (((0,), (0,)), ((), ())), 1),  # X.T @ r
        ((N, 1), (N, 3), (((0,), (0,)), ((), ())), 0),  # a column cotangent
        ((3, N), (1, N), (((1,), (1,)), ((), ())), 1),  # observations on the last axis
        ((2, N, 3), (2, N), (((1,), (1,)), ((0,), (0,))), 1),  # a batch axis
        ((2, N), (N, 3, 2), (((1,), (0,)), ((0,), (2,))), 0),  # batch axis, other order
    ],
)
def test_broadcast_reduce_equals_dot_general(lhs_shape, rhs_shape, dims, thin):
    rng = np.random.default_rng(3)
    lhs = jnp.asarray(rng.standard_normal(lhs_shape))
    rhs = jnp.asarray(rng.standard_normal(rhs_shape))
    want = jax.lax.dot_general(lhs, rhs, dims)
    got = _fastgrad._broadcast_reduce(lhs, rhs, dims, thin, jnp.float64)
    assert got.shape == want.shape
    assert _rel(got, want) <= 1e-12  # sums of N products in another order
