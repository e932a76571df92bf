"""Information measures and losses against scipy, the seed's formulas and their edge cases."""

from decimal import Decimal, localcontext

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special as ssp
import scipy.stats as ss
from hypothesis import given, settings
from hypothesis import strategies as hs
from hypothesis.extra import numpy as hnp

from mlefit import info

# Sums of a handful of float64 terms: scipy and jax agree to a few ulps.
RTOL = 1e-12
SETTINGS = settings(max_examples=25, deadline=None)


def probs(k: int, with_zeros: bool = True):
    """Probability vectors of length k (some entries exactly 0 when with_zeros)."""
    low = 0.0 if with_zeros else 1e-3
    return (
        hnp.arrays(np.float64, (k,), elements=hs.floats(low, 1.0))
        .filter(lambda a: a.sum() > 1e-3)
        .map(lambda a: a / a.sum())
    )


def logits_arrays(shape, bound=30.0):
    return hnp.arrays(np.float64, shape, elements=hs.floats(-bound, bound))


# -- entropy, cross-entropy, KL -------------------------------------------------------


@SETTINGS
@given(probs(5))
def test_entropy_matches_scipy_nats_and_bits(p):
    np.testing.assert_allclose(info.entropy(p), ss.entropy(p), rtol=RTOL, atol=1e-15)
    np.testing.assert_allclose(
        info.entropy(p, base=2), ss.entropy(p, base=2), rtol=RTOL, atol=1e-15
    )


@SETTINGS
@given(logits_arrays((3, 4)))
def test_entropy_of_logits_is_entropy_of_softmax(z):
    np.testing.assert_allclose(
        info.entropy(z, logits=True),
        ss.entropy(ssp.softmax(z, -1), axis=-1),
        rtol=1e-10,
        atol=1e-13,
    )


def test_zero_log_zero_is_zero():
    assert float(info.entropy(jnp.array([1.0, 0.0, 0.0]))) == 0.0
    assert float(info.binary_entropy(0.0)) == 0.0
    assert float(info.binary_entropy(1.0)) == 0.0
    assert float(info.cross_entropy(jnp.array([1.0, 0.0]), jnp.array([1.0, 0.0]))) == 0.0
    assert float(info.kl_divergence(jnp.array([1.0, 0.0]), jnp.array([0.5, 0.5]))) == pytest.approx(
        np.log(2.0), rel=RTOL
    )


def test_minus_infinite_logits_are_zero_probabilities():
    z = jnp.array([0.0, -jnp.inf, 0.0])
    assert float(info.entropy(z, logits=True)) == pytest.approx(np.log(2.0), rel=1e-15)
    assert float(info.kl_divergence(z, z, logits=True)) == 0.0
    assert float(info.cross_entropy(z, jnp.array([0.0, 0.0, -jnp.inf]), logits=True)) == np.inf
    assert float(info.binary_entropy(jnp.inf, logits=True)) == 0.0
    g = jax.grad(lambda z: info.entropy(z, logits=True))(z)
    assert not np.any(np.isnan(g))


def test_support_mismatch_is_infinite():
    p, q = jnp.array([0.5, 0.5]), jnp.array([1.0, 0.0])
    assert float(info.cross_entropy(p, q)) == np.inf
    assert float(info.kl_divergence(p, q)) == np.inf


