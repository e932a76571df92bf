"""Sufficient statistics found automatically: the mean log-density from feature means.

When the per-observation log-density is affine in some data features,

    log p(x; w) = c(w) + sum_k a_k(w) . T_k(x)
        + sum_(k,l) b_kl(w) (T_k(x) - mean T_k)(T_l(x) - mean T_l)   (pairs, see below)

(every exponential family: Normal, Gamma, Exponential, Poisson, Beta, LogNormal, ...),
the mean NLL needs the data only through ``mean_i T_k(x_i)`` (and a few centred second
moments), computed once per data set. Each optimisation step then costs O(p^2)
scalar operations instead of a pass over the data, which is what makes thousands of
small fits fast.

Nothing is asked of the user: the model's jaxpr (one observation) is interpreted with
every value tagged K (constant), P (parameters only), D (data only) or A (affine in
data features with parameter-dependent coefficients). An operation on A/D values with
P coefficients that keeps the result affine (``+ - neg``, ``*`` and ``/`` by P, linear
shape operations, ``select`` on a P condition, ``dot_general`` with P) stays A; a
product of two affine values ``(c0 + c1 d)(e0 + e1 e)`` and ``log(c1 d)`` are
rewritten (``... + c1 e1 cov(d, e)``, ``log c1 + log d``). A ``select``/``isnan`` on a
data-only condition (``x >= 0`` in ``jax.scipy.stats.gamma.logpdf``) is specialised to
its value when it is the same for every observation used (checked on the data, before
compiling). Anything else makes the value non-affine; if the log-density is, the model
is fitted from the raw observations as usual. The reduced NLL equals the direct one up
to the order of floating-point sums (tests: 1e-12 relative).
"""

from __future__ import annotations

import functools
import itertools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._affine import Ctx, D, N, P, Val, interpret, reduced

__all__ = ["plan_for", "specialise", "specialise_traced", "suffstats", "reduced_mean_loglik"]

# ---------------------------------------------------------------------------------------
# Plans
# ---------------------------------------------------------------------------------------
class Plan:
    """The jaxpr of ``logp`` (one observation) and what its reduction needs."""

    def __init__(self, closed, n_params: int, conditions: tuple):
        self.closed = closed
        self.n_params = n_params
        self.conditions = conditions  # keys of data-only conditions to specialise
        self._specialised: dict = {}

    def run(self, ctx, params: list, obs: tuple) -> Val:
        args = [Val(P, p) for p in params] + [Val(D, o) for o in obs]
        (out,) = interpret(ctx, self.closed.jaxpr, self.closed.consts, args)
        return out

    def collect(self, params: list, obs: tuple) -> dict:
        ctx = Ctx("collect")
        self.run(ctx, params, obs)
        return ctx.preds


class Specialised(NamedTuple):
    """A plan with its data-only conditions fixed: features, centred pairs, reduced mean."""

    plan: Plan
    constants: tuple  # ((key, bool), ...)
    pairs: tuple  # ((i, j), ...)
    param_avals: tuple

    def __hash__(self):
        return id(self)

    def __eq__(self, other):
        return self is other

    def features(self, *obs) -> list:
        ctx = Ctx("features", dict(self.constants))
        dummy = [jnp.zeros(a.shape, a.dtype) for a in self.param_avals]
        out = self.plan.run(ctx, dummy, obs)
        reduced(ctx, out)
        return ctx.feats

    def mean_loglik(self, params: list, means: list, covs: list):
        ctx = Ctx("reduce", dict(self.constants), means, covs)
        n_obs_args = len(self.plan.closed.jaxpr.invars) - self.plan.n_params
        out = self.plan.run(ctx, params, (None,) * n_obs_args)
        return reduced(ctx, out)


def _aval(x):
    return jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x))


