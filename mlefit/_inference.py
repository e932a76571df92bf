"""Inference on a fit: exact Hessian, covariances, intervals, model comparison, diagnostics.

Conventions (stated once): the objective is the mean NLL; the covariance is the inverse
Hessian of the TOTAL NLL ``N(w) = -sum_i v_i log p(obs_i; w)`` (observed Fisher
information) at the estimate. The Hessian is taken in the unconstrained parametrisation
``u`` the optimiser used; covariances of constrained parameters (``Positive``,
``Interval``) follow by the delta method, ``cov_c = J cov_u J`` with ``J = diag(dc/du)``.

Pure functions (jit-able, vmappable over data sets; no Python control flow on values, no
host callbacks). All take the raw pieces of a fit and flatten parameters in
``jax.flatten_util.ravel_pytree`` order (dict keys sorted); what the user sees
(``res.param_names``, ``res.cov``, ``confint``, ``summary``, ``to_frame``) is permuted to
the order written in ``init`` (``param_order_of``, mlefit/_names.py); ``p`` is the
number of free scalar parameters:

- ``hessian_total(logp, transforms, u, data, weights=None, *, chunk_size=None) -> (p, p)``:
  Hessian of the total NLL with respect to flattened ``u``.
- ``opg_total(logp, transforms, u, data, weights=None, *, chunk_size=None) -> (p, p)``:
  ``B_u = sum_i v_i s_i s_i^T``, ``s_i`` the score of observation ``i`` in ``u``.
- ``analyse(logp, transforms, u, data, weights=None, *, kind="observed", chunk_size=None,
  options=None) -> Inference``: covariance (constrained space) of the requested kind
  (robust kinds: :mod:`mlefit._robust`), standard errors, Hessian, positive-definiteness
  flag, per-parameter ``identified``/``at_bound`` masks and the Hessian's condition number.
- ``profile_nll(logp, transforms, u, data, weights, index, u_value, *, optimizer, tol,
  max_steps) -> (total_nll, status)``: the total NLL minimised over all flat parameters but
  ``index``, which is held at the unconstrained value ``u_value`` (``index`` may be traced).

Large data: the Hessian is a sum over observation chunks (``lax.scan``; each chunk's
Hessian by ``jax.hessian`` of the chunk's total NLL), never an ``n x p x p`` array. The
last chunk re-reads the final ``chunk_size`` observations and gives the ones already
counted weight zero, so every chunk has one shape and nothing is copied or padded.
Measured on the 2-core CPU (logistic regression, n=1e6, p=33, float64, Hessian + inverse +
delta method, best of 7, machine shared with other jobs): chunks of 2048-8192
observations 0.29-0.31 s, 16384 0.33 s, 32768 0.65 s, one ``jax.hessian`` over all data
0.92 s, per-observation Hessians (``vmap(hessian(logp))``) summed in chunks 2.7 s; NumPy's
closed form ``X^T diag(p(1-p)) X`` 5.4 s. Default chunk: 4096 at p = 33.

Host-side helpers used by :class:`~mlefit.FitResult` (cached per result object):
``inference_of``, ``stderr_of``, ``param_names_of``, ``labelled_cov``, ``confint_of``,
``param_table``, ``profile_of``, ``summary_of``, and the public :func:`lr_test`.
"""

from __future__ import annotations

import hashlib
import html
import math
import statistics
import warnings
import weakref
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ._checks import host_view
from ._constraints import constrain, jacobian_diag
from ._defaults import DEFAULT_MAX_STEPS, default_tol
from ._iterate import iterate
from ._labelled import LabelledArray
from ._likelihood import mean_nll
from ._model import AbstractModel
from ._names import flat_layout, key_name
from ._nesting import restriction_of
from ._robust import (
    LEVERAGE_KINDS,
    ROBUST_KINDS,
    CovOptions,
    canonical_kind,
    cov_options,
    meat_c,
    small_sample_factor,
)
from ._robust import cache_key as _cache_key
from ._solver_optax import OptaxSolver, default_optimizer
from ._status import Status

__all__ = [
    "Inference",
    "LRTest",
    "analyse",
    "analyse_hessian",
    "hessian_total",
    "opg_total",
    "profile_nll",
    "lr_test",
    "stderr_of",
    "COVARIANCE_KINDS",
]

# "sandwich" is HC0 (its name before HC1-HC3 and cluster were added); see _robust.py.
COVARIANCE_KINDS = ("observed", "opg", "sandwich") + ROBUST_KINDS
# Elements (observations x parameters) per Hessian chunk: 2048-8192 observations at
# p = 33 were the fastest chunks on the 2-core CPU, 32768 and up twice as slow.
_CHUNK_ELEMENTS = 2**18
_MIN_CHUNK = 256
# Above this many parameters ``res.status`` does not form the dense Hessian on its own.
MAX_PARAMS_FOR_STATUS = 2000


# ---------------------------------------------------------------------------------------
# Pure, vmappable kernels
# ---------------------------------------------------------------------------------------
class Inference(NamedTuple):
    """Everything inference needs from one fit (arrays; a leading batch axis when vmapped).

    Attributes:
        cov: ``(p, p)`` covariance of the constrained parameters (kind as requested);
            rows/columns of parameters without a standard error are NaN.
        stderr: ``(p,)`` ``sqrt(diag(cov))``.
        hessian: ``(p, p)`` Hessian of the total NLL in the unconstrained parametrisation.
        positive_definite: the Hessian is numerically positive definite on the
            parameters not at a bound.
        identified: ``(p,)`` False for parameters in a null (or negative) direction of
            the Hessian (e.g. two parameters that only enter as their sum).
        at_bound: ``(p,)`` True where a constrained parameter sits at its bound.
        condition_number: ``max|lambda| / min lambda`` of ``hessian`` (``inf`` if not PD).
        edm: estimated distance to the minimum of the total NLL, ``g^T H^-1 g / 2`` in
            the unconstrained parametrisation over the identified parameters (Minuit's
            EDM): the decrease a Newton step predicts. Near 0 at an optimum.
        newton_step: ``(p,)`` that Newton step, ``-H^-1 g``, unconstrained (0 where not
            identified).
        hessian_finite: ``(p,)`` False for parameters whose row of ``hessian`` holds NaN
            or inf (then no standard error is given: status ``HESSIAN_NOT_FINITE``).
    """

    cov: jax.Array
    stderr: jax.Array
    hessian: jax.Array
    positive_definite: jax.Array
    identified: jax.Array
    at_bound: jax.Array
    condition_number: jax.Array
    edm: jax.Array
    newton_step: jax.Array
    hessian_finite: jax.Array