@SETTINGS
@given(probs(4), probs(4, with_zeros=False))
def test_cross_entropy_and_kl_match_scipy(p, q):
    ce = -np.sum(ssp.xlogy(p, q))
    np.testing.assert_allclose(info.cross_entropy(p, q), ce, rtol=RTOL, atol=1e-15)
    np.testing.assert_allclose(info.kl_divergence(p, q), ss.entropy(p, q), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(
        info.kl_divergence(p, q, base=2), ss.entropy(p, q, base=2), rtol=1e-10, atol=1e-14
    )


@SETTINGS
@given(logits_arrays((2, 3)), logits_arrays((2, 3)))
def test_logits_forms_equal_probability_forms(a, b):
    p, q = ssp.softmax(a, -1), ssp.softmax(b, -1)
    np.testing.assert_allclose(
        info.cross_entropy(a, b, logits=True),
        -np.sum(p * ssp.log_softmax(b, -1), -1),
        rtol=1e-10,
        atol=1e-12,
    )
    np.testing.assert_allclose(
        info.kl_divergence(a, b, logits=True), ss.entropy(p, q, axis=-1), rtol=1e-8, atol=1e-12
    )


def test_axis_argument():
    p = np.array([[0.2, 0.5], [0.8, 0.5]])
    np.testing.assert_allclose(info.entropy(p, axis=0), ss.entropy(p, axis=0), rtol=RTOL)


@SETTINGS
@given(hs.floats(0.0, 1.0))
def test_binary_entropy_matches_scipy(p):
    np.testing.assert_allclose(
        info.binary_entropy(p), ss.entropy([p, 1 - p]), rtol=1e-12, atol=1e-15
    )
    if 0 < p < 1:
        logit = np.log(p) - np.log1p(-p)
        np.testing.assert_allclose(
            info.binary_entropy(logit, logits=True), ss.entropy([p, 1 - p]), rtol=1e-9, atol=1e-15
        )


def test_measures_work_under_jit():
    p = jnp.array([0.25, 0.75])
    np.testing.assert_allclose(jax.jit(info.entropy)(p), ss.entropy([0.25, 0.75]), rtol=RTOL)


# -- losses ------------------------------------------------------------------------------


# The seed's formulas evaluated in 50-digit decimal arithmetic: in float64, log(sigmoid(z))
# itself loses digits where sigmoid(z) rounds near 1, so the reference must not.
def _dec(x) -> Decimal:
    return Decimal(float(x))


def seed_bce(logits, y) -> float:
    """-(1/m) sum [y log p + (1 - y) log(1 - p)], p = sigmoid(logits)."""
    with localcontext() as ctx:
        ctx.prec = 50
        total = Decimal(0)
        for z, t in zip(np.ravel(logits), np.ravel(y), strict=True):
            p = 1 / (1 + (-_dec(z)).exp())
            total += _dec(t) * p.ln() + (1 - _dec(t)) * (1 - p).ln()
        return float(-total / len(np.ravel(y)))


def seed_cce(logits, onehot) -> float:
    """-(1/m) sum_i sum_k y_ik log softmax(logits_i)_k."""
    with localcontext() as ctx:
        ctx.prec = 50
        total = Decimal(0)
        for z, t in zip(logits, onehot, strict=True):
            e = [_dec(v).exp() for v in z]
            total += sum(_dec(tk) * (ek / sum(e)).ln() for tk, ek in zip(t, e, strict=True))
        return float(-total / len(logits))


# Our value against the exactly rounded reference: a few ulps.
LOSS_RTOL = 1e-13


@SETTINGS
@given(logits_arrays((6,), bound=30.0), hnp.arrays(np.int64, (6,), elements=hs.integers(0, 1)))
def test_bce_equals_seed_formula(z, y):
    ref = seed_bce(z, y)
    np.testing.assert_allclose(info.binary_cross_entropy(z, y), ref, rtol=LOSS_RTOL, atol=1e-300)
    np.testing.assert_allclose(
        info.binary_cross_entropy(z, y, reduction="sum"), 6 * ref, rtol=LOSS_RTOL, atol=1e-300
    )
    assert info.binary_cross_entropy(z, y, reduction="none").shape == (6,)


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_bce_is_stable_at_huge_logits(dtype):
    z = jnp.array([1e4, 1e4, -1e4, -1e4], dtype)
    y = jnp.array([1.0, 0.0, 1.0, 0.0], dtype)
    per_obs = info.binary_cross_entropy(z, y, reduction="none")
    # Exact: -log sigmoid(1e4) = log1p(exp(-1e4)) rounds to 0; -log(1 - sigmoid(1e4)) = 1e4.
    np.testing.assert_array_equal(per_obs, np.array([0.0, 1e4, 1e4, 0.0]))
    g = jax.grad(lambda z: info.binary_cross_entropy(z, y))(z)
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, (np.array([1, 1, 0, 0]) - np.asarray(y)) / 4, atol=1e-7)