def _probe(plan: Plan, mode: str, constants=None) -> dict:
    """Traces one run abstractly; returns the output class, pairs and condition keys."""
    found = {}

    def run(params, *obs):
        ctx = Ctx(mode, constants)
        out = plan.run(ctx, params, obs)
        reduced(ctx, out)
        found.update(cls=out.cls, pairs=tuple(ctx.pairs), conditions=tuple(ctx.preds))
        return jnp.zeros(())

    avals = plan.closed.in_avals
    jax.eval_shape(run, list(avals[: plan.n_params]), *avals[plan.n_params :])
    return found


@functools.lru_cache(maxsize=64)
def _plan_cached(logp, treedef, param_avals: tuple, obs_avals: tuple):
    def flat_logp(leaves, *obs):
        return logp(jax.tree_util.tree_unflatten(treedef, leaves), *obs)

    try:
        closed = jax.make_jaxpr(flat_logp)(list(param_avals), *obs_avals)
    except Exception:  # noqa: BLE001 - a model we cannot trace is fitted the usual way
        return None
    if len(closed.jaxpr.outvars) != 1 or closed.jaxpr.outvars[0].aval.shape != ():
        return None
    plan = Plan(closed, len(param_avals), ())
    try:
        found = _probe(plan, "collect")
    except Exception:  # noqa: BLE001 - an operation the interpreter cannot run
        return None
    if found["cls"] == N:
        return None
    plan.conditions = found["conditions"]
    return plan


def plan_for(logp, params, obs_avals: tuple) -> Plan | None:
    """The reduction plan of ``logp`` at these parameter and observation shapes, or None.

    ``params``: constrained parameters (a pytree, only shapes matter); ``obs_avals``:
    shapes of ONE observation per data array. Cached per model and shapes.
    """
    leaves, treedef = jax.tree_util.tree_flatten(params)
    try:
        hash(logp)
    except TypeError:
        return None
    return _plan_cached(
        logp,
        treedef,
        tuple(_aval(x) for x in leaves),
        tuple(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in obs_avals),
    )


@functools.partial(jax.jit, static_argnums=(0, 3))
def _conditions_on_data(plan: Plan, data: tuple, weights, batched: bool):
    """``(2, k)`` booleans: for each data-only condition, all and any over the used
    observations of all data sets."""
    if not batched:  # one data set: add its data-set axis here, not eagerly
        data = tuple(a[None] for a in data)
        weights = None if weights is None else weights[None]
    dummy = [jnp.zeros(a.shape, a.dtype) for a in plan.closed.in_avals[: plan.n_params]]
    per_obs = jax.vmap(jax.vmap(lambda *o: plan.collect(dummy, o)))(*data)
    used = None if weights is None else weights > 0
    alls, anys = [], []
    for k in plan.conditions:
        v = per_obs[k].reshape(per_obs[k].shape[:2] + (-1,))
        if used is not None:
            alls.append(jnp.all(jnp.where(used[..., None], v, True)))
            anys.append(jnp.any(jnp.where(used[..., None], v, False)))
        else:
            alls.append(jnp.all(v))
            anys.append(jnp.any(v))
    return jnp.stack([jnp.stack(alls), jnp.stack(anys)])


def specialise(plan: Plan, data: tuple, weights, batched: bool = True) -> Specialised | None:
    """Fixes the data-only conditions of ``plan`` from the data (``(B, n, ...)`` arrays,
    or ``(n, ...)`` for one data set with ``batched=False``).

    Returns None when a condition differs between used observations or the log-density
    is not affine in data features with the conditions fixed.
    """
    constants = {}
    if plan.conditions:
        flags = np.asarray(_conditions_on_data(plan, data, weights, batched))
        for k, all_, any_ in zip(plan.conditions, flags[0], flags[1], strict=True):
            if bool(all_) == bool(any_):
                constants[k] = bool(all_)
    key = tuple(sorted(constants.items()))
    if key in plan._specialised:
        return plan._specialised[key]
    param_avals = tuple(plan.closed.in_avals[: plan.n_params])
    try:
        found = _probe(plan, "features", constants)
    except Exception:  # noqa: BLE001
        found = {"cls": N}
    spec = None if found["cls"] == N else Specialised(plan, key, found["pairs"], param_avals)
    plan._specialised[key] = spec
    return spec


