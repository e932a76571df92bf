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
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core

__all__ = ["plan_for", "specialise", "specialise_traced", "suffstats", "reduced_mean_loglik"]

K, P, D, A, N = "K", "P", "D", "A", "N"

_CALLS = {
    "pjit",
    "jit",
    "closed_call",
    "core_call",
    "remat",
    "checkpoint",
    "custom_jvp_call",
    "custom_vjp_call",
    "custom_vjp_call_jaxpr",
}
_ADDITIVE = {"add", "sub", "add_any"}
# Linear in their (first) array operand, other operands constant or parameters.
_LINEAR = {
    "reshape",
    "broadcast_in_dim",
    "squeeze",
    "expand_dims",
    "transpose",
    "reduce_sum",
    "slice",
    "rev",
    "copy",
    "copy_p",
    "convert_element_type",
    "reduce_precision",
    "stop_gradient",
    "dynamic_slice",
    "pad",
    "concatenate",
}


class _Val:
    """A tagged value. ``val``: concrete (K), traced (P), per-observation (D, features
    modes; ``None`` when reducing), the mean (A, when reducing). ``uni = (c0, c1, fid)``
    records ``value = c0 + c1 * feature[fid]`` elementwise (``None``: 0, 1, no feature)."""

    __slots__ = ("cls", "val", "uni")

    def __init__(self, cls, val=None, uni=None):
        self.cls, self.val, self.uni = cls, val, uni


class _NotAffine(Exception):
    pass


class _Ctx:
    def __init__(self, mode: str, constants=None, means=None, covs=None):
        self.mode = mode  # "collect", "features" or "reduce"
        self.constants = constants or {}
        self.preds: dict = {}
        self.feats: list = []  # collect/features modes: per-observation values
        self.pairs: list = []
        self.means, self.covs = means, covs
        self.n_feats = 0
        self.n_pairs = 0
        self.memo: dict = {}
        self.custom_jvp = 0  # depth of inlined custom_jvp functions


# ---------------------------------------------------------------------------------------
# Registration of features, centred pairs and data-only conditions
# ---------------------------------------------------------------------------------------
def _feature(ctx: _Ctx, x: _Val):
    """Registers a D value as a feature; returns ``(fid, mean or None)``."""
    key = id(x)
    if key in ctx.memo:
        fid = ctx.memo[key][0]
    else:
        fid = ctx.n_feats
        ctx.n_feats += 1
        ctx.memo[key] = (fid, x)  # keeps x alive, so its id is not reused
        if ctx.mode != "reduce":
            ctx.feats.append(x.val)
    return fid, (ctx.means[fid] if ctx.mode == "reduce" else None)


def _new_feature(ctx: _Ctx, value):
    return _feature(ctx, _Val(D, value))


def _pair(ctx: _Ctx, i: int, j: int):
    """Registers the centred second moment ``mean((F_i - m_i)(F_j - m_j))``."""
    k = ctx.n_pairs
    ctx.n_pairs += 1
    if ctx.mode != "reduce":
        ctx.pairs.append((i, j))
    return ctx.covs[k] if ctx.mode == "reduce" else None


def _condition(ctx: _Ctx, key, per_obs):
    """A data-only condition: collected, or its constant value (None: not uniform)."""
    if ctx.mode == "collect":
        ctx.preds[key] = per_obs
        return None
    return ctx.constants.get(key)


# ---------------------------------------------------------------------------------------
# Affine values
# ---------------------------------------------------------------------------------------
def _reduced(ctx: _Ctx, x: _Val):
    """The value to compute with when reducing (feature means for D); None otherwise."""
    if x.cls == D:
        _, m = _feature(ctx, x)
        return m
    return x.val


def _uni(ctx: _Ctx, x: _Val):
    """``(c0, c1, fid)`` of x, or None when x is affine in several features."""
    if x.cls in (K, P):
        return (x.val, None, None)
    if x.cls == D:
        fid, _ = _feature(ctx, x)
        return (None, None, fid)
    return x.uni


def _add(a, b):
    if a is None:
        return b
    if b is None:
        return a
    return a + b


def _mul(a, b):
    if a is None:
        return b
    if b is None:
        return a
    return a * b


def _one(x):
    return 1.0 if x is None else x