@SETTINGS
@given(logits_arrays((5, 3), bound=30.0), hnp.arrays(np.int64, (5,), elements=hs.integers(0, 2)))
def test_cce_equals_seed_formula_for_int_and_onehot_labels(z, labels):
    onehot = np.eye(3)[labels]
    ref = seed_cce(z, onehot)
    np.testing.assert_allclose(
        info.categorical_cross_entropy(z, labels), ref, rtol=LOSS_RTOL, atol=1e-300
    )
    np.testing.assert_allclose(
        info.categorical_cross_entropy(z, onehot), ref, rtol=LOSS_RTOL, atol=1e-300
    )


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_cce_is_stable_at_huge_logits(dtype):
    z = jnp.array([[1e4, -1e4, 0.0], [1e4, -1e4, 0.0]], dtype)
    labels = jnp.array([0, 1])
    per_obs = info.categorical_cross_entropy(z, labels, reduction="none")
    # log_softmax = z - logsumexp(z) = z - 1e4 exactly (the other terms vanish).
    np.testing.assert_array_equal(per_obs, np.array([0.0, 2e4]))
    g = jax.grad(lambda z: info.categorical_cross_entropy(z, labels))(z)
    assert np.all(np.isfinite(g))


@SETTINGS
@given(
    hnp.arrays(np.float64, (7,), elements=hs.floats(-10, 10)),
    hnp.arrays(np.float64, (7,), elements=hs.floats(-10, 10)),
    hs.floats(0.05, 20.0),
)
def test_gaussian_nll_and_mse(pred, y, scale):
    ref = -np.mean(ss.norm.logpdf(y, pred, scale))
    np.testing.assert_allclose(info.gaussian_nll(pred, y, scale), ref, rtol=1e-12)
    np.testing.assert_allclose(info.mse(pred, y), np.mean((y - pred) ** 2), rtol=1e-12, atol=1e-300)


# -- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: info.entropy([0.5, 0.6]), r"p: probabilities must sum to 1 .* 1\.1"),
        (lambda: info.entropy([[0.5, 0.5], [0.2, 0.2]]), r"sum to 0\.4.* at index \[1\]"),
        (lambda: info.kl_divergence([0.5, 0.5], [1.5, -0.5]), r"q: .* >= 0, but q\[1\] = -0\.5"),
        (lambda: info.binary_entropy(1.5), r"p: a probability must lie in \[0, 1\]"),
        (lambda: info.entropy([0.5, 0.5], base=1), r"base: must be a positive number"),
        (
            lambda: info.binary_cross_entropy(jnp.zeros(3), jnp.array([0, 1, 2])),
            r"y: labels must lie in \[0, 1\], but y\[2\] = 2",
        ),
        (lambda: info.binary_cross_entropy(jnp.zeros(3), jnp.zeros(2)), r"y: shape \(2,\)"),
        (
            lambda: info.categorical_cross_entropy(jnp.zeros((2, 3)), jnp.array([0, 3])),
            r"labels: class indices must be in 0\.\.2, but labels\[1\] = 3",
        ),
        (
            lambda: info.categorical_cross_entropy(jnp.zeros((2, 3)), jnp.zeros((2, 2))),
            r"labels: shape \(2, 2\) fits neither",
        ),
        (lambda: info.mse(jnp.zeros(2), jnp.zeros(2), reduction="avg"), r"reduction: expected"),
        (lambda: info.gaussian_nll(jnp.zeros(2), jnp.zeros(2), 0.0), r"scale: must be > 0"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_float_labels_for_integer_shape_are_a_type_error():
    with pytest.raises(TypeError, match="labels: integer class indices expected"):
        info.categorical_cross_entropy(jnp.zeros((2, 3)), jnp.array([0.0, 1.0]))