def suffstats(spec: Specialised, data: tuple, weights):
    """Feature means and centred pair moments of ONE data set (weighted; zero weight = unused)."""
    feats = jax.vmap(spec.features)(*data)
    n = data[0].shape[0]
    dtype = jnp.result_type(*[f.dtype for f in feats], float) if feats else jnp.result_type(float)
    w = jnp.ones((n,), dtype) if weights is None else weights.astype(dtype)
    total = jnp.sum(w)

    def wmean(v):
        ww = w.reshape((n,) + (1,) * (v.ndim - 1))
        return jnp.sum(jnp.where(ww > 0, ww * v, 0.0), axis=0) / total

    means = [wmean(f) for f in feats]
    covs = [wmean((feats[i] - means[i]) * (feats[j] - means[j])) for i, j in spec.pairs]
    return means, covs


def reduced_mean_loglik(spec: Specialised, params, stats):
    """``mean_i log p(obs_i; params)`` from the sufficient statistics of one data set."""
    means, covs = stats
    return spec.mean_loglik(jax.tree_util.tree_leaves(params), means, covs)



def specialise_traced(plan: Plan, data: tuple, weights, probe_params: list):
    """``(specs, index)`` for TRACED data, or ``(None, None)``: the data-only conditions
    cannot be read on the host, so every way of fixing them that can hold is prepared
    and the trace picks one.

    Of the ``2^k`` ways to fix the ``k <= 3`` conditions, ``specs`` keeps those whose
    reduced mean log-density is finite at a probe point (``probe_params``, feature means
    and centred moments 1): a way that sends an observation to ``-inf`` or NaN (a support
    check, ``isnan(x)``) cannot be the data's. ``index`` (traced) is the position in
    ``specs`` of the way every used observation meets, or ``-1`` where none does (the
    conditions differ between observations, or select a non-finite branch): the caller
    then makes the objective NaN. Use it where the model's support makes conditions
    constant on valid data (mlefit's ready-made models); a piecewise log-density whose
    observations straddle a condition would get NaN instead of a fit.
    """
    keys = plan.conditions
    if not keys or len(keys) > 3:
        return None, None
    param_avals = tuple(plan.closed.in_avals[: plan.n_params])
    obs = tuple(jax.ShapeDtypeStruct((2,) + a.shape[1:], a.dtype) for a in data)
    specs = []
    for combo in itertools.product((False, True), repeat=len(keys)):
        key = tuple(sorted(zip(keys, combo, strict=True)))
        try:
            found = _probe(plan, "features", dict(key))
        except Exception:  # noqa: BLE001 - an unusable way
            continue
        if found["cls"] == N:
            continue
        spec = Specialised(plan, key, found["pairs"], param_avals)
        means, covs = jax.eval_shape(lambda *o, s=spec: suffstats(s, o, None), *obs)
        with jax.ensure_compile_time_eval():
            value = spec.mean_loglik(
                [jnp.asarray(p, a.dtype) for p, a in zip(probe_params, param_avals, strict=True)],
                [jnp.ones(m.shape, m.dtype) for m in means],
                [jnp.ones(c.shape, c.dtype) for c in covs],
            )
            if bool(jnp.all(jnp.isfinite(value))):
                specs.append(spec)
    if not specs:
        return None, None
    flags = _conditions_on_data(plan, data, weights, False)
    constant = jnp.all(flags[0] == flags[1])
    index = jnp.asarray(-1, jnp.int32)
    for j, spec in reversed(list(enumerate(specs))):
        wanted = jnp.asarray([dict(spec.constants)[k] for k in keys])
        index = jnp.where(constant & jnp.all(flags[0] == wanted), j, index)
    return tuple(specs), index