def _same_shape(eqn) -> bool:
    shapes = {tuple(getattr(v.aval, "shape", ())) for v in eqn.invars + eqn.outvars}
    return len(shapes) == 1


def _bind(eqn, vals):
    params = eqn.primitive.get_bind_params(eqn.params)
    with eqn.ctx.manager:
        out = eqn.primitive.bind(*vals, **params)
    return out if eqn.primitive.multiple_results else [out]


def _affine_out(ctx, eqn, ins, uni=None):
    """Result A of a linear operation: evaluate it on the reduced inputs."""
    vals = [_reduced(ctx, x) for x in ins]
    if ctx.mode == "reduce":
        return [_Val(A, v, uni) for v in _bind(eqn, vals)]
    return [_Val(A, None, uni) for _ in eqn.outvars]


def _product(ctx, eqn, a: _Val, b: _Val):
    """``(c0 + c1 d)(e0 + e1 e) = (c0 + c1 m_d)(e0 + e1 m_e) + c1 e1 cov(d, e)`` in the mean."""
    ua, ub = _uni(ctx, a), _uni(ctx, b)
    if ua is None or ub is None or ua[2] is None or ub[2] is None or not _same_shape(eqn):
        raise _NotAffine
    cov = _pair(ctx, ua[2], ub[2])
    if ctx.mode != "reduce":
        return [_Val(A)]
    ma, mb = _reduced(ctx, a), _reduced(ctx, b)
    return [_Val(A, ma * mb + _one(ua[1]) * _one(ub[1]) * cov)]


