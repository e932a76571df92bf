"""The affine-in-data interpreter behind :mod:`mlefit._suffstats`.

It runs the jaxpr of a per-observation log-density with every value tagged K (constant),
P (parameters only), D (data only), A (affine in data features with parameter-dependent
coefficients) or N (none of these), in three modes: ``collect`` (find the data-only
conditions to specialise), ``features`` (the per-observation features ``T_k(x)`` and
centred pairs) and ``reduce`` (the mean log-density from the feature means and
covariances). The rules, per primitive, are in the module docstring of
:mod:`mlefit._suffstats`.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core

__all__ = ["K", "P", "D", "A", "N", "Val", "Ctx", "NotAffine", "interpret", "reduced"]

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


class Val:
    """A tagged value. ``val``: concrete (K), traced (P), per-observation (D, features
    modes; ``None`` when reducing), the mean (A, when reducing). ``uni = (c0, c1, fid)``
    records ``value = c0 + c1 * feature[fid]`` elementwise (``None``: 0, 1, no feature)."""

    __slots__ = ("cls", "val", "uni")

    def __init__(self, cls, val=None, uni=None):
        self.cls, self.val, self.uni = cls, val, uni


class NotAffine(Exception):
    pass


class Ctx:
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
def _feature(ctx: Ctx, x: Val):
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


def _new_feature(ctx: Ctx, value):
    return _feature(ctx, Val(D, value))


def _pair(ctx: Ctx, i: int, j: int):
    """Registers the centred second moment ``mean((F_i - m_i)(F_j - m_j))``."""
    k = ctx.n_pairs
    ctx.n_pairs += 1
    if ctx.mode != "reduce":
        ctx.pairs.append((i, j))
    return ctx.covs[k] if ctx.mode == "reduce" else None


def _condition(ctx: Ctx, key, per_obs):
    """A data-only condition: collected, or its constant value (None: not uniform)."""
    if ctx.mode == "collect":
        ctx.preds[key] = per_obs
        return None
    return ctx.constants.get(key)


# ---------------------------------------------------------------------------------------
# Affine values
# ---------------------------------------------------------------------------------------
def reduced(ctx: Ctx, x: Val):
    """The value to compute with when reducing (feature means for D); None otherwise."""
    if x.cls == D:
        _, m = _feature(ctx, x)
        return m
    return x.val


def _uni(ctx: Ctx, x: Val):
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
    vals = [reduced(ctx, x) for x in ins]
    if ctx.mode == "reduce":
        return [Val(A, v, uni) for v in _bind(eqn, vals)]
    return [Val(A, None, uni) for _ in eqn.outvars]


def _product(ctx, eqn, a: Val, b: Val):
    """``(c0 + c1 d)(e0 + e1 e) = (c0 + c1 m_d)(e0 + e1 m_e) + c1 e1 cov(d, e)`` in the mean."""
    ua, ub = _uni(ctx, a), _uni(ctx, b)
    if ua is None or ub is None or ua[2] is None or ub[2] is None or not _same_shape(eqn):
        raise NotAffine
    cov = _pair(ctx, ua[2], ub[2])
    if ctx.mode != "reduce":
        return [Val(A)]
    ma, mb = reduced(ctx, a), reduced(ctx, b)
    return [Val(A, ma * mb + _one(ua[1]) * _one(ub[1]) * cov)]


def _mixed(ctx: Ctx, eqn, ins: list, key):
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
            recip = Val(D, None if ctx.mode == "reduce" else 1.0 / den.val)
            fid, m = _feature(ctx, recip)
            value = None if ctx.mode != "reduce" else num.val * m
            return [Val(A, value, (None, num.val, fid) if _same_shape(eqn) else None)]
        raise NotAffine
    if name == "square" or (name == "integer_pow" and eqn.params.get("y") == 2):
        return _product(ctx, eqn, ins[0], ins[0])
    if name == "integer_pow" and eqn.params.get("y") == 1:
        return [ins[0]]
    if name == "log":
        u = _uni(ctx, ins[0])
        if u is None or u[0] is not None or u[2] is None or not _same_shape(eqn):
            raise NotAffine
        d_val = ctx.feats[u[2]] if ctx.mode != "reduce" else None
        fid, m = _new_feature(ctx, None if d_val is None else jnp.log(d_val))
        c = None if u[1] is None else jnp.log(u[1])
        value = _add(c, m) if ctx.mode == "reduce" else None
        return [Val(A, value, (c, None, fid))]
    if name == "ne" and eqn.invars[0] is eqn.invars[1]:
        # isnan(c0 + c1 d) = isnan(c0) | isnan(c1) | isnan(d); the last is data-only.
        u = _uni(ctx, ins[0])
        if u is None or u[2] is None:
            raise NotAffine
        d_val = ctx.feats[u[2]] if ctx.mode != "reduce" else None
        const = _condition(ctx, key + ("isnan",), None if d_val is None else jnp.isnan(d_val))
        if ctx.mode == "collect":
            const = False  # structure only; the real value is fixed by specialise()
        if const is None:
            raise NotAffine
        if const:
            return [Val(K, np.ones(eqn.outvars[0].aval.shape, bool))]
        parts = [jnp.isnan(c) for c in u[:2] if c is not None]
        if not parts:
            return [Val(K, np.zeros(eqn.outvars[0].aval.shape, bool))]
        out = functools.reduce(jnp.logical_or, parts)
        return [Val(P, jnp.broadcast_to(out, eqn.outvars[0].aval.shape))]
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
                    raise NotAffine
                vals.append(np.full(eqn.invars[i].aval.shape, const))
            else:
                vals.append(x.val)
        return [Val(P, v) for v in _bind(eqn, vals)]
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
            raise NotAffine
        const = _condition(ctx, key + ("select",), pred.val)
        if ctx.mode == "collect":
            # Structure only (specialise() fixes the real branch): follow the case most
            # likely taken on data in the support, the one that depends on the data.
            rank = {A: 0, D: 1, P: 2, K: 3}
            live = [c for c in cases if c.cls != N]
            if not live:
                raise NotAffine
            return [min(live, key=lambda c: (rank[c.cls], c.uni is None))]
        if const is None:
            raise NotAffine
        return [cases[int(const)]]
    if name == "dot_general":
        if all(data_like):
            raise NotAffine
        return _affine_out(ctx, eqn, ins)
    if name in _LINEAR:
        if name == "convert_element_type" and not jnp.issubdtype(
            eqn.params["new_dtype"], jnp.inexact
        ):
            raise NotAffine
        if name in ("dynamic_slice", "pad") and any(c in (A, D) for c in cls[1:]):
            raise NotAffine
        keep = name in (
            "convert_element_type",
            "copy",
            "copy_p",
            "stop_gradient",
            "reduce_precision",
        )
        uni = _uni(ctx, ins[0]) if keep and len(ins) == 1 else None
        return _affine_out(ctx, eqn, ins, uni)
    raise NotAffine


def _affine_select(ctx, eqn, pred: Val, cases):
    if any(c.cls == N for c in cases):
        raise NotAffine
    if all(c.cls in (K, P) for c in cases) and pred.cls in (K, P):
        return [Val(P, _bind(eqn, [pred.val] + [c.val for c in cases])[0])]
    vals = [reduced(ctx, c) for c in cases]
    if ctx.mode != "reduce":
        return [Val(A)]
    out = _bind(eqn, [pred.val] + vals)[0]
    consts = [c.cls == K for c in cases]
    if ctx.custom_jvp and len(cases) == 2 and sum(consts) == 1:
        # Inside an inlined custom_jvp function (xlogy: ``where(x != 0, x log y, 0)``)
        # the custom rule differentiates the non-constant case everywhere; so do we:
        # value from the select, derivative from that case.
        other = vals[consts.index(False)]
        out = other + jax.lax.stop_gradient(out - other)
    return [Val(A, out)]


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


def _apply(ctx: Ctx, eqn, ins: list, key) -> list:
    cls = {x.cls for x in ins}
    if N in cls and eqn.primitive.name != "select_n":
        return [Val(N) for _ in eqn.outvars]
    if cls <= {K}:
        return [Val(K, v) for v in _bind(eqn, [x.val for x in ins])]
    if cls <= {K, P}:
        return [Val(P, v) for v in _bind(eqn, [x.val for x in ins])]
    if cls <= {K, D}:
        if ctx.mode == "reduce":
            return [Val(D) for _ in eqn.outvars]
        return [Val(D, v) for v in _bind(eqn, [x.val for x in ins])]
    if eqn.primitive.name in _CALLS:
        jaxpr, consts = _sub_jaxpr(eqn)
        if jaxpr is not None:
            custom = eqn.primitive.name.startswith("custom")
            ctx.custom_jvp += custom
            try:
                return interpret(ctx, jaxpr, consts, ins, key)
            finally:
                ctx.custom_jvp -= custom
    try:
        return _mixed(ctx, eqn, ins, key)
    except NotAffine:
        return [Val(N) for _ in eqn.outvars]


def interpret(ctx: Ctx, jaxpr, consts, args: list, path=()) -> list:
    env: dict[Any, Val] = {}

    def read(v):
        if isinstance(v, jex_core.Literal):
            return Val(K, v.val)
        return env[v]

    for v, c in zip(jaxpr.constvars, consts, strict=True):
        env[v] = Val(K, c)
    for v, x in zip(jaxpr.invars, args, strict=True):
        env[v] = x
    for i, eqn in enumerate(jaxpr.eqns):
        outs = _apply(ctx, eqn, [read(v) for v in eqn.invars], path + (i,))
        for v, x in zip(eqn.outvars, outs, strict=True):
            if not isinstance(v, jex_core.DropVar):
                env[v] = x
    return [read(v) for v in jaxpr.outvars]