def default_chunk_size(n: int, p: int) -> int:
    """Observations per Hessian chunk: the power of two <= ``2**18 / p`` (at least 256),
    at most ``n`` (4096 for p = 33)."""
    target = max(_MIN_CHUNK, _CHUNK_ELEMENTS // max(p, 1))
    return int(min(n, 1 << (target.bit_length() - 1)))


def _chunked_sum(fn, data: tuple, weights, chunk: int, dtype):
    """``sum_k fn(obs_chunk_k, w_chunk_k)`` over observation chunks of one static size.

    The last chunk re-reads the final ``chunk`` observations; those already counted get
    weight 0 (they are valid observations, so a zero weight removes them exactly).
    """
    n = data[0].shape[0]
    chunk = min(chunk, n)
    n_chunks = -(-n // chunk)

    def piece(i):
        start = jnp.minimum(i * chunk, n - chunk)
        obs = tuple(jax.lax.dynamic_slice_in_dim(a, start, chunk) for a in data)
        w = (start + jnp.arange(chunk) >= i * chunk).astype(dtype)
        if weights is not None:
            w = w * jax.lax.dynamic_slice_in_dim(weights, start, chunk)
        return fn(obs, w)

    if n_chunks == 1:
        return piece(0)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(piece, 0))
    acc, _ = jax.lax.scan(
        lambda acc, i: (jax.tree.map(jnp.add, acc, piece(i)), None), zeros, jnp.arange(n_chunks)
    )
    return acc


def _weighted_total_nll(logp, params, obs, w):
    lp = jax.vmap(logp, in_axes=(None,) + (0,) * len(obs))(params, *obs)
    return -jnp.sum(jnp.where(w > 0, w * lp, 0.0))


def _flat_pieces(transforms, u):
    """Flattened ``u``, constrained ``c``, ``J = dc/du``, ``d2c/du2`` and the unravel of c."""
    u_flat, _ = ravel_pytree(u)
    c = constrain(u, transforms)
    c_flat, unravel = ravel_pytree(c)
    jac, _ = ravel_pytree(jacobian_diag(u, transforms))
    leaves = jax.tree_util.tree_leaves(u)
    d2 = [
        jax.jvp(t.dforward, (x,), (jnp.ones_like(x),))[1]
        for t, x in zip(transforms, leaves, strict=True)
    ]
    d2_flat = jnp.concatenate([jnp.ravel(x) for x in d2])
    return u_flat, c_flat, jac, d2_flat, unravel


def _grad_hessian_c(logp, c_flat, unravel, data, weights, chunk_size):
    """Gradient and Hessian of the total NLL with respect to the flat constrained params."""
    n, p = data[0].shape[0], c_flat.size
    chunk = chunk_size or default_chunk_size(n, p)

    def piece(obs, w):
        grad = jax.grad(lambda cf: _weighted_total_nll(logp, unravel(cf), obs, w))

        def grad_twice(cf):
            g = grad(cf)
            return g, g

        hess, g = jax.jacfwd(grad_twice, has_aux=True)(c_flat)
        return g, hess

    return _chunked_sum(piece, data, weights, chunk, c_flat.dtype)


def _grad_opg_c(logp, c_flat, unravel, data, weights, chunk_size):
    """Gradient of the total NLL and ``sum_i v_i s_i s_i^T`` (constrained c), first
    derivatives only: one ``vmap(grad)`` per chunk, no Hessian."""
    n, p = data[0].shape[0], c_flat.size
    chunk = chunk_size or default_chunk_size(n, p)
    score = jax.grad(lambda cf, *o: logp(unravel(cf), *o))

    def piece(obs, w):
        s = jax.vmap(score, in_axes=(None,) + (0,) * len(obs))(c_flat, *obs)
        sw = jnp.where(w[:, None] > 0, w[:, None] * s, 0.0)
        s = jnp.where(w[:, None] > 0, s, 0.0)
        return -jnp.sum(sw, axis=0), sw.T @ s

    return _chunked_sum(piece, data, weights, chunk, c_flat.dtype)


def _grad_information_c(logp, information, c_flat, unravel, data, weights, chunk_size):
    """Gradient of the total NLL and the expected information ``sum_i v_i I(obs_i)``."""
    n, p = data[0].shape[0], c_flat.size
    chunk = chunk_size or default_chunk_size(n, p)
    grad = jax.grad(lambda cf, obs, w: _weighted_total_nll(logp, unravel(cf), obs, w))

    def piece(obs, w):
        info = jax.vmap(lambda *o: information(unravel(c_flat), *o))(*obs)
        wz = jnp.where(w > 0, w, 0.0)
        return grad(c_flat, obs, w), jnp.einsum("i,ijk->jk", wz, info)

    return _chunked_sum(piece, data, weights, chunk, c_flat.dtype)


def _opg_c(logp, c_flat, unravel, data, weights, chunk_size):
    """``sum_i v_i s_i s_i^T`` with ``s_i`` the score of observation i in the constrained c."""
    n, p = data[0].shape[0], c_flat.size
    chunk = chunk_size or default_chunk_size(n, p)
    score = jax.grad(lambda cf, *o: logp(unravel(cf), *o))

    def piece(obs, w):
        s = jax.vmap(score, in_axes=(None,) + (0,) * len(obs))(c_flat, *obs)
        sw = jnp.where(w[:, None] > 0, w[:, None] * s, 0.0)
        s = jnp.where(w[:, None] > 0, s, 0.0)
        return sw.T @ s

    return _chunked_sum(piece, data, weights, chunk, c_flat.dtype)


def _chain_rule(h_c, g_c, jac, d2):
    """``H_u = J H_c J + diag(g_c * d2c/du2)`` (exact second-order chain rule)."""
    return jac[:, None] * h_c * jac[None, :] + jnp.diag(g_c * d2)


def hessian_total(logp, transforms, u, data: tuple, weights=None, *, chunk_size=None):
    """Returns the Hessian of the total NLL in the unconstrained parametrisation, ``(p, p)``.

    ``H_u = d^2/du^2 [-sum_i v_i log p(obs_i; constrain(u))]``, ``u`` flattened with
    ``ravel_pytree``; computed exactly by autodiff, summed over observation chunks.

    Args:
        logp: ``log p(params, *obs)`` of one observation (constrained params).
        transforms: the per-leaf transforms from ``split_init``.
        u: unconstrained parameters (pytree).
        data: tuple of arrays, observations on the leading axis.
        weights: optional ``(n,)`` observation weights.
        chunk_size: observations per chunk (default: ``default_chunk_size(n, p)``).

    Example:
        >>> import jax.numpy as jnp, jax.scipy.stats as st
        >>> from mlefit._constraints import Identity
        >>> lp = lambda p, x: st.norm.logpdf(x, p, 1.0)
        >>> float(hessian_total(lp, (Identity(),), jnp.array(0.0), (jnp.zeros(5),))[0, 0])
        5.0
    """
    _, c_flat, jac, d2, unravel = _flat_pieces(transforms, u)
    g_c, h_c = _grad_hessian_c(logp, c_flat, unravel, data, weights, chunk_size)
    return _chain_rule(h_c, g_c, jac, d2)


def opg_total(logp, transforms, u, data: tuple, weights=None, *, chunk_size=None):
    """Returns the outer product of scores ``B_u = sum_i v_i s_i s_i^T``, ``(p, p)``.

    ``s_i = d log p(obs_i; constrain(u)) / du`` (``vmap(grad)`` over chunks of
    observations). Arguments as :func:`hessian_total`.

    Example:
        >>> import jax.numpy as jnp, jax.scipy.stats as st
        >>> from mlefit._constraints import Identity
        >>> lp = lambda p, x: st.norm.logpdf(x, p, 1.0)
        >>> float(opg_total(lp, (Identity(),), jnp.array(0.0), (jnp.array([1.0, -2.0]),))[0, 0])
        5.0
    """
    _, c_flat, jac, _, unravel = _flat_pieces(transforms, u)
    b_c = _opg_c(logp, c_flat, unravel, data, weights, chunk_size)
    return jac[:, None] * b_c * jac[None, :]


def _flat_bounds(transforms, u, dtype):
    lows, highs = [], []
    for t, x in zip(transforms, jax.tree_util.tree_leaves(u), strict=True):
        lo, hi = t.bounds() if hasattr(t, "bounds") else (-np.inf, np.inf)
        lows.append(np.full(np.size(x), lo))
        highs.append(np.full(np.size(x), hi))
    return jnp.asarray(np.concatenate(lows), dtype), jnp.asarray(np.concatenate(highs), dtype)


def _at_bound(c_flat, g_c, h_c_diag, low, high):
    """A constrained parameter is at its bound when the unconstrained Newton step crosses it.

    With the total-NLL gradient ``g`` and curvature ``h`` in the constrained coordinate,
    the parameter is at its lower bound when ``g > 0`` and (``h <= 0`` or
    ``g / h >= c - low``), i.e. the likelihood would keep increasing past the bound (and
    symmetrically at the upper bound). At an interior optimum ``g ~ 0`` and the step is
    negligible; on a boundary the step is of the order of the curvature scale.
    """
    lo = jnp.isfinite(low) & (g_c > 0) & ((h_c_diag <= 0) | (g_c >= h_c_diag * (c_flat - low)))
    hi = jnp.isfinite(high) & (g_c < 0) & ((h_c_diag <= 0) | (-g_c >= h_c_diag * (high - c_flat)))
    return lo | hi


def _rcond(dtype) -> float:
    # Eigenvalues of the correlation-scaled Hessian below eps^(3/4) x the largest
    # (float64 1.8e-12, float32 6.5e-6) leave its inverse with < ~3 correct digits.
    return float(jnp.finfo(dtype).eps) ** 0.75


def _regularised_inverse(h, free):
    """Inverse of a symmetric ``h`` on the ``free`` coordinates, NaN where not available.

    ``h`` is scaled to unit diagonal, ``R = D^-1/2 h D^-1/2``, and eigendecomposed. When
    ``R`` is numerically PD this is ``h^-1``. Otherwise parameters loading on a null or
    negative eigenvector are not identified (NaN rows/columns); the others get the
    generalised-inverse variance, which is the variance of an estimable parameter.
    Returns ``(inverse, positive_definite, identified)``.
    """
    p = h.shape[0]
    eye = jnp.eye(p, dtype=h.dtype)
    eps = jnp.finfo(h.dtype).eps
    finite = jnp.all(jnp.isfinite(h))
    hs = jnp.where(finite, 0.5 * (h + h.T), eye)
    d = jnp.diag(hs)
    usable = free & (d > 0)
    scale = 1.0 / jnp.sqrt(jnp.where(usable, d, 1.0))
    r = jnp.where(usable[:, None] & usable[None, :], hs * scale[:, None] * scale[None, :], eye)
    lam, vec = jnp.linalg.eigh(r)
    bad = lam <= _rcond(h.dtype) * jnp.max(lam)
    lam_inv = jnp.where(bad, 0.0, 1.0 / jnp.where(bad, 1.0, lam))
    inv = (vec * lam_inv) @ vec.T * scale[:, None] * scale[None, :]
    loading = jnp.max(jnp.where(bad[None, :], jnp.abs(vec), 0.0), axis=1)
    identified = finite & usable & (loading <= jnp.sqrt(eps))
    positive_definite = finite & ~jnp.any(bad) & jnp.all(usable | ~free)
    inv = jnp.where(identified[:, None] & identified[None, :], inv, jnp.nan)
    return inv, positive_definite, identified


def _condition_number(h):
    finite = jnp.all(jnp.isfinite(h))
    eye = jnp.eye(h.shape[0], dtype=h.dtype)
    lam = jnp.linalg.eigvalsh(jnp.where(finite, 0.5 * (h + h.T), eye))
    pos = lam[0] > 0
    cond = jnp.where(pos, jnp.max(jnp.abs(lam)) / jnp.where(pos, lam[0], 1.0), jnp.inf)
    return jnp.where(finite, cond, jnp.nan)


def _nan_to_zero(x):
    return jnp.where(jnp.isnan(x), 0.0, x)


def analyse(
    logp, transforms, u, data: tuple, weights=None, *, kind="observed", chunk_size=None,
    options: CovOptions | None = None, information=None,
):
    """Returns the :class:`Inference` of a fit: covariance, stderr, Hessian and diagnostics.

    - observed: ``cov_u = H_u^-1`` (inverse Hessian of the total NLL);
    - opg: ``cov_u = B_u^-1``, ``B_u = sum_i v_i s_i s_i^T`` (outer product of scores),
      from first derivatives only: no Hessian is formed (``hessian`` holds ``B_u``, which
      estimates it), so a model JAX differentiates once but not twice gets OPG errors;
    - sandwich, HC0: ``cov_u = H_u^-1 B_u H_u^-1`` (robust, statsmodels' HC0);
    - HC1, HC2, HC3, cluster: the same with the meat and small-sample factor of
      :mod:`mlefit._robust` (``options`` carries the weights' kind, the mean
      parameters and the cluster codes; ``B_u`` takes variance weights squared);

    ``information(params, *obs) -> (p, p)`` (optional, static): the expected (Fisher)
    information of one observation in the constrained parameters. Given, it replaces
    the autodiff Hessian, ``H_u = J (sum_i v_i I_i) J`` (a non-smooth likelihood such as
    the Laplace location, whose observed Hessian is 0 between kinks).

    A Hessian with NaN or inf entries gives no standard errors (NaN) and
    ``hessian_finite`` False on the rows that hold them.

    then ``cov = J cov_u J`` (delta method), ``stderr = sqrt(diag(cov))``. Parameters at
    a bound, or not identified by the Hessian, have NaN rows and columns. Pure and
    vmappable: ``jax.vmap(lambda u, d: analyse(logp, ts, u, d))(us, datas)``.

    Args:
        logp, transforms, u, data, weights, chunk_size: as :func:`hessian_total`.
        kind: ``"observed"`` (default), ``"opg"``, ``"sandwich"``, ``"HC0"``-``"HC3"``
            or ``"cluster"`` (static).
        options: :class:`mlefit._robust.CovOptions` (default: frequency weights, all
            parameters in the mean, no clusters).

    Example:
        >>> import jax.numpy as jnp, jax.scipy.stats as st
        >>> from mlefit._constraints import Identity
        >>> lp = lambda p, x: st.norm.logpdf(x, p, 2.0)
        >>> inf = analyse(lp, (Identity(),), jnp.array(0.0), (jnp.zeros(16),))
        >>> float(inf.stderr[0])  # sigma / sqrt(n)
        0.5
    """
    if kind not in COVARIANCE_KINDS:
        raise ValueError(f"kind: expected one of {COVARIANCE_KINDS}, got {kind!r}")
    options = CovOptions() if options is None else options
    _, c_flat, _, _, unravel = _flat_pieces(transforms, u)
    second_order = True
    if kind == "opg":  # first derivatives only: B estimates the information
        g_c, h_c = _grad_opg_c(logp, c_flat, unravel, data, weights, chunk_size)
        second_order = False
    elif information is not None:  # expected information: E[score] = 0, no 2nd-order term
        g_c, h_c = _grad_information_c(
            logp, information, c_flat, unravel, data, weights, chunk_size
        )
        second_order = False
    else:
        g_c, h_c = _grad_hessian_c(logp, c_flat, unravel, data, weights, chunk_size)
    meat = None
    if kind not in ("observed", "opg"):
        robust = "HC0" if kind == "sandwich" else kind
        n, p = data[0].shape[0], c_flat.size
        chunk = chunk_size or default_chunk_size(n, p * p if robust in LEVERAGE_KINDS else p)

        def meat(cov_c):
            return meat_c(logp, c_flat, unravel, data, weights, robust, options, cov_c, chunk,
                          _chunked_sum)

    return inference_from_sums(transforms, u, g_c, h_c, meat, kind=kind, options=options,
                               n_obs=_weight_total(data, weights, c_flat.dtype),
                               second_order=second_order)


def information_sums(logp, transforms, u, data: tuple, weights=None, *, kind="observed",
                     chunk_size=None):
    """Returns ``(g_c, h_c, b_c)``: the sums over observations that inference needs.

    ``g_c = dN/dc`` and ``h_c = d^2N/dc^2`` of the total NLL ``N`` in the flat constrained
    parameters ``c``, and ``b_c = sum_i v_i s_i s_i^T`` (``None`` for ``kind="observed"``).
    Each is a sum over observations, so sums over pieces of the data (chunks of a stream)
    add up to the sums over all of it (kinds observed, opg, sandwich/HC0). Arguments as
    :func:`analyse`.
    """
    if kind not in ("observed", "opg", "sandwich", "HC0"):
        raise ValueError(
            f"kind: {kind!r} needs the data in memory (leverages or clusters); by a pass "
            "over a stream: 'observed', 'opg' or 'sandwich'"
        )
    _, c_flat, _, _, unravel = _flat_pieces(transforms, u)
    g_c, h_c = _grad_hessian_c(logp, c_flat, unravel, data, weights, chunk_size)
    b_c = None if kind == "observed" else _opg_c(logp, c_flat, unravel, data, weights,
                                                 chunk_size)
    return g_c, h_c, b_c


def inference_from_sums(transforms, u, g_c, h_c, b_c, *, kind="observed", options=None,
                        n_obs=None, second_order: bool = True) -> Inference:
    """Returns the :class:`Inference` from the sums of :func:`information_sums` (see
    :func:`analyse` for the formulas). ``b_c`` may also be a function of the observed
    covariance of the constrained parameters (the HC2/HC3 meat needs it), or ``None``
    for ``kind="opg"`` when ``h_c`` is the outer product of scores itself; ``n_obs`` is
    needed by the HC1 and cluster small-sample factors; ``second_order=False`` where
    ``h_c`` is an information matrix (no ``g_c c''`` term in the chain rule)."""
    options = CovOptions() if options is None else options
    _, c_flat, jac, d2, _ = _flat_pieces(transforms, u)
    h_u = _chain_rule(h_c, g_c, jac, d2) if second_order else jac[:, None] * h_c * jac[None, :]
    low, high = _flat_bounds(transforms, u, c_flat.dtype)
    at_bound = _at_bound(c_flat, g_c, jnp.diag(h_c), low, high)
    h_inv, positive_definite, identified = _regularised_inverse(h_u, ~at_bound)
    cov_u, ok = h_inv, identified
    if kind != "observed" and not (kind == "opg" and b_c is None):
        hz = _nan_to_zero(h_inv)
        robust = "HC0" if kind in ("opg", "sandwich") else kind
        if callable(b_c):
            b_c = b_c(jac[:, None] * hz * jac[None, :])
        b_u = jac[:, None] * b_c * jac[None, :]
        if kind == "opg":  # a stream's opg: the Hessian's sums came with it
            cov_u, _, ok = _regularised_inverse(b_u, ~at_bound)
        else:
            ok = identified
            cov_u = hz @ b_u @ hz
            if robust != "HC0":
                cov_u = small_sample_factor(robust, n_obs, options, c_flat.size) * cov_u
        ok = ok & identified
    if kind != "observed":
        cov_u = jnp.where(ok[:, None] & ok[None, :], cov_u, jnp.nan)
    cov = jac[:, None] * cov_u * jac[None, :]
    stderr = jnp.sqrt(jnp.diag(cov))
    g_u = jac * g_c
    step = -_nan_to_zero(h_inv) @ g_u
    return Inference(
        cov=cov,
        stderr=stderr,
        hessian=h_u,
        positive_definite=positive_definite,
        identified=identified,
        at_bound=at_bound,
        condition_number=_condition_number(h_u),
        edm=-0.5 * g_u @ step,
        newton_step=step,
        hessian_finite=jnp.all(jnp.isfinite(h_u), axis=1),
    )


def analyse_hessian(transforms, u, grad_u, hess_u) -> Inference:
    """The observed-information :class:`Inference` from the gradient and Hessian of the
    total NLL in the unconstrained parametrisation (e.g. Newton's, at its last iterate).

    The constrained gradient and curvature that the at-bound test needs follow from the
    chain rule backwards, ``g_c = g_u / J``, ``h_c,jj = (H_u,jj - g_c,j c''_j) / J_j^2``;
    a parameter whose ``J = dc/du`` underflowed to 0 sits at its bound.
    """
    _, c_flat, jac, d2, _ = _flat_pieces(transforms, u)
    zero = jac == 0
    safe = jnp.where(zero, 1.0, jac)
    g_c = grad_u / safe
    h_c_diag = (jnp.diag(hess_u) - g_c * d2) / safe**2
    low, high = _flat_bounds(transforms, u, c_flat.dtype)
    at_bound = _at_bound(c_flat, g_c, h_c_diag, low, high) | (
        zero & (jnp.isfinite(low) | jnp.isfinite(high))
    )
    h_inv, positive_definite, identified = _regularised_inverse(hess_u, ~at_bound)
    cov = jac[:, None] * h_inv * jac[None, :]
    step = -_nan_to_zero(h_inv) @ grad_u
    return Inference(
        cov=cov,
        stderr=jnp.sqrt(jnp.diag(cov)),
        hessian=hess_u,
        positive_definite=positive_definite,
        identified=identified,
        at_bound=at_bound,
        condition_number=_condition_number(hess_u),
        edm=-0.5 * grad_u @ step,
        newton_step=step,
        hessian_finite=jnp.all(jnp.isfinite(hess_u), axis=1),
    )


def _weight_total(data, weights, dtype):
    if weights is None:
        return jnp.asarray(data[0].shape[0], dtype)
    return jnp.sum(weights).astype(dtype)


def profile_nll(
    logp, transforms, u, data: tuple, weights, index, u_value, *, optimizer, tol, max_steps: int
):
    """Returns ``(total_nll, status)``: the NLL minimised with flat parameter ``index`` fixed.

    ``N_prof(index, u_value) = min over u_-index of N(u with u[index] = u_value)``, the
    total NLL; ``status`` is the re-fit's :class:`Status` code. The re-fit starts at
    ``u`` and runs :func:`mlefit._iterate.iterate` with ``optimizer`` on the mean NLL; the fixed
    coordinate has zero gradient, so ``index`` may be a traced value and the function
    vmaps over ``(index, u_value)`` pairs with one compilation.

    Example:
        >>> import jax.numpy as jnp, jax.scipy.stats as st, optax
        >>> from mlefit._constraints import Identity
        >>> lp = lambda p, x: st.norm.logpdf(x, p["m"], 1.0)
        >>> nll, status = profile_nll(lp, (Identity(),), {"m": jnp.array(0.0)},
        ...     (jnp.zeros(4),), None, 0, 1.0, optimizer=optax.lbfgs(), tol=1e-9, max_steps=50)
        >>> round(float(nll) - 4 * 0.9189385332, 6)  # 4 * (1 - 0)^2 / 2
        2.0
    """
    u_flat, unravel = ravel_pytree(u)

    def f(r):
        full = r.at[index].set(u_value)
        return mean_nll(logp, constrain(unravel(full), transforms), data, weights)

    # No Newton polish: it would put a Hessian in every vmapped re-fit (compile time), and
    # the profile NLL needs the minimum only to within the gradient tolerance.
    _, value, _, _, status, _ = iterate(OptaxSolver(optimizer), f, u_flat, tol, max_steps)
    return _weight_total(data, weights, value.dtype) * value, status


# ---------------------------------------------------------------------------------------
# Compiled entry points and the per-result cache
# ---------------------------------------------------------------------------------------
@eqx.filter_jit
def _analyse_compiled(logp, transforms, u, data, weights, kind, chunk_size, options,
                      information=None):
    return analyse(
        logp, transforms, u, data, weights, kind=kind, chunk_size=chunk_size, options=options,
        information=information,
    )


@eqx.filter_jit
def _analyse_batched(logp, transforms, u, data, weights, kind, chunk_size, options,
                     information=None):
    return jax.vmap(
        lambda u, d, w: analyse(
            logp, transforms, u, d, w, kind=kind, chunk_size=chunk_size, options=options,
            information=information,
        )
    )(u, data, weights)


@eqx.filter_jit
def _profile_compiled(
    logp, transforms, optimizer, u, data, weights, index, u_value, tol, max_steps
):
    return jax.vmap(
        lambda i, v: profile_nll(
            logp, transforms, u, data, weights, i, v,
            optimizer=optimizer, tol=tol, max_steps=max_steps,
        )
    )(index, u_value)


_CACHE: dict[int, dict] = {}


def _cache_of(res) -> dict:
    """The cache of one result object, dropped when the object is garbage collected."""
    key = id(res)
    entry = _CACHE.get(key)
    if entry is None:
        entry = _CACHE[key] = {}
        weakref.finalize(res, _CACHE.pop, key, None)
    return entry


def _check_kind(kind):
    if kind not in COVARIANCE_KINDS:
        kinds = ", ".join(map(repr, COVARIANCE_KINDS))
        raise ValueError(f"kind: expected one of {kinds}, got {kind!r}")


def compute_inference(
    res, kind: str = "observed", chunk_size: int | None = None, groups=None
) -> Inference:
    """Runs the compiled :func:`analyse` on a result (no cache); batched results are vmapped.

    ``groups``: cluster labels, one per observation (``kind="cluster"`` only).
    """
    _check_kind(kind)
    kind = canonical_kind(kind)
    options = cov_options(res, kind, groups)
    logp, ts = res.problem.logp, res.transforms
    if res.source is not None:  # a streamed fit: the sums come from a pass over the stream
        return res.source.analyse(logp, ts, res.u, kind)
    info = expected_information_of(res.problem)
    batch = res.batch_shape
    if not batch:
        return _analyse_compiled(
            logp, ts, res.u, res.data, res.weights, kind, chunk_size, options, info
        )
    size = math.prod(batch)
    flat = lambda x: x.reshape((size,) + x.shape[len(batch):])  # noqa: E731
    u, data, weights = jax.tree.map(flat, (res.u, res.data, res.weights))
    out = _analyse_batched(logp, ts, u, data, weights, kind, chunk_size, options, info)
    return jax.tree.map(lambda x: x.reshape(batch + x.shape[1:]), out)


def expected_information_of(problem):
    """The per-observation expected information of a model that declares its likelihood
    non-smooth (``smooth = False``), else ``None`` (the autodiff Hessian is used).

    With a penalty, the penalty's Hessian (divided over the observations) is added, so
    the information stays that of the penalised objective."""
    source = problem.source
    if not isinstance(source, AbstractModel) or source.smooth:
        return None
    if problem.penalty is None:
        return source.fisher_information
    return _PenalisedInformation(source.fisher_information, problem.penalty,
                                 problem.logp.total_weight)


class _PenalisedInformation(eqx.Module):
    """``I(obs) + H_f / W``: expected information of a penalised objective, per observation."""

    information: object = eqx.field(static=True)
    penalty: object = eqx.field(static=True)
    total_weight: float = eqx.field(static=True)

    def __call__(self, params, *obs):
        flat, unravel = ravel_pytree(params)
        h = jax.hessian(lambda f: self.penalty(unravel(f)))(flat)
        return self.information(params, *obs) + h / self.total_weight


def seed_inference(res, inference: Inference, kind: str = "observed") -> None:
    """Stores an :class:`Inference` computed with the fit (in its program) for ``res``."""
    _cache_of(res)[_cache_key(kind, cov_options(res, kind, None))] = inference


def inference_of(res, kind: str = "observed", groups=None) -> Inference:
    """The :class:`Inference` of ``res``, computed once per result object, kind and groups."""
    _check_kind(kind)
    kind = canonical_kind(kind)
    key = _cache_key(kind, cov_options(res, kind, groups))
    cache = _cache_of(res)
    if key not in cache:
        cache[key] = compute_inference(res, kind, groups=groups)
    return cache[key]


def stderr_of(res, kind: str = "observed"):
    """Returns the standard errors of ``res`` as a pytree like ``res.params`` (not cached).

    Compiled: the exact Hessian of the total NLL (chunked), its inverse and the delta
    method. Meant for timing (``jax.block_until_ready(stderr_of(res))``); ``res.stderr``
    is the cached equivalent.
    """
    return _unflatten(res, compute_inference(res, kind).stderr)


def n_params(res) -> int:
    """Number of free scalar parameters ``k`` of a (single or batched) result."""
    batch = len(res.batch_shape)
    return int(sum(math.prod(x.shape[batch:]) for x in jax.tree_util.tree_leaves(res.u)))


def _unflatten(res, flat, fill=0.0):
    """A flat ``(..., p)`` array back to the structure of ``res.params`` (fixed parameters,
    which have no entry, get ``fill``)."""
    batch = res.batch_shape
    flat = flat if isinstance(flat, jax.core.Tracer) else np.asarray(flat)
    out, off = [], 0
    leaves, treedef = jax.tree_util.tree_flatten(res.u)
    for x in leaves:
        shape = x.shape[len(batch):]
        size = math.prod(shape)
        out.append(flat[..., off:off + size].reshape(flat.shape[:-1] + shape))
        off += size
    return res.problem.finalize(treedef.unflatten(out), fill=fill)


# ---------------------------------------------------------------------------------------
# Names, status, intervals
# ---------------------------------------------------------------------------------------
_key_name = key_name  # the readable name of a key path (mlefit/_names.py)


def _layout_of(res) -> tuple[list[str], np.ndarray]:
    """``(flat_names, perm)`` of a result (see :func:`mlefit._names.flat_layout`), cached."""
    cache = _cache_of(res)
    if "layout" not in cache:
        batch = len(res.batch_shape)
        one_set = None if res.data is None else tuple(
            jax.ShapeDtypeStruct(a.shape[batch:], a.dtype) for a in res.data
        )
        order = res.problem.param_order(one_set)
        cache["layout"] = flat_layout(res.u, batch, order, res.problem.labels)
    return cache["layout"]


def flat_names_of(res) -> list[str]:
    """Names of the flat parameters in ``ravel_pytree`` order (the library's own order)."""
    return _layout_of(res)[0]


def param_order_of(res) -> np.ndarray:
    """``perm``: ``param_names[i]`` is flat parameter ``perm[i]`` (rows of ``hessian_total``)."""
    return _layout_of(res)[1]


def param_names_of(res) -> list[str]:
    """Readable names of the flat parameters in the order written in ``init`` (or the
    model's declared order): the rows of ``res.cov``, ``confint`` and ``summary``."""
    flat, perm = _layout_of(res)
    return [flat[i] for i in perm]


def labelled_matrix(res, m) -> LabelledArray:
    """A ``(..., p, p)`` matrix in flat order, as rows and columns in ``param_names`` order."""
    perm = param_order_of(res)
    m = np.asarray(m)[..., perm, :][..., :, perm]
    names = tuple(param_names_of(res))
    return LabelledArray(m, (None,) * (m.ndim - 2) + (names, names))


def labelled_cov(res, kind: str = "observed", groups=None) -> LabelledArray:
    """``res.covariance(kind)``: the covariance labelled by ``param_names`` (cached)."""
    if groups is not None:  # cached by inference_of, keyed by the groups' codes
        return labelled_matrix(res, inference_of(res, kind, groups).cov)
    cache = _cache_of(res)
    key = ("labelled_cov", kind)
    if key not in cache:
        cache[key] = labelled_matrix(res, inference_of(res, kind, groups).cov)
    return cache[key]


# What JAX raises for a log-density it can differentiate once but not twice: no
# differentiation rule (NotImplementedError), a custom_vjp under forward mode (TypeError),
# a pure_callback under jvp (ValueError).
HESSIAN_ERRORS = (NotImplementedError, TypeError, ValueError)


def refined_status_code(res) -> np.ndarray:
    """The optimiser's status refined by the inference verdict (see ``FitResult.status``).

    CONVERGED or STALLED with a parameter at its bound -> AT_BOUND; CONVERGED with NaN or
    inf in the Hessian -> HESSIAN_NOT_FINITE; otherwise CONVERGED
    with a Hessian that is not positive definite -> HESSIAN_NOT_POSITIVE_DEFINITE, and
    CONVERGED with a positive definite one where :func:`short_of_minimum` -> NOT_AT_MINIMUM
    (a small gradient on a flat NLL: an NLL like ``-log(rate)`` or ``exp(-t)`` with no
    minimum at finite parameters has ``EDM = n / 2`` or ``n nll / 2``). Other statuses
    (max_steps, non_finite, ...) are the optimiser's and are kept.

    A model that declares a non-smooth likelihood (``smooth = False``: kinks, where the
    line search stalls with a one-sided gradient) is CONVERGED from STALLED when the
    remaining gain a Newton step predicts with the expected information is within what
    one observation's kink contributes, ``EDM <= k / n_obs`` (an observation's score
    adds ``s_i^T I^-1 s_i / 2``, ``k / (2 n)`` on average, to the EDM). E.g. the Laplace
    location at the median of an odd sample: JAX's gradient of ``|x - loc|`` at the
    middle observation is one-sided, ``EDM = 1 / (2 n)``.
    """
    code = np.asarray(res.status_code).copy()
    check = (code == Status.CONVERGED) | (code == Status.STALLED)
    if not check.any() or n_params(res) > MAX_PARAMS_FOR_STATUS or res.data is None:
        return code  # no data kept (a streamed fit): use stream_hessian for inference
    try:
        inf = inference_of(res)
    except HESSIAN_ERRORS as e:  # a log-density JAX can differentiate once, not twice
        warnings.warn(
            f"the Hessian of the NLL cannot be computed ({e}); status is the optimiser's "
            "and the Hessian checks (positive definite, at bound) were skipped",
            stacklevel=3,
        )
        return code
    at_bound = np.asarray(inf.at_bound).any(axis=-1)
    pd = np.asarray(inf.positive_definite)
    smooth = expected_information_of(res.problem) is None
    if not smooth:
        k = n_params(res)
        kink = np.asarray(inf.edm, np.float64) <= k / np.asarray(res.n_obs, np.float64)
        code = np.where((code == Status.STALLED) & kink & pd & ~at_bound,
                        Status.CONVERGED, code)
    finite = np.asarray(inf.hessian_finite).all(axis=-1)
    code = np.where(check & at_bound, Status.AT_BOUND, code)
    code = np.where((code == Status.CONVERGED) & ~finite, Status.HESSIAN_NOT_FINITE, code)
    code = np.where((code == Status.CONVERGED) & ~pd, Status.HESSIAN_NOT_POSITIVE_DEFINITE, code)
    short = short_of_minimum(res, inf) if smooth else ~kink
    code = np.where((code == Status.CONVERGED) & short, Status.NOT_AT_MINIMUM, code)
    return code


def short_of_minimum(res, inf: Inference) -> np.ndarray:
    """Where a Newton step from the estimate would still gain and move: the EDM per
    observation is above ``max(sqrt(eps), tol) * max(|nll|, 1)``, or, for an NLL at
    rounding level (a likelihood approaching 1: separated classes), above a tenth of it;
    and the step moves some parameter by more than ``sqrt(eps) * max(|u_j|, 1)`` (an
    exact fit whose NLL is 0 at the minimum has an EDM equal to its NLL, but no step)."""
    nll = np.asarray(res.nll, np.float64)
    edm_mean = np.asarray(inf.edm, np.float64) / np.asarray(res.n_obs, np.float64)
    sqrt_eps = float(np.sqrt(np.finfo(np.asarray(res.nll).dtype).eps))
    level = max(sqrt_eps, res.tol or 0.0)
    gains = (edm_mean > level * np.maximum(np.abs(nll), 1.0)) | (
        (np.abs(nll) < sqrt_eps) & (edm_mean > 0.1 * np.abs(nll))
    )
    batch = res.batch_shape
    leaves = jax.tree_util.tree_leaves(res.u)
    u = np.abs(np.concatenate([np.asarray(x, np.float64).reshape(batch + (-1,)) for x in leaves],
                              axis=-1))
    step = np.abs(np.asarray(inf.newton_step, np.float64))
    moves = np.any(step > sqrt_eps * np.maximum(u, 1.0), axis=-1)
    return gains & moves


def _normal_quantile(level: float) -> float:
    """``z`` with ``P(|Z| <= z) = level`` (host side, double precision); ``z^2`` is chi2_1's."""
    return statistics.NormalDist().inv_cdf((1.0 + level) / 2.0)


def _check_level(level) -> float:
    if isinstance(level, bool) or not isinstance(level, (int, float, np.floating, np.integer)):
        raise TypeError(f"level: expected a number in (0, 1), got {type(level).__name__}")
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level: must be strictly between 0 and 1 (e.g. 0.95), got {level!r}")
    return float(level)


def _indices_of(res, params) -> list[int]:
    """Flat indices of ``params`` (names; default all, in ``param_names`` order)."""
    flat, perm = _layout_of(res)
    if params is None:
        return [int(i) for i in perm]
    if isinstance(params, str):
        params = [params]
    lookup = {n: i for i, n in enumerate(flat)}
    out = []
    for name in params:
        if name not in lookup:
            names = param_names_of(res)
            shown = ", ".join(map(repr, names[:12])) + (", ..." if len(names) > 12 else "")
            raise ValueError(f"params: unknown parameter name {name!r}; the fit has {shown}")
        out.append(lookup[name])
    return out


def wald_confint(
    res, level: float = 0.95, params=None, kind: str = "observed", groups=None
) -> np.ndarray:
    """``estimate -/+ z_{(1+level)/2} * stderr`` per flat parameter, shape ``(..., k, 2)``."""
    level = _check_level(level)
    idx = _indices_of(res, params)
    inf = inference_of(res, kind, groups)
    est = np.asarray(_flat_params(res))[..., idx]
    se = np.asarray(inf.stderr)[..., idx]
    z = _normal_quantile(level)
    return np.stack([est - z * se, est + z * se], axis=-1)


def _flat_params(res):
    batch = res.batch_shape
    if not batch:  # res.params holds the constrained values, leaves in the order of u
        leaves = [np.ravel(np.asarray(x)) for x in jax.tree_util.tree_leaves(res.params)]
        if sum(x.size for x in leaves) == n_params(res):
            return np.concatenate(leaves)
        return ravel_pytree(constrain(res.u, res.transforms))[0]
    size = math.prod(batch)
    u = jax.tree.map(lambda x: x.reshape((size,) + x.shape[len(batch):]), res.u)
    flat = jax.vmap(lambda v: ravel_pytree(constrain(v, res.transforms))[0])(u)
    return flat.reshape(batch + flat.shape[1:])


def _require_data(res, what: str):
    if res.data is None:
        raise ValueError(
            f"{what}: needs the data in memory, and this fit read a stream: a profile "
            "re-fits the model many times. Use Wald intervals (method='wald', one pass over "
            "the stream), or fit the data in memory to profile them."
        )


def _require_single(res, what: str):
    if res.batch_shape:
        raise TypeError(f"{what}: works on a single fit; index the batched result first (res[i])")


def _flat_transform(res, index: int):
    """The transform of flat parameter ``index``."""
    off = 0
    for t, x in zip(res.transforms, jax.tree_util.tree_leaves(res.u), strict=True):
        off += int(np.size(x))
        if index < off:
            return t
    raise IndexError(index)


def _bucket(k: int) -> int:
    """Batch size of a vmapped profile call: the next power of two >= k (at least 4), so
    intervals and curves of any size share a few compilations."""
    return max(4, 1 << (k - 1).bit_length())


def _profile_eval(res, indices, u_values):
    """Profile total NLL and convergence at each ``(index, u_value)`` pair (one vmapped call)."""
    indices = np.asarray(indices, dtype=np.int32).ravel()
    u_values = np.asarray(u_values, dtype=float).ravel()
    k = indices.size
    pad = _bucket(k) - k
    # Padding repeats the first pair: a valid re-fit whose result is discarded.
    indices = np.concatenate([indices, np.full(pad, indices[0], np.int32)])
    u_values = np.concatenate([u_values, np.full(pad, u_values[0])])
    dtype = ravel_pytree(res.u)[0].dtype
    tol = jnp.asarray(default_tol(dtype), dtype)
    nll, status = _profile_compiled(
        res.problem.logp, res.transforms, default_optimizer(), res.u, res.data, res.weights,
        jnp.asarray(indices), jnp.asarray(u_values, dtype), tol, DEFAULT_MAX_STEPS,
    )
    return np.asarray(nll, dtype=float)[:k], (np.asarray(status) == Status.CONVERGED)[:k]


def _nll_min(res) -> float:
    return float(res.n_obs * res.nll)


def profile_of(res, name: str, values) -> np.ndarray:
    """``res.profile``: the profile total-NLL curve of one parameter (see FitResult)."""
    _require_single(res, "profile")
    _require_data(res, "profile")
    if not isinstance(name, str):
        raise TypeError(f"name: expected a parameter name (str), got {type(name).__name__}")
    (index,) = _indices_of(res, [name])
    values = np.atleast_1d(np.asarray(values, dtype=float))
    if values.ndim != 1 or values.size == 0:
        raise ValueError(
            f"values: expected a non-empty 1-D array of values, got shape {values.shape}"
        )
    t = _flat_transform(res, index)
    lo, hi = t.bounds() if hasattr(t, "bounds") else (-np.inf, np.inf)
    bad = ~(np.isfinite(values) & (values > lo) & (values < hi))
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"values: parameter {name!r} must lie in ({lo}, {hi}); "
            f"values[{i}] = {float(values[i])!r}"
        )
    u_values = np.asarray(t.inverse(jnp.asarray(values)))
    nll, conv = _profile_eval(res, [index] * values.size, u_values)
    if not conv.all():
        bad = values[~conv]
        warnings.warn(
            f"profile: the re-fit with {name} fixed did not converge at {bad.size} value(s), "
            f"first {bad[0]!r}; those points of the curve are upper bounds.",
            stacklevel=3,
        )
    return nll


