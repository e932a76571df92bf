"""Robust ("sandwich") covariances: HC0-HC3 and cluster-robust, for any log-density.

All are ``cov = c * H^-1 B H^-1`` with ``H`` the Hessian of the total NLL (observed
information) and a "meat" ``B`` built from the per-observation scores
``s_i = d log p(obs_i; w) / dw`` at the estimate:

- ``HC0``: ``B = sum_i a_i s_i s_i^T``, ``c = 1`` (White; statsmodels' ``HC0``);
- ``HC1``: HC0 times ``c = n / (n - k)``;
- ``HC2``: ``B = sum_i a_i s_i s_i^T / (1 - h_i)``;
- ``HC3``: ``B = sum_i a_i s_i s_i^T / (1 - h_i)^2``;
- ``cluster``: ``B = sum_g S_g S_g^T``, ``S_g = sum_{i in g} v_i s_i`` (CRV1), with
  statsmodels' default correction ``c = G / (G - 1) * (n - 1) / (n - k)``.

``a_i = v_i`` for frequency weights (``v_i`` replicates, each contributing
``s_i s_i^T``) and ``a_i = v_i^2`` for variance weights (one observation with score
``v_i s_i``); ``a_i = 1`` without weights (see :mod:`mlefit._weights`). ``n = n_obs``,
``G`` the number of clusters with a positive-weight observation, ``k`` the number of
free parameters less the model's nuisance parameters (below).

Leverages. For a (generalised) linear model the hat value is
``h_i = w_i x_i^T (X^T W X)^-1 x_i`` with IRLS weights ``w_i``; with ``H_i`` the
per-observation Hessian of ``-log p(obs_i)``, this is ``h_i = tr(H^-1 H_i)``, the
observation's share of the information (``sum_i h_i = k``). mlefit defines
``h_i = c_i tr(C_S H_{i,S})`` for any log-density: ``C`` the observed covariance, ``S``
the parameters of the mean (all but a ready-made model's declared ``nuisance_params``,
e.g. the ``scale`` of :class:`~mlefit.models.LinearGaussian`), ``c_i = 1`` for a
frequency replicate and ``v_i`` for a variance-weighted observation. For linear
regression this is OLS's (WLS's) hat value, and HC2/HC3 equal statsmodels' ``OLS``/
``WLS`` ``cov_HC2``/``cov_HC3``; for a GLM with its canonical link (logistic, Poisson
log) it is the IRLS hat value, and HC2/HC3 are those of R's ``sandwich::vcovHC``
(statsmodels' GLM maps ``cov_type="HC1"``-``"HC3"`` to HC0). For other log-densities
``h_i`` is the generalised leverage above; HC2/HC3 have no established meaning beyond
(generalised) linear models: prefer HC0/HC1 there. An observation with ``h_i >= 1``
gives infinite or negative variances, as in statsmodels.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._weights import score_power
from .models._conditional import AbstractConditionalModel

__all__ = [
    "LEVERAGE_KINDS",
    "ROBUST_KINDS",
    "CovOptions",
    "canonical_kind",
    "cov_options",
    "meat_c",
    "small_sample_factor",
]

ROBUST_KINDS = ("HC0", "HC1", "HC2", "HC3", "cluster")
# Kinds that need per-observation Hessians (the leverages).
LEVERAGE_KINDS = ("HC2", "HC3")


class CovOptions(NamedTuple):
    """What a robust covariance needs besides the fit (``analyse``'s ``options``).

    Attributes:
        weights_kind: ``"frequency"`` or ``"variance"`` (static).
        mean_mask: ``(p,)`` bool, the parameters of the mean (leverages and ``k``);
            ``None``: all.
        groups: ``(n,)`` int cluster codes in ``[0, n_segments)``, or ``None``.
        n_segments: number of distinct codes (static).
        n_clusters: ``G``, the clusters holding a positive-weight observation.
    """

    weights_kind: str = "frequency"
    mean_mask: Any = None
    groups: Any = None
    n_segments: int = 0
    n_clusters: Any = None


def _mask(options: CovOptions, p: int, dtype):
    if options.mean_mask is None:
        return jnp.ones((p,), dtype)
    return jnp.asarray(options.mean_mask).astype(dtype)


def small_sample_factor(kind: str, n, options: CovOptions, p: int):
    """``c``: ``n / (n - k)`` (HC1), ``G/(G-1) (n-1)/(n-k)`` (cluster), else 1."""
    k = jnp.sum(_mask(options, p, jnp.result_type(n)))
    if kind == "HC1":
        return n / (n - k)
    if kind == "cluster":
        g = options.n_clusters
        return g / (g - 1) * (n - 1) / (n - k)
    return jnp.ones((), jnp.result_type(n))


def meat_c(logp, c_flat, unravel, data: tuple, weights, kind: str, options: CovOptions,
           cov_c, chunk: int, chunked_sum):
    """``B`` in the constrained flat parametrisation (see the module docstring).

    ``kind``: a robust kind, or ``"opg"`` (the HC0 meat). ``cov_c``: the observed
    covariance of the constrained parameters (finite; HC2/HC3 leverages). ``chunk``:
    observations per chunk (HC2/HC3 hold ``chunk x p x p`` per-observation Hessians).
    ``chunked_sum(fn, data, weights, chunk, dtype)`` sums ``fn(obs, w)`` over chunks.
    """
    p = c_flat.size
    score = jax.grad(lambda cf, *o: logp(unravel(cf), *o))

    def scores(obs):
        return jax.vmap(score, in_axes=(None,) + (0,) * len(obs))(c_flat, *obs)

    if kind == "cluster":
        def piece(obs_g, w):
            *obs, g = obs_g
            s = jnp.where(w[:, None] > 0, w[:, None] * scores(tuple(obs)), 0.0)
            return jax.ops.segment_sum(s, g, num_segments=options.n_segments)

        sums = chunked_sum(piece, tuple(data) + (options.groups,), weights, chunk, c_flat.dtype)
        return sums.T @ sums

    power = score_power(options.weights_kind)
    leverage = kind in LEVERAGE_KINDS
    if leverage:
        m = _mask(options, p, c_flat.dtype)
        cov_s = cov_c * m[:, None] * m[None, :]
        nll_hessian = jax.hessian(lambda cf, *o: -logp(unravel(cf), *o))

    def piece(obs, w):
        used = w > 0
        a = w**power
        if leverage:
            h_obs = jax.vmap(nll_hessian, in_axes=(None,) + (0,) * len(obs))(c_flat, *obs)
            c = w if options.weights_kind == "variance" else jnp.ones_like(w)
            h = c * jnp.einsum("jk,ikj->i", cov_s, h_obs)
            h = jnp.where(used, h, 0.0)
            a = a / (1.0 - h) ** (1 if kind == "HC2" else 2)
        s = jnp.where(used[:, None], scores(obs), 0.0)
        return (jnp.where(used, a, 0.0)[:, None] * s).T @ s

    return chunked_sum(piece, data, weights, chunk, c_flat.dtype)


# ---------------------------------------------------------------------------------------
# Host side: options of one result, checked before compiling
# ---------------------------------------------------------------------------------------
def mean_mask_of(res) -> np.ndarray:
    """``(p,)`` bool: False for the flat parameters of the model's ``nuisance_params``."""
    source = res.problem.source
    nuisance = source.nuisance_params if isinstance(source, AbstractConditionalModel) else ()
    batch = len(res.batch_shape)
    out = []
    for path, x in jax.tree_util.tree_flatten_with_path(res.u)[0]:
        top = path[0].key if path and isinstance(path[0], jax.tree_util.DictKey) else None
        out.append(np.full(int(np.prod(x.shape[batch:])), top not in nuisance))
    return np.concatenate(out) if out else np.zeros(0, bool)


def cov_options(res, kind: str, groups=None) -> CovOptions:
    """The :class:`CovOptions` of ``res`` for ``kind``; ``ValueError``/``TypeError`` for a
    ``groups`` that does not fit (checked on the host, before compiling)."""
    if kind != "cluster":
        if groups is not None:
            raise ValueError(
                f"groups: only used with kind='cluster' (cluster-robust covariance), but "
                f"kind={kind!r}; drop groups or pass kind='cluster'."
            )
        return CovOptions(res.weights_kind, mean_mask_of(res))
    if groups is None:
        raise ValueError(
            "groups: kind='cluster' needs the cluster of each observation, e.g. "
            "res.covariance('cluster', groups=firm_id) with one label per observation."
        )
    if res.batch_shape:
        raise TypeError(
            "groups: the cluster-robust covariance works on a single fit; index the batched "
            "result first (res[i])."
        )
    labels = np.asarray(groups)
    n = res.data[0].shape[0]
    if labels.shape != (n,):
        raise ValueError(
            f"groups: expected one cluster label per observation, shape ({n},), got shape "
            f"{labels.shape}."
        )
    if labels.dtype.kind == "f" and not np.isfinite(labels).all():
        i = int(np.argmax(~np.isfinite(labels)))
        raise ValueError(f"groups: labels must be finite; groups[{i}] = {labels[i]!r}")
    _, codes = np.unique(labels, return_inverse=True)
    codes = codes.reshape(-1).astype(np.int32)
    used = np.ones(n, bool) if res.weights is None else np.asarray(res.weights) > 0
    n_clusters = np.unique(codes[used]).size
    if n_clusters < 2:
        raise ValueError(
            f"groups: all observations are in a single cluster ({labels[used][0]!r}); a "
            "cluster-robust covariance needs at least 2 clusters (and is reliable with "
            "many: tens or more)."
        )
    dtype = np.asarray(res.nll).dtype
    return CovOptions(
        res.weights_kind, mean_mask_of(res), jnp.asarray(codes), int(codes.max()) + 1,
        jnp.asarray(n_clusters, dtype),
    )


def canonical_kind(kind: str) -> str:
    """``"HC0"`` for its alias ``"sandwich"`` (one compilation and cache entry for both)."""
    return "HC0" if kind == "sandwich" else kind


def cache_key(kind: str, options: CovOptions):
    """Key of an inference cache entry: the kind, and for clusters the codes' bytes."""
    if options.groups is None:
        return kind
    return (kind, np.asarray(options.groups).tobytes())