def _mixed(ctx: _Ctx, eqn, ins: list, key):
    """Rules for an operation whose inputs mix data features with parameters."""
    name = eqn.primitive.name
    cls = [x.cls for x in ins]
    data_like = [c in (A, D) for c in cls]

    if name in _ADDITIVE:
        a, b = ins
        uni = None
        if _same_shape(eqn):
            ua, ub = _uni(ctx, a), _uni(ctx, b)
            if (
                ua is not None
                and ub is not None
                and (ua[2] is None or ub[2] is None or ua[2] == ub[2])
            ):
                sign = -1.0 if name == "sub" else 1.0
                c0 = _add(ua[0], None if ub[0] is None else sign * ub[0])
                if ua[2] is not None and ub[2] is not None:
                    c1, fid = _one(ua[1]) + sign * _one(ub[1]), ua[2]
                elif ua[2] is not None:
                    c1, fid = ua[1], ua[2]
                else:
                    c1, fid = (None if sign > 0 else -1.0) if ub[1] is None else sign * ub[1], ub[2]
                uni = (c0, c1, fid)
        return _affine_out(ctx, eqn, ins, uni)
    if name == "neg":
        u = _uni(ctx, ins[0]) if _same_shape(eqn) else None
        uni = None if u is None else (None if u[0] is None else -u[0], -_one(u[1]), u[2])
        return _affine_out(ctx, eqn, ins, uni)
    if name == "mul":
        if all(data_like):
            return _product(ctx, eqn, *ins)
        j = 0 if data_like[0] else 1
        x, c = ins[j], ins[1 - j]
        u = _uni(ctx, x) if _same_shape(eqn) or c.val is None or np.ndim(c.val) == 0 else None
        uni = None if u is None else (_mul(u[0], c.val), _mul(u[1], c.val), u[2])
        return _affine_out(ctx, eqn, ins, uni)
    if name == "div":
        num, den = ins
        if den.cls in (K, P):
            u = _uni(ctx, num) if _same_shape(eqn) else None
            uni = None
            if u is not None:
                inv = 1.0 / den.val
                uni = (None if u[0] is None else u[0] * inv, _one(u[1]) * inv, u[2])
            return _affine_out(ctx, eqn, ins, uni)
        if den.cls == D and num.cls in (K, P):
            recip = _Val(D, None if ctx.mode == "reduce" else 1.0 / den.val)
            fid, m = _feature(ctx, recip)
            value = None if ctx.mode != "reduce" else num.val * m
            return [_Val(A, value, (None, num.val, fid) if _same_shape(eqn) else None)]
        raise _NotAffine
    if name == "square" or (name == "integer_pow" and eqn.params.get("y") == 2):
        return _product(ctx, eqn, ins[0], ins[0])
    if name == "integer_pow" and eqn.params.get("y") == 1:
        return [ins[0]]
    if name == "log":
        u = _uni(ctx, ins[0])
        if u is None or u[0] is not None or u[2] is None or not _same_shape(eqn):
            raise _NotAffine
        d_val = ctx.feats[u[2]] if ctx.mode != "reduce" else None
        fid, m = _new_feature(ctx, None if d_val is None else jnp.log(d_val))
        c = None if u[1] is None else jnp.log(u[1])
        value = _add(c, m) if ctx.mode == "reduce" else None
        return [_Val(A, value, (c, None, fid))]
    if name == "ne" and eqn.invars[0] is eqn.invars[1]:
        # isnan(c0 + c1 d) = isnan(c0) | isnan(c1) | isnan(d); the last is data-only.
        u = _uni(ctx, ins[0])
        if u is None or u[2] is None:
            raise _NotAffine
        d_val = ctx.feats[u[2]] if ctx.mode != "reduce" else None
        const = _condition(ctx, key + ("isnan",), None if d_val is None else jnp.isnan(d_val))
        if ctx.mode == "collect":
            const = False  # structure only; the real value is fixed by specialise()
        if const is None:
            raise _NotAffine
        if const:
            return [_Val(K, np.ones(eqn.outvars[0].aval.shape, bool))]
        parts = [jnp.isnan(c) for c in u[:2] if c is not None]
        if not parts:
            return [_Val(K, np.zeros(eqn.outvars[0].aval.shape, bool))]
        out = functools.reduce(jnp.logical_or, parts)
        return [_Val(P, jnp.broadcast_to(out, eqn.outvars[0].aval.shape))]
    if name in ("or", "and", "xor") and set(cls) <= {K, P, D}:
        # A parameter condition combined with a data-only one (``p != 0 | isnan(x)`` in
        # xlogy): the data part is fixed to its value when it is the same everywhere.
        vals = []
        for i, x in enumerate(ins):
            if x.cls == D:
                const = _condition(ctx, key + ("bool", i), x.val)
                if ctx.mode == "collect":
                    const = False
                if const is None:
                    raise _NotAffine
                vals.append(np.full(eqn.invars[i].aval.shape, const))
            else:
                vals.append(x.val)
        return [_Val(P, v) for v in _bind(eqn, vals)]
    if name == "select_n":
        pred, cases = ins[0], ins[1:]
        if pred.cls == K:
            flat = np.asarray(pred.val).reshape(-1)
            if flat.size and np.all(flat == flat[0]):
                return [cases[int(flat[0])]]
            return _affine_select(ctx, eqn, pred, cases)
        if pred.cls == P:
            return _affine_select(ctx, eqn, pred, cases)
        if pred.cls != D or eqn.invars[0].aval.dtype != jnp.bool_:
            raise _NotAffine
        const = _condition(ctx, key + ("select",), pred.val)
        if ctx.mode == "collect":
            # Structure only (specialise() fixes the real branch): follow the case most
            # likely taken on data in the support, the one that depends on the data.
            rank = {A: 0, D: 1, P: 2, K: 3}
            live = [c for c in cases if c.cls != N]
            if not live:
                raise _NotAffine
            return [min(live, key=lambda c: (rank[c.cls], c.uni is None))]
        if const is None:
            raise _NotAffine
        return [cases[int(const)]]
    if name == "dot_general":
        if all(data_like):
            raise _NotAffine
        return _affine_out(ctx, eqn, ins)
    if name in _LINEAR:
        if name == "convert_element_type" and not jnp.issubdtype(
            eqn.params["new_dtype"], jnp.inexact
        ):
            raise _NotAffine
        if name in ("dynamic_slice", "pad") and any(c in (A, D) for c in cls[1:]):
            raise _NotAffine
        keep = name in (
            "convert_element_type",
            "copy",
            "copy_p",
            "stop_gradient",
            "reduce_precision",
        )
        uni = _uni(ctx, ins[0]) if keep and len(ins) == 1 else None
        return _affine_out(ctx, eqn, ins, uni)
    raise _NotAffine


