"""The seed's identities: NLL = cross-entropy = KL + entropy, MSE as Gaussian NLL, and more.

Each identity is checked where inputs vary (hypothesis) against the other side computed
independently (closed forms, scipy, per-observation gradients).
"""

import functools

import jax
import jax.numpy as jnp
import jax.scipy.stats as jstats
import numpy as np
import scipy.stats as ss
from hypothesis import given, settings
from hypothesis import strategies as hs
from hypothesis.extra import numpy as hnp

import mlefit
from mlefit import closed_form, info
from mlefit import models as M

SETTINGS = settings(max_examples=25, deadline=None)
# Two float64 evaluations of the same sum in a different order: a few ulps.
EXACT = 1e-12

M_OBS = 12
RNG = np.random.default_rng(7)
X3 = RNG.normal(size=(M_OBS, 3))


def probs(k: int, low: float = 0.0):
    return (
        hnp.arrays(np.float64, (k,), elements=hs.floats(low, 1.0))
        .filter(lambda a: a.sum() > 1e-3)
        .map(lambda a: a / a.sum())
    )


binary_labels = hnp.arrays(np.int64, (M_OBS,), elements=hs.integers(0, 1))
finite_logit = hs.floats(-30.0, 30.0)


# -- NLL equals cross-entropy -----------------------------------------------------------


@SETTINGS
@given(finite_logit, binary_labels)
def test_bernoulli_nll_is_binary_cross_entropy(logit, y):
    nll = mlefit.nll(M.Bernoulli(), {"logit": logit}, y)
    bce = info.binary_cross_entropy(jnp.full(M_OBS, logit), y)
    # y logit - softplus(logit) cancels for confident correct labels: absolute rounding
    # of a few ulps of |logit| (as log_softmax does below).
    np.testing.assert_allclose(nll, bce, rtol=EXACT, atol=1e-15 * (1 + abs(logit)))


@SETTINGS
@given(hnp.arrays(np.float64, (4,), elements=finite_logit.map(lambda v: v / 10)), binary_labels)
def test_logistic_nll_is_binary_cross_entropy_of_its_logits(w, y):
    params = {"intercept": w[0], "coef": w[1:]}
    nll = mlefit.nll(M.Logistic(), params, (X3, y))
    eta = w[0] + X3 @ w[1:]
    np.testing.assert_allclose(nll, info.binary_cross_entropy(eta, y), rtol=EXACT,
                               atol=1e-15 * (1 + np.max(np.abs(eta))))


@SETTINGS
@given(
    hnp.arrays(np.float64, (3,), elements=finite_logit),
    hnp.arrays(np.int64, (M_OBS,), elements=hs.integers(0, 3)),
)
def test_categorical_nll_is_categorical_cross_entropy(logits, labels):
    params = {"logits": logits}
    nll = mlefit.nll(M.Categorical(4), params, labels)
    full = jnp.broadcast_to(M.Categorical.full_logits(params), (M_OBS, 4))
    # log_softmax = z - logsumexp(z) cancels: absolute rounding of a few ulps of max |z|.
    atol = 1e-14 * (1 + np.max(np.abs(logits)))
    cce_int = info.categorical_cross_entropy(full, labels)
    cce_onehot = info.categorical_cross_entropy(full, np.eye(4)[labels])
    np.testing.assert_allclose(nll, cce_int, rtol=EXACT, atol=atol)
    np.testing.assert_allclose(nll, cce_onehot, rtol=EXACT, atol=atol)


@SETTINGS
@given(
    hnp.arrays(np.float64, (4, 2), elements=hs.floats(-3.0, 3.0)),
    hnp.arrays(np.int64, (M_OBS,), elements=hs.integers(0, 2)),
)
def test_softmax_nll_is_categorical_cross_entropy_of_its_logits(w, labels):
    params = {"intercept": w[0], "coef": w[1:]}
    nll = mlefit.nll(M.Softmax(3), params, (X3, labels))
    logits = np.column_stack([np.zeros(M_OBS), w[0] + X3 @ w[1:]])
    atol = 1e-14 * (1 + np.max(np.abs(logits)))  # as for the categorical model
    cce = info.categorical_cross_entropy(logits, labels)
    np.testing.assert_allclose(nll, cce, rtol=EXACT, atol=atol)


# -- cross-entropy, KL and entropy ----------------------------------------------------------


