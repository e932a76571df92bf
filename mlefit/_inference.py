"""Inference on a fit, per result object: the cached :class:`Inference`, the status it
refines, names and Wald intervals.

The information itself (Hessian, covariances) is computed by :mod:`mlefit._information`;
profile likelihood in :mod:`mlefit._profile`, the LR test in :mod:`mlefit._lrtest`,
tables and summaries in :mod:`mlefit._report`. What the user sees (``res.param_names``,
``res.cov``, ``confint``, ``summary``, ``to_frame``) is permuted to the order written in
``init`` (``param_order_of``, mlefit/_names.py).
"""

from __future__ import annotations

import math
import statistics
import warnings
import weakref

import equinox as eqx
import jax
import numpy as np
from jax.flatten_util import ravel_pytree

from ._constraints import constrain
from ._information import (
    COVARIANCE_KINDS,
    MAX_PARAMS_FOR_STATUS,
    Inference,
    _analyse_batched,
    _analyse_compiled,
)
from ._labelled import LabelledArray
from ._model import AbstractModel
from ._names import flat_layout, key_name
from ._robust import cache_key as _cache_key
from ._robust import (
    canonical_kind,
    cov_options,
)
from ._status import Status

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
        try:
            cache[key] = compute_inference(res, kind, groups=groups)
        except jax.errors.UnexpectedTracerError as e:
            raise TypeError(LEAKED_TRACER) from e
    return cache[key]


# A fit inside jax.jit / vmap / grad whose model, penalty or fixed values close over a
# value of that transformation: the result outlives the value.
LEAKED_TRACER = (
    "this result's model, penalty or fixed values hold a value traced by a JAX "
    "transformation (jax.jit, vmap, grad) that has returned, and inference (stderr, cov, "
    "summary, the status checks) needs it. Fit with that value concrete (outside the "
    "transformation), or give it to the model as data (a column of the observations), "
    "which the result keeps; inside the transformation res.params, res.nll and "
    "res.status_code are available."
)


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
    return res.problem.finalize(treedef.unflatten(out), fill=fill, batch_shape=batch)


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


