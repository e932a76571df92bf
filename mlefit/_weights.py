"""What observation weights mean: frequency weights and variance (analytic) weights.

Both kinds give the same estimate: the weighted mean NLL
``nll(w) = -(sum_i v_i log p(obs_i; w)) / (sum_i v_i)`` does not change when every
weight is multiplied by a constant. They differ in how much information the data carry,
so in ``n_obs``, the covariance, AIC/BIC and likelihood-ratio tests:

``"frequency"`` (statsmodels' ``freq_weights``, Stata's ``fweight``)
    ``v_i`` counts how many times observation ``i`` occurred: the fit is the fit of the
    data with row ``i`` repeated ``v_i`` times. ``n_obs = sum_i v_i``;
    ``loglik = sum_i v_i log p_i``; the observed covariance is the inverse Hessian of
    ``-sum_i v_i log p_i``; scores enter the OPG and robust covariances once per
    replicate (``sum_i v_i s_i s_i^T``). Weights that are not whole numbers are allowed
    but warned about when the kind was not given explicitly (weights normalised to sum
    to 1 would otherwise give ``n_obs = 1`` and standard errors ``sqrt(n)`` times too
    large).

``"variance"`` (analytic or precision weights; statsmodels' ``var_weights``, Stata's
``aweight``)
    ``v_i`` is proportional to the precision of observation ``i`` (for an exponential
    dispersion family, ``Var(y_i) = phi V(mu_i) / v_i``); only ratios matter. The weights
    are rescaled to ``v'_i = m v_i / sum_j v_j`` with ``m`` the number of observations
    with ``v_i > 0``, so ``sum_i v'_i = m``. ``n_obs = m``;
    ``loglik = sum_i v'_i log p_i = -m * nll``; the observed covariance is the inverse
    Hessian of ``-sum_i v'_i log p_i``; each observation's score enters the OPG and
    robust covariances as ``v'_i s_i`` (``sum_i v'_i^2 s_i s_i^T``). For a Gaussian
    linear model this is the heteroskedastic model ``y_i ~ N(x_i b, sigma^2 / v'_i)``:
    the estimate is weighted least squares and ``loglik`` is that model's
    log-likelihood less the constant ``(1/2) sum_i log v'_i`` (a general log-density
    cannot know its Jacobian; it cancels in LR tests and AIC/BIC differences).

statsmodels takes ``var_weights`` as absolute for families with a fixed dispersion
(Poisson, binomial: its standard errors scale as ``1 / sqrt(c)`` when the weights are
multiplied by ``c``); mlefit's agree with it when the weights sum to ``m``. Sampling
(probability, inverse-inclusion) weights are variance weights with a robust covariance:
``weights_kind="variance"`` and ``res.covariance("HC0")`` or ``("cluster", groups=...)``;
their ``loglik``, AIC/BIC and LR tests are not likelihood quantities.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np

from ._checks import host_view

__all__ = [
    "WEIGHTS_KINDS",
    "check_weights_kind",
    "effective_weights",
    "resolve_weights_kind",
    "score_power",
    "weighted_n_obs",
]

WEIGHTS_KINDS = ("frequency", "variance")


def check_weights_kind(weights_kind, weights, stream: bool = False) -> None:
    """Raises ``ValueError`` for an unknown ``weights_kind`` or one that cannot apply.

    Checked before anything compiles; ``weights`` is what the user passed.
    """
    if weights_kind is None:
        return
    if not isinstance(weights_kind, str) or weights_kind not in WEIGHTS_KINDS:
        kinds = ", ".join(map(repr, WEIGHTS_KINDS))
        raise ValueError(f"weights_kind: expected one of {kinds} (or None), got {weights_kind!r}")
    if weights_kind != "frequency" and weights is None and not stream:
        raise ValueError(
            f"weights_kind: {weights_kind!r} describes observation weights, but no weights "
            "were given; pass weights=... (one per observation) or drop weights_kind."
        )
    if stream and weights_kind != "frequency":
        raise ValueError(
            f"weights_kind: a data stream takes frequency weights only, got {weights_kind!r}; "
            "load the data in memory to fit with variance weights."
        )


def resolve_weights_kind(weights_kind, weights) -> str:
    """The kind to use (``"frequency"`` when not given), warning about fractional weights.

    ``weights`` are the checked weights (``check_weights``). When the kind was not given
    and some weight is not a whole number, warns (``UserWarning``) naming ``weights``:
    ``n_obs = sum(weights)`` then need not be a count.
    """
    if weights_kind is not None:
        return weights_kind
    host = None if weights is None else host_view(weights)
    if host is not None:
        frac = host != np.round(host)
        if frac.any():
            i = np.unravel_index(int(np.argmax(frac)), host.shape)  # (i,) or (b, i)
            where = ", ".join(map(str, i))
            warnings.warn(
                f"weights: read as frequency weights (counts of repeated observations), but "
                f"weights[{where}] = {float(host[i])!r} is not a whole number; n_obs = "
                f"sum(weights) = {float(host.sum()):g} then sets the standard errors, AIC and "
                "BIC. For weights that give relative precision (e.g. normalised to sum to 1) "
                "pass weights_kind='variance'; pass weights_kind='frequency' to keep this "
                "meaning without this warning.",
                UserWarning,
                stacklevel=3,
            )
    return "frequency"


def effective_weights(weights, weights_kind: str):
    """The weights inference uses: ``v`` (frequency) or ``v' = m v / sum v`` (variance).

    ``m = #{i : v_i > 0}``. The mean NLL is the same under both; the total NLL, whose
    Hessian is the observed information, is ``-sum_i v'_i log p_i``.

    Example:
        >>> import jax.numpy as jnp
        >>> effective_weights(jnp.array([0.1, 0.3, 0.0]), "variance").tolist()
        [0.5, 1.5, 0.0]
    """
    if weights is None or weights_kind == "frequency":
        return weights
    # per data set (the last axis): fit_many's weights are (B, n)
    m = jnp.sum(weights > 0, axis=-1, keepdims=True).astype(weights.dtype)
    return weights * (m / jnp.sum(weights, axis=-1, keepdims=True))


def weighted_n_obs(n: int, weights, dtype, weights_kind: str = "frequency") -> jax.Array:
    """``n_obs``: ``n`` without weights, ``sum_i v_i`` (frequency), ``#{v_i > 0}`` (variance).

    Computed on the host where the weights are.

    Example:
        >>> import numpy as np
        >>> float(weighted_n_obs(3, np.array([0.2, 0.8, 0.0]), np.float64, "variance"))
        2.0
    """
    if weights is None:
        return jax.device_put(np.asarray(n, dtype))
    host = host_view(weights)
    if weights_kind == "variance":
        if host is None:
            return jnp.sum(weights > 0).astype(dtype)
        return jax.device_put(np.asarray(np.count_nonzero(host > 0), dtype))
    return jnp.sum(weights) if host is None else jax.device_put(host.sum(dtype=dtype))


def score_power(weights_kind: str) -> int:
    """How a weight multiplies ``s_i s_i^T`` in the OPG and robust covariances: ``v^power``.

    Frequency: ``v_i`` replicates each contribute ``s_i s_i^T`` (power 1). Variance: one
    observation whose score is ``v'_i s_i`` (power 2).
    """
    return 2 if weights_kind == "variance" else 1