@SETTINGS
@given(probs(5), probs(5, low=1e-6))
def test_cross_entropy_is_kl_plus_entropy(p, q):
    ce, kl, h = info.cross_entropy(p, q), info.kl_divergence(p, q), info.entropy(p)
    np.testing.assert_allclose(ce, kl + h, rtol=EXACT, atol=1e-14)
    for base in (2, 10):
        np.testing.assert_allclose(
            info.cross_entropy(p, q, base=base),
            info.kl_divergence(p, q, base=base) + info.entropy(p, base=base),
            rtol=EXACT,
            atol=1e-14,
        )


@SETTINGS
@given(
    hnp.arrays(np.float64, (2, 4), elements=hs.floats(-20, 20)),
    hnp.arrays(np.float64, (2, 4), elements=hs.floats(-20, 20)),
)
def test_cross_entropy_is_kl_plus_entropy_for_logits(a, b):
    ce = info.cross_entropy(a, b, logits=True)
    kl_h = info.kl_divergence(a, b, logits=True) + info.entropy(a, logits=True)
    np.testing.assert_allclose(ce, kl_h, rtol=1e-10, atol=1e-12)


@SETTINGS
@given(probs(4), probs(4))
def test_kl_is_nonnegative_and_zero_iff_equal(p, q):
    assert float(info.kl_divergence(p, p)) == 0.0
    kl = float(info.kl_divergence(p, q))
    # Pinsker: KL(p||q) >= ||p - q||_1^2 / 2, so KL > 0 whenever p != q.
    l1 = float(np.abs(p - q).sum())
    assert kl >= 0.5 * l1**2 * (1 - 1e-9) - 1e-15
    if l1 > 1e-6:
        assert kl > 0


# -- MLE minimises the KL to the empirical distribution -----------------------------------

K = 4
N_LABELS = 40


@SETTINGS
@given(hnp.arrays(np.int64, (N_LABELS - K,), elements=hs.integers(0, K - 1)))
def test_categorical_mle_is_class_frequencies_and_min_nll_is_entropy(rest):
    labels = np.concatenate([np.arange(K), rest])  # every class occurs: the MLE is interior
    res = mlefit.fit(M.Categorical(K), labels)
    freq = np.asarray(closed_form.categorical(labels, K))
    assert res.converged
    # Gradient max-norm <= 1e-9 in the logits; the Hessian's smallest eigenvalue is
    # >= min p_k / K, so the probabilities are within ~1e-8 of the frequencies.
    np.testing.assert_allclose(M.Categorical.probs(res.params), freq, rtol=1e-7)
    # The NLL is quadratic at its minimum: its error is the square of that, far below 1e-12.
    np.testing.assert_allclose(res.nll, ss.entropy(freq), rtol=1e-12)
    np.testing.assert_allclose(res.nll, info.entropy(freq), rtol=1e-12)


@SETTINGS
@given(
    hnp.arrays(np.float64, (K - 1,), elements=hs.floats(-8, 8)),
    hnp.arrays(np.int64, (N_LABELS,), elements=hs.integers(0, K - 1)),
)
def test_nll_is_entropy_plus_kl_from_the_empirical_distribution(logits, labels):
    params = {"logits": logits}
    emp = np.bincount(labels, minlength=K) / N_LABELS
    q = M.Categorical.probs(params)
    nll = mlefit.nll(M.Categorical(K), params, labels)
    np.testing.assert_allclose(nll, info.entropy(emp) + info.kl_divergence(emp, q), rtol=1e-11)


@SETTINGS
@given(
    hnp.arrays(np.int64, (M_OBS,), elements=hs.integers(0, 1)).filter(lambda y: 0 < y.sum() < M_OBS)
)
def test_bernoulli_min_nll_is_binary_entropy_of_the_mean(y):
    res = mlefit.fit(M.Bernoulli(), y)
    np.testing.assert_allclose(M.Bernoulli.prob(res.params), y.mean(), rtol=1e-8)
    np.testing.assert_allclose(res.nll, info.binary_entropy(y.mean()), rtol=1e-12)


# -- MSE as Gaussian NLL ---------------------------------------------------------------------

N_REG = 30
X_REG = np.column_stack([np.ones(N_REG), RNG.normal(size=(N_REG, 2))])


@SETTINGS
@given(
    hnp.arrays(np.float64, (9,), elements=hs.floats(-50, 50)),
    hnp.arrays(np.float64, (9,), elements=hs.floats(-50, 50)),
    hs.floats(1e-3, 1e3),
)
def test_gaussian_nll_is_scaled_mse_plus_constant(pred, y, sigma):
    expected = info.mse(pred, y) / (2 * sigma**2) + 0.5 * np.log(2 * np.pi * sigma**2)
    np.testing.assert_allclose(info.gaussian_nll(pred, y, sigma), expected, rtol=1e-12)
    ref = -np.mean(ss.norm.logpdf(y, pred, sigma))
    np.testing.assert_allclose(info.gaussian_nll(pred, y, sigma), ref, rtol=1e-12)