# Multiples of z * stderr (unconstrained scale) tried in turn until the profile crosses.
_PROFILE_GRID = (1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0, 40.0)
_PROFILE_ITERS = 60


def profile_confint(res, level: float = 0.95, params=None) -> np.ndarray:
    """Profile-likelihood interval per flat parameter, shape ``(k, 2)`` (see FitResult).

    Works in the unconstrained coordinate ``u_j`` (the LR statistic is invariant under
    the monotone map to ``c_j``). For each (parameter, side): step out from the estimate
    by multiples of ``z * se(u_j)`` until ``r(t) = sqrt(2 (N_prof - N_min)) - z`` turns
    positive, then Illinois regula falsi on ``r`` (nearly linear in ``t`` because the
    profile is nearly quadratic). All (parameter, side) pairs are re-fitted together in
    one vmapped call per step.
    """
    level = _check_level(level)
    _require_single(res, "confint(method='profile')")
    _require_data(res, "confint(method='profile')")
    idx = _indices_of(res, params)
    z = _normal_quantile(level)  # the chi2_1 quantile is z^2
    inf = inference_of(res)
    u_hat = np.asarray(ravel_pytree(res.u)[0], dtype=float)
    jac = np.asarray(ravel_pytree(jacobian_diag(res.u, res.transforms))[0], dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        se_u = np.asarray(inf.stderr, dtype=float) / jac
    step = np.where(np.isfinite(se_u) & (se_u > 0), se_u, 1.0)
    nll0 = _nll_min(res)

    js = np.repeat(np.asarray(idx), 2)
    sides = np.tile([-1.0, 1.0], len(idx))
    m = js.size

    def residual(t):
        nll, _ = _profile_eval(res, js, u_hat[js] + sides * t)
        d = 2.0 * (nll - nll0)
        d = np.where(np.isnan(d), np.inf, d)  # a non-finite NLL is beyond any quantile
        return np.sqrt(np.maximum(d, 0.0)) - z

    # Bracket: t_lo with r < 0 (the estimate: r = -z), t_hi with r >= 0.
    t_lo, r_lo = np.zeros(m), np.full(m, -z)
    t_hi, r_hi = np.full(m, np.inf), np.full(m, np.nan)
    for mult in _PROFILE_GRID:
        open_ = ~np.isfinite(t_hi)
        if not open_.any():
            break
        t = np.where(open_, step[js] * z * mult, t_lo)
        r = residual(t)
        crossed = open_ & (r >= 0)
        t_hi = np.where(crossed, t, t_hi)
        r_hi = np.where(crossed, np.where(np.isfinite(r), r, np.nan), r_hi)
        below = open_ & (r < 0)
        t_lo, r_lo = np.where(below, t, t_lo), np.where(below, r, r_lo)
    has = np.isfinite(t_hi)

    # Illinois regula falsi; a NaN r_hi (non-finite NLL) falls back to bisection.
    active = has.copy()
    t_root = np.where(has, t_hi, np.inf)
    last = np.zeros(m)
    for _ in range(_PROFILE_ITERS):
        if not active.any():
            break
        with np.errstate(divide="ignore", invalid="ignore"):
            lin = t_lo - r_lo * (t_hi - t_lo) / (r_hi - r_lo)
        t_new = np.where(np.isfinite(lin) & (lin > t_lo) & (lin < t_hi), lin, 0.5 * (t_lo + t_hi))
        t_new = np.where(active, t_new, t_root)
        r_new = residual(t_new)
        below = active & (r_new < 0)
        above = active & ~(r_new < 0)
        r_hi = np.where(below & (last == -1), 0.5 * r_hi, r_hi)  # Illinois: stale end halves
        r_lo = np.where(above & (last == 1), 0.5 * r_lo, r_lo)
        t_lo, r_lo = np.where(below, t_new, t_lo), np.where(below, r_new, r_lo)
        t_hi = np.where(above, t_new, t_hi)
        r_hi = np.where(above, np.where(np.isfinite(r_new), r_new, np.nan), r_hi)
        last = np.where(below, -1, np.where(above, 1, last))
        t_root = np.where(active, t_new, t_root)
        done = (np.abs(r_new) <= 1e-9 * z) | (t_hi - t_lo <= 1e-13 * (1.0 + np.abs(u_hat[js])))
        active = active & ~done

    out = np.empty(m)
    for k in range(m):
        t = _flat_transform(res, int(js[k]))
        u_val = u_hat[js[k]] + sides[k] * t_root[k] if has[k] else sides[k] * np.inf
        out[k] = float(t.forward(jnp.asarray(u_val)))
    if (~has).any():
        names = flat_names_of(res)
        open_sides = sorted({names[js[k]] for k in np.flatnonzero(~has)})
        warnings.warn(
            f"confint: the profile likelihood of {', '.join(open_sides)} stays below the "
            f"chi2 quantile out to {_PROFILE_GRID[-1]:g} x z x stderr; that end of the "
            "interval is reported as the parameter's bound (or +-inf).",
            stacklevel=4,
        )
    return out.reshape(len(idx), 2)


CONFINT_COLUMNS = ("lower", "upper")


def confint_of(res, level=0.95, method="wald", params=None, kind="observed",
               groups=None) -> LabelledArray:
    """``res.confint``: ``(..., k, 2)`` lower/upper bounds in the order of ``params``,
    rows labelled by parameter name and columns ``("lower", "upper")``."""
    if method == "wald":
        ci = wald_confint(res, level, params, kind, groups)
    elif method == "profile":
        ci = profile_confint(res, level, params)
    else:
        raise ValueError(f"method: expected 'wald' or 'profile', got {method!r}")
    flat = flat_names_of(res)
    names = tuple(flat[i] for i in _indices_of(res, params))
    return LabelledArray(ci, (None,) * (ci.ndim - 2) + (names, CONFINT_COLUMNS))


TABLE_COLUMNS = ("estimate", "stderr", "z", "pvalue", "ci_low", "ci_high")


def param_table(res, level: float = 0.95, kind: str = "observed", method: str = "wald"):
    """The parameter table of ``res.to_frame()`` as a :class:`LabelledArray` ``(p, 6)``.

    One row per scalar parameter in ``param_names`` order; columns ``TABLE_COLUMNS``:
    the estimate, its standard error ``sqrt(cov_jj)`` (``kind``), ``z = estimate /
    stderr``, the two-sided ``pvalue = 2 (1 - Phi(|z|))`` of ``parameter = 0``, and the
    interval of ``confint(level, method)``.
    """
    _require_single(res, "to_frame")
    _check_kind(kind)
    idx = _indices_of(res, None)
    est = np.asarray(_flat_params(res), dtype=float)[idx]
    se = np.asarray(inference_of(res, kind).stderr, dtype=float)[idx]
    with np.errstate(divide="ignore", invalid="ignore"):
        z = est / se
    ci = np.asarray(confint_of(res, level, method, None, kind), dtype=float)
    values = np.column_stack([est, se, z, _pvalue(z), ci[:, 0], ci[:, 1]])
    return LabelledArray(values, (tuple(param_names_of(res)), TABLE_COLUMNS))


# ---------------------------------------------------------------------------------------
# Model comparison
# ---------------------------------------------------------------------------------------
class LRTest(NamedTuple):
    """Likelihood-ratio test result: ``statistic``, degrees of freedom ``df``, ``pvalue``."""

    statistic: float
    df: int
    pvalue: float


def lr_test(restricted, full) -> LRTest:
    """Returns the likelihood-ratio test of a restricted model nested in a full one.

    ``statistic = 2 (loglik_full - loglik_restricted)``, ``df = k_full - k_restricted``
    (free scalar parameters; fixed ones do not count), ``pvalue = P(chi2_df >= statistic)``.
    Valid when the restricted model is the full one with ``df`` parameters fixed at
    interior values, both fitted by maximum likelihood to the same data.

    Guards (``ValueError`` before any p-value): the fits must be on the same data
    (:func:`data_fingerprint`: ``n_obs``, the weights, and each data array of equal
    shape, checked from a strided sample; design matrices with different numbers of
    columns, as in nested regressions, are not compared); the restricted model must
    have fewer free parameters and must not fit better than the full one beyond rounding
    (``loglik_r - loglik_f > sqrt(eps) max(|loglik_f|, 1)``: not nested, or the full
    fit missed its maximum). Warns (``UserWarning``) for a known pair whose restriction
    is on the boundary of the parameter space (Normal in StudentT as ``df -> infinity``,
    Poisson in NegativeBinomial: see :mod:`mlefit._nesting`; the chi2 p-value is then
    conservative, twice the correct one for one parameter), for penalised fits, and for
    fits that did not converge.

    Args:
        restricted: the ``FitResult`` of the smaller model.
        full: the ``FitResult`` of the larger model, fitted to the same data.

    Example:
        >>> import jax.numpy as jnp, jax.scipy.stats as st, mlefit
        >>> x = jnp.array([0.1, 1.9, 2.2, 3.8, 1.5])
        >>> m0 = lambda p, x: st.norm.logpdf(x, 0.0, p["s"])
        >>> m1 = lambda p, x: st.norm.logpdf(x, p["mu"], p["s"])
        >>> r0 = mlefit.fit(m0, x, {"s": mlefit.Positive(1.0)})
        >>> r1 = mlefit.fit(m1, x, {"mu": 0.0, "s": mlefit.Positive(1.0)})
        >>> mlefit.lr_test(r0, r1).df
        1
    """
    for name, r in (("restricted", restricted), ("full", full)):
        if not hasattr(r, "loglik") or not hasattr(r, "u"):
            raise TypeError(f"{name}: expected a FitResult, got {type(r).__name__}")
        if r.batch_shape:
            raise TypeError(f"{name}: expected a single fit, got a batched result; index it first")
    k0, k1 = n_params(restricted), n_params(full)
    if k0 >= k1:
        raise ValueError(
            f"restricted: has {k0} free parameters but full has {k1}; the restricted model "
            "must have fewer (pass lr_test(restricted, full) in that order)."
        )
    n0, n1 = float(restricted.n_obs), float(full.n_obs)
    if not np.isclose(n0, n1, rtol=1e-12, atol=0.0):
        raise ValueError(
            f"full: n_obs={n1:g} differs from restricted n_obs={n0:g}; both models must be "
            "fitted to the same data."
        )
    _check_same_data(restricted, full)
    ll0, ll1 = float(restricted.loglik), float(full.loglik)
    eps = float(np.finfo(np.asarray(full.nll).dtype).eps)
    if ll0 - ll1 > math.sqrt(eps) * max(abs(ll1), 1.0):
        raise ValueError(
            f"restricted: its log-likelihood {ll0:.10g} is higher than the full model's "
            f"{ll1:.10g}; a model nested in another cannot fit better, so the pair is not "
            "nested (or the full fit did not reach its maximum: refit it from the "
            "restricted estimate)."
        )
    for name, r in (("restricted", restricted), ("full", full)):
        if r.status != Status.CONVERGED:
            warnings.warn(f"lr_test: the {name} fit has status {r.status}", stacklevel=2)
        if getattr(r, "penalty", None) is not None:
            warnings.warn(
                f"lr_test: the {name} fit is penalised; the chi2 reference assumes maximum-"
                "likelihood estimates", stacklevel=2,
            )
    nested = restriction_of(restricted.problem.source, full.problem.source)
    if nested is not None and nested.boundary:
        warnings.warn(
            f"lr_test: {restricted.model_name} is {full.model_name} with {nested.what}, a "
            "restriction on the boundary of the parameter space: the chi-square reference "
            "does not hold (Self & Liang 1987) and the p-value is conservative (for one "
            "parameter the reference is the 50:50 mixture of chi2_0 and chi2_1, whose "
            "p-value is half of this one).",
            stacklevel=2,
        )
    stat = 2.0 * (ll1 - ll0)
    df = k1 - k0
    pvalue = float(jax.scipy.stats.chi2.sf(max(stat, 0.0), df))
    return LRTest(stat, df, pvalue)


# Elements of each array sampled for the data fingerprint (strided over the array).
_FINGERPRINT_SAMPLE = 4096


def data_fingerprint(a) -> tuple:
    """``(shape, digest)`` of an array: its shape and a SHA-1 of up to 4096 elements taken
    at a regular stride (as float64), computed on the host. Two arrays with different
    fingerprints differ; equal ones agree in shape and in the sampled elements."""
    shape = tuple(np.shape(a))
    host = host_view(a) if isinstance(a, jax.Array) else np.asarray(a)
    size = int(np.prod(shape)) if shape else 1
    step = max(1, size // _FINGERPRINT_SAMPLE)
    if host is not None:
        sample = np.asarray(host).reshape(-1)[::step]
    else:  # on an accelerator: bring back only the sample
        sample = np.asarray(jnp.ravel(a)[::step])
    sample = np.ascontiguousarray(sample, dtype=np.float64)
    return shape, hashlib.sha1(sample.tobytes()).hexdigest()


def _check_same_data(restricted, full) -> None:
    """``ValueError`` when two fits can be seen to be on different data (see ``lr_test``)."""
    d0, d1 = tuple(restricted.data or ()), tuple(full.data or ())
    if not d0 or not d1:
        return  # streamed fits keep no data
    pairs = list(zip(d0, d1, strict=True)) if len(d0) == len(d1) else [(d0[-1], d1[-1])]
    w0, w1 = restricted.weights, full.weights
    if (w0 is None) != (w1 is None):
        raise ValueError("full: one fit has observation weights and the other has none; "
                         "both models must be fitted to the same (weighted) data.")
    if w0 is not None:
        pairs.append((w0, w1))
    for k, (a, b) in enumerate(pairs):
        if np.shape(a)[1:] != np.shape(b)[1:]:
            continue  # e.g. design matrices of nested regressions
        if data_fingerprint(a) != data_fingerprint(b):
            what = "the weights" if w0 is not None and k == len(pairs) - 1 else (
                f"data[{k}]" if len(d0) == len(d1) else "the last data array"
            )
            raise ValueError(
                f"full: {what} differs from the restricted fit's (same shape, different "
                "values); a likelihood-ratio test compares two models on the same data."
            )


# ---------------------------------------------------------------------------------------
# Display
# ---------------------------------------------------------------------------------------
def _fmt(x, width=10) -> str:
    x = float(x)
    if math.isnan(x):
        return f"{'nan':>{width}}"
    if math.isinf(x):
        return f"{'inf' if x > 0 else '-inf':>{width}}"
    return f"{x:>{width}.4g}"


def _pvalue(z):
    return np.array([math.erfc(abs(v) / math.sqrt(2.0)) if np.isfinite(v) else np.nan for v in z])


def _table(res, kind, level, max_rows, groups=None):
    _require_single(res, "summary")
    names = flat_names_of(res)
    est = np.asarray(_flat_params(res), dtype=float)
    inf = inference_of(res, kind, groups)
    se = np.asarray(inf.stderr, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = est / se
    pv = _pvalue(z)
    q = _normal_quantile(level)
    notes = []
    at_bound = np.asarray(inf.at_bound)
    ident = np.asarray(inf.identified)
    finite = np.asarray(inf.hessian_finite)
    for i in range(len(names)):
        notes.append(
            "at bound" if at_bound[i]
            else "Hessian not finite" if not finite[i]
            else "no std err: Hessian not finite" if not finite.all()
            else "not identified" if not ident[i] else ""
        )
    rows = [
        (names[i], est[i], se[i], z[i], pv[i], est[i] - q * se[i], est[i] + q * se[i], notes[i])
        for i in param_order_of(res)  # rows in the order of param_names
    ]
    rows += _fixed_rows(res)
    return rows[:max_rows], max(0, len(rows) - max_rows), inf


def _fixed_rows(res) -> list:
    """Summary rows of the fixed parameters: the value, std err 0, no test."""
    fixed = res.problem.fixed
    if fixed is None:
        return []
    rows = []
    for name in fixed.names:
        v = fixed.value(name)
        labels = [name] if v.ndim == 0 else [
            f"{name}[{','.join(map(str, idx))}]" for idx in np.ndindex(*v.shape)
        ]
        for label, x in zip(labels, v.ravel(), strict=True):
            rows.append((label, float(x), 0.0, np.nan, np.nan, float(x), float(x), "fixed"))
    return rows


def _header(res, inf, kind):
    from ._status import Status as _S

    status = res.status
    nll_ok = np.isfinite(float(res.nll))
    items = [
        ("Model", res.model_name),
        ("n_obs", _num(res.n_obs)),
        ("Log-likelihood", f"{float(res.loglik):.6g}" if nll_ok else "nan"),
        ("Mean NLL", f"{float(res.nll):.10g}"),
        *(
            [("Penalty", f"{float(res.penalty):.6g}"), ("Objective", f"{float(res.objective):.8g}")]
            if getattr(res, "penalty", None) is not None else []
        ),
        ("AIC", f"{float(res.aic):.6g}"),
        ("BIC", f"{float(res.bic):.6g}"),
        ("Converged", str(bool(status == _S.CONVERGED))),
        ("Status", f"{status}"),
        ("Steps", str(int(res.steps)) + (" (minibatch)" if res.minibatch else "")),
        ("Gradient norm", f"{float(res.grad_norm):.3g}"),
        ("EDM", f"{float(inf.edm):.3g}"),
        ("Hessian cond.", f"{float(inf.condition_number):.3g}"),
        ("Covariance", kind),
        ("Parameters", str(n_params(res)) + (
            f" (+{len(res.problem.fixed.names)} fixed)" if res.problem.fixed is not None else ""
        )),
    ]
    return items, status


def _num(x):
    v = float(np.asarray(x))
    return str(int(v)) if v.is_integer() else f"{v:g}"


def _explanations(res, inf, status) -> list[str]:
    out = [f"Status: {status} ({status.message})."]
    names = flat_names_of(res)
    at_bound = np.asarray(inf.at_bound)
    nonfinite = [names[i] for i in np.flatnonzero(~np.asarray(inf.hessian_finite))]
    not_id = [] if nonfinite else [
        names[i] for i in np.flatnonzero(~np.asarray(inf.identified) & ~at_bound)
    ]
    bound = [names[i] for i in np.flatnonzero(at_bound)]
    if nonfinite:
        which = ", ".join(nonfinite[:10]) + (" ..." if len(nonfinite) > 10 else "")
        out.append(
            f"The Hessian of the NLL has NaN or inf entries in the rows of {which}: no "
            "standard errors (NaN). The model is not shown to be unidentified; its second "
            "derivatives are not finite at the estimate (e.g. an infinite constant such as "
            "+-inf cut points: write them as finite limits or with jnp.where). "
            "covariance('opg') needs first derivatives only."
        )
    if expected_information_of(res.problem) is not None:
        out.append(
            f"{res.model_name} has a non-smooth likelihood: standard errors use its expected "
            "(Fisher) information, not the observed Hessian."
        )
    if res.problem.penalty is not None:
        out.append(
            "Penalised fit: Log-likelihood, AIC and BIC exclude the penalty; std errs are "
            "the inverse Hessian of the penalised objective (MAP curvature), not the "
            "sampling covariance of the penalised estimator."
        )
    if (not bool(inf.positive_definite) and not nonfinite) or not_id:
        which = ", ".join(not_id[:10]) + (" ..." if len(not_id) > 10 else "")
        out.append(
            "The Hessian of the NLL is not positive definite"
            + (f": {which} not identified (std err NaN)." if not_id else ".")
        )
    if bound:
        out.append(
            f"At a bound: {', '.join(bound[:10])} (std err NaN: the Wald approximation does not "
            "hold on a boundary; use confint(method='profile'))."
        )
    if res.minibatch:
        out.append("Inference was computed full-batch over the data at the final iterate.")
    return out


def summary_of(
    res, kind: str = "observed", level: float = 0.95, max_rows: int = 50, groups=None
) -> str:
    """``res.summary()``: a text table in the manner of statsmodels and iminuit."""
    _check_kind(kind)
    level = _check_level(level)
    rows, more, inf = _table(res, kind, level, max_rows, groups)
    items, status = _header(res, inf, kind)
    width = 92
    lines = ["mlefit fit result".center(width), "=" * width]
    half = (len(items) + 1) // 2
    left, right = items[:half], items[half:]
    for k in range(half):
        a = f"{left[k][0] + ':':<16}{left[k][1]:<28}"
        b = f"{right[k][0] + ':':<16}{right[k][1]}" if k < len(right) else ""
        lines.append((a + b).rstrip())
    lines.append("=" * width)
    lo, hi = f"[{(1 - level) / 2:.3g}", f"{(1 + level) / 2:.3g}]"
    name_w = max([9] + [len(r[0]) for r in rows])
    lines.append(
        f"{'':<{name_w}} {'estimate':>10} {'std err':>10} {'z':>10} {'P>|z|':>10} "
        f"{lo:>10} {hi:>10}"
    )
    lines.append("-" * max(width, name_w + 67))
    for name, e, s, zz, pv, a, b, note in rows:
        line = f"{name:<{name_w}} {_fmt(e)} {_fmt(s)} {_fmt(zz)} {_fmt(pv)} {_fmt(a)} {_fmt(b)}"
        lines.append(line + (f"  ({note})" if note else ""))
    if more:
        lines.append(f"... {more} more parameters (summary(max_rows=...) to show them)")
    lines.append("=" * width)
    lines.extend(_explanations(res, inf, status))
    return "\n".join(lines)


def html_of(res, kind: str = "observed", level: float = 0.95, max_rows: int = 50) -> str:
    """``res._repr_html_``: the summary as an HTML table."""
    if res.batch_shape:
        return f"<pre>{html.escape(repr(res))}</pre>"
    rows, more, inf = _table(res, kind, level, max_rows)
    items, status = _header(res, inf, kind)
    e = html.escape
    head = "".join(f"<tr><th style='text-align:left'>{e(k)}</th><td>{e(str(v))}</td></tr>"
                   for k, v in items)
    cols = ["", "estimate", "std err", "z", "P&gt;|z|",
            f"[{(1 - level) / 2:.3g}", f"{(1 + level) / 2:.3g}]", ""]
    body = "".join(
        "<tr>" + f"<td>{e(r[0])}</td>" + "".join(f"<td>{_fmt(v, 0).strip()}</td>" for v in r[1:7])
        + f"<td>{e(r[7])}</td></tr>"
        for r in rows
    )
    if more:
        body += f"<tr><td colspan=8>... {more} more parameters</td></tr>"
    notes = "".join(f"<p>{e(s)}</p>" for s in _explanations(res, inf, status))
    colour = "#c00" if status != Status.CONVERGED else "#080"
    return (
        f"<div><p><b>mlefit fit result</b> <span style='color:{colour}'>{e(str(status))}</span>"
        f"</p><table>{head}</table><table><tr>{''.join(f'<th>{c}</th>' for c in cols)}</tr>"
        f"{body}</table>{notes}</div>"
    )