def _affine_select(ctx, eqn, pred: _Val, cases):
    if any(c.cls == N for c in cases):
        raise _NotAffine
    if all(c.cls in (K, P) for c in cases) and pred.cls in (K, P):
        return [_Val(P, _bind(eqn, [pred.val] + [c.val for c in cases])[0])]
    vals = [_reduced(ctx, c) for c in cases]
    if ctx.mode != "reduce":
        return [_Val(A)]
    out = _bind(eqn, [pred.val] + vals)[0]
    consts = [c.cls == K for c in cases]
    if ctx.custom_jvp and len(cases) == 2 and sum(consts) == 1:
        # Inside an inlined custom_jvp function (xlogy: ``where(x != 0, x log y, 0)``)
        # the custom rule differentiates the non-constant case everywhere; so do we:
        # value from the select, derivative from that case.
        other = vals[consts.index(False)]
        out = other + jax.lax.stop_gradient(out - other)
    return [_Val(A, out)]


# ---------------------------------------------------------------------------------------
# The interpreter
# ---------------------------------------------------------------------------------------
def _sub_jaxpr(eqn):
    sub = eqn.params.get("jaxpr") or eqn.params.get("call_jaxpr") or eqn.params.get("fun_jaxpr")
    if sub is None:
        return None, ()
    if hasattr(sub, "jaxpr"):
        return sub.jaxpr, sub.consts
    return sub, ()


def _apply(ctx: _Ctx, eqn, ins: list, key) -> list:
    cls = {x.cls for x in ins}
    if N in cls and eqn.primitive.name != "select_n":
        return [_Val(N) for _ in eqn.outvars]
    if cls <= {K}:
        return [_Val(K, v) for v in _bind(eqn, [x.val for x in ins])]
    if cls <= {K, P}:
        return [_Val(P, v) for v in _bind(eqn, [x.val for x in ins])]
    if cls <= {K, D}:
        if ctx.mode == "reduce":
            return [_Val(D) for _ in eqn.outvars]
        return [_Val(D, v) for v in _bind(eqn, [x.val for x in ins])]
    if eqn.primitive.name in _CALLS:
        jaxpr, consts = _sub_jaxpr(eqn)
        if jaxpr is not None:
            custom = eqn.primitive.name.startswith("custom")
            ctx.custom_jvp += custom
            try:
                return _interpret(ctx, jaxpr, consts, ins, key)
            finally:
                ctx.custom_jvp -= custom
    try:
        return _mixed(ctx, eqn, ins, key)
    except _NotAffine:
        return [_Val(N) for _ in eqn.outvars]


def _interpret(ctx: _Ctx, jaxpr, consts, args: list, path=()) -> list:
    env: dict[Any, _Val] = {}

    def read(v):
        if isinstance(v, jex_core.Literal):
            return _Val(K, v.val)
        return env[v]

    for v, c in zip(jaxpr.constvars, consts, strict=True):
        env[v] = _Val(K, c)
    for v, x in zip(jaxpr.invars, args, strict=True):
        env[v] = x
    for i, eqn in enumerate(jaxpr.eqns):
        outs = _apply(ctx, eqn, [read(v) for v in eqn.invars], path + (i,))
        for v, x in zip(eqn.outvars, outs, strict=True):
            if not isinstance(v, jex_core.DropVar):
                env[v] = x
    return [read(v) for v in jaxpr.outvars]


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

    def run(self, ctx, params: list, obs: tuple) -> _Val:
        args = [_Val(P, p) for p in params] + [_Val(D, o) for o in obs]
        (out,) = _interpret(ctx, self.closed.jaxpr, self.closed.consts, args)
        return out

    def collect(self, params: list, obs: tuple) -> dict:
        ctx = _Ctx("collect")
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
        ctx = _Ctx("features", dict(self.constants))
        dummy = [jnp.zeros(a.shape, a.dtype) for a in self.param_avals]
        out = self.plan.run(ctx, dummy, obs)
        _reduced(ctx, out)
        return ctx.feats

    def mean_loglik(self, params: list, means: list, covs: list):
        ctx = _Ctx("reduce", dict(self.constants), means, covs)
        n_obs_args = len(self.plan.closed.jaxpr.invars) - self.plan.n_params
        out = self.plan.run(ctx, params, (None,) * n_obs_args)
        return _reduced(ctx, out)


def _aval(x):
    return jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x))


def _probe(plan: Plan, mode: str, constants=None) -> dict:
    """Traces one run abstractly; returns the output class, pairs and condition keys."""
    found = {}

    def run(params, *obs):
        ctx = _Ctx(mode, constants)
        out = plan.run(ctx, params, obs)
        _reduced(ctx, out)
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