def fixed_sigma_regression(p, x, y):
    return jstats.norm.logpdf(y, x @ p["beta"], 2.5)


@SETTINGS
@given(hnp.arrays(np.float64, (N_REG,), elements=hs.floats(-100, 100)))
def test_fixed_sigma_gaussian_mle_is_least_squares_and_free_sigma_squared_is_mse(y):
    beta_ols, var_ols = (np.asarray(v) for v in closed_form.linear_gaussian(X_REG, y))
    # For fixed sigma the Gaussian NLL is an affine function of the MSE: same argmin.
    fixed = mlefit.fit(fixed_sigma_regression, (X_REG, y), init={"beta": np.zeros(3)})
    # The mean NLL's Hessian is X^T X / (n sigma^2), well conditioned here: the 1e-9
    # gradient tolerance puts beta within ~1e-8 of least squares (absolute, data ~1e2).
    np.testing.assert_allclose(fixed.params["beta"], beta_ols, rtol=1e-8, atol=1e-7)
    # Fitting sigma too: sigma^2 = MSE of the fitted predictions (= RSS / n).
    if var_ols > 1e-6:
        res = mlefit.fit(M.LinearGaussian(intercept=False), (X_REG, y))
        pred = X_REG @ np.asarray(res.params["coef"])
        np.testing.assert_allclose(res.params["scale"] ** 2, info.mse(pred, y), rtol=1e-9)
        np.testing.assert_allclose(res.params["scale"] ** 2, var_ols, rtol=1e-9)


# -- the gradient of the mean NLL is the mean of per-observation gradients --------------------


X_POS = RNG.gamma(2.0, 1.5, size=8)
Y_BIN = (RNG.random(8) < 0.5).astype(np.int64)
X_BIN = RNG.normal(size=(8, 2))
GRAD_CASES = (
    (M.Gamma(), (X_POS,)),
    (M.Logistic(), (X_BIN, Y_BIN)),
    (M.Mixture([M.Normal(), M.Exponential()]), (X_POS,)),
)


@functools.cache
def compiled_grads(model):
    """(gradient of the mean NLL, gradient of one observation's log-density), jitted once."""
    mean_grad = jax.jit(jax.grad(lambda p, data: mlefit.nll(model, p, data)))
    return mean_grad, jax.jit(jax.grad(model.log_prob))


@SETTINGS
@given(hs.floats(0.2, 20.0), hs.floats(0.05, 10.0), hs.floats(-3, 3), hs.floats(-3, 3))
def test_gradient_of_mean_nll_is_mean_of_per_observation_gradients(shape, scale, a, b):
    params = (
        {"shape": shape, "scale": scale},
        {"intercept": a, "coef": jnp.array([b, shape])},
        {"logits": jnp.array([a]), "components": ({"loc": b, "scale": scale}, {"rate": shape})},
    )
    for (model, data), p in zip(GRAD_CASES, params, strict=True):
        mean_grad, obs_grad = compiled_grads(model)
        grad = mean_grad(p, data)
        per_obs = [obs_grad(p, *(a[i] for a in data)) for i in range(data[0].shape[0])]
        ref = jax.tree.map(lambda *g: -sum(g) / len(g), *per_obs)
        for g, r in zip(jax.tree.leaves(grad), jax.tree.leaves(ref), strict=True):
            np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-13)


# -- binary entropy -------------------------------------------------------------------------


@SETTINGS
@given(hs.floats(0.0, 1.0))
def test_binary_entropy_is_maximal_log2_at_one_half(p):
    h = float(info.binary_entropy(p))
    assert h <= np.log(2.0) * (1 + 1e-15)
    if 1.0 - (1.0 - p) == p:  # symmetry where 1 - p is exact in floating point
        np.testing.assert_allclose(h, float(info.binary_entropy(1.0 - p)), rtol=1e-12, atol=1e-300)
    if abs(p - 0.5) > 1e-3:
        # Strictly below the maximum away from 1/2 (H is strictly concave).
        assert h < np.log(2.0)


def test_binary_entropy_at_one_half():
    np.testing.assert_allclose(info.binary_entropy(0.5), np.log(2.0), rtol=1e-15)
    assert float(info.binary_entropy(0.5, base=2)) == 1.0
    grad = jax.grad(lambda p: info.binary_entropy(p))(0.5)
    assert abs(float(grad)) < 1e-15
