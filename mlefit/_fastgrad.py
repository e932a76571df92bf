"""The fast full-batch gradient: the same derivative, in a formulation XLA runs well.

Reverse-mode autodiff of a model written for ONE observation and vmapped turns every
``x @ w`` into a product that contracts the observation axis: ``r @ X`` (or
``X.T @ r``), with ``r`` the per-observation cotangent. On CPU, XLA runs that product
at a fraction of the memory bandwidth (measured, 1e6 x 33 float64: ``X @ w`` 14 ms,
``r @ X`` 36 ms, ``X.T @ r`` 150 ms, ``sum(X * r[:, None], 0)`` 18 ms), and
when it is written as a broadcast-multiply-reduce instead, XLA fuses the elementwise
work producing ``r`` into the reduction and recomputes it once per column.

:func:`fast_objective` keeps the user's model untouched and rewrites the reverse-mode
program instead: it traces ``value_and_grad`` of the loss to a jaxpr and replaces each
``dot_general`` that contracts the observation axis, with one operand that holds one
value per observation (the cotangent), by

    ``sum_i A[i, ...] * optimization_barrier(S)[i, ...]``

(the barrier materialises ``S``, ``n_obs`` numbers, so nothing is recomputed inside the
reduction). Every other equation is evaluated as traced. The result is the same
derivative up to the order of a floating-point sum (about 1e-14 relative in float64).

The objective is a ``jax.custom_jvp`` function whose tangent rule returns
``<grad, du>`` with ``grad`` from the rewritten program, so:

- ``jax.grad`` / ``jax.value_and_grad`` / optax line searches use the fast gradient;
- forward mode and higher derivatives (``jax.hessian``, Hessian-vector products)
  differentiate the rewritten gradient program itself, which is an ordinary JAX
  function of the parameters: exact, and no slower than plain forward-over-reverse;
- ``jit``, ``vmap`` (the rule is traced at the per-data-set shapes) and sharded
  inputs work as for any JAX function;
- derivatives with respect to the data, weights or values closed over by the model
  fall back to plain autodiff (the custom rule only handles the parameters).

The rewrite is used on the CPU backend, for at least ``MIN_OBS`` observations, and only
when the traced gradient has such a product; otherwise the plain loss is returned
unchanged. ``MLEFIT_FASTGRAD=0`` in the environment turns it off (for comparisons).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import core as jex_core

__all__ = ["fast_objective", "fast_value_and_grad", "rewrite_count", "MIN_OBS", "MAX_THIN"]

# Below this many observations the formulation of the gradient does not matter
# (a 2048 x 33 float64 matrix is 0.5 MB, in cache either way).
MIN_OBS = 2048
# The cotangent operand may have at most this many entries per observation. Measured
# (XLA:CPU, 2 cores, float64): with one entry, sum(X * r[:, None], 0) is a fused 2-D
# kernel 3x faster than the dot; with 2-10 entries the 3-D broadcast-reduce is 1.5-2x
# SLOWER than XLA's matrix product (softmax), so only vector cotangents are rewritten.
MAX_THIN = 1

_CALL_PRIMITIVES = ("pjit", "jit", "closed_call", "core_call")


def enabled() -> bool:
    """Whether the rewrite is on: CPU backend and ``MLEFIT_FASTGRAD`` not set to ``0``."""
    if os.environ.get("MLEFIT_FASTGRAD", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    return jax.default_backend() == "cpu"


def _n_obs(args) -> int | None:
    leaves = [x for x in jax.tree_util.tree_leaves(args) if jnp.ndim(x) >= 1]
    return int(jnp.shape(leaves[0])[0]) if leaves else None


def _aval(x):
    a = jax.typeof(x) if hasattr(jax, "typeof") else jax.core.get_aval(x)
    return jax.ShapeDtypeStruct(a.shape, a.dtype, weak_type=getattr(a, "weak_type", False))


# ---------------------------------------------------------------------------------
# The rewrite of one dot_general


def _thin_side(eqn, n_obs: int) -> int | None:
    """Index (0 lhs, 1 rhs) of the thin operand to barrier, or None to leave the dot."""
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lhs, rhs = (v.aval for v in eqn.invars)
    pairs = zip(lc, rc, strict=True)
    if not any(lhs.shape[a] == n_obs and rhs.shape[b] == n_obs for a, b in pairs):
        return None
    if not (jnp.issubdtype(lhs.dtype, jnp.inexact) and jnp.issubdtype(rhs.dtype, jnp.inexact)):
        return None
    free = []
    for aval, c, b in ((lhs, lc, lb), (rhs, rc, rb)):
        free.append(math.prod(d for i, d in enumerate(aval.shape) if i not in c and i not in b))
    thin = 0 if free[0] <= free[1] else 1
    return thin if free[thin] <= MAX_THIN else None


def _broadcast_reduce(lhs, rhs, dimension_numbers, thin: int, out_dtype):
    """``dot_general(lhs, rhs)`` as a broadcast-multiply-reduce in the wide operand's layout.

    The thin operand (its free axes all of size 1: a value per observation) is broadcast
    to the wide operand's shape, in the wide operand's memory order (no transpose of the
    big array, and a 2-D multiply-reduce that XLA:CPU emits as one fused, vectorised
    kernel); the contracting axes are summed; the small result is put in
    ``dot_general``'s output order (batch, lhs free, rhs free).
    """
    (lc, rc), (lb, rb) = dimension_numbers
    wide, thin_op = (rhs, lhs) if thin == 0 else (lhs, rhs)
    wc, tc = (rc, lc) if thin == 0 else (lc, rc)
    wb, tb = (rb, lb) if thin == 0 else (lb, rb)
    t_free = [i for i in range(thin_op.ndim) if i not in tc and i not in tb]
    w_free = [i for i in range(wide.ndim) if i not in wc and i not in wb]
    thin_op = lax.optimization_barrier(thin_op.astype(out_dtype))
    kept = [i for i in range(thin_op.ndim) if i not in t_free]
    thin_sq = thin_op.reshape(tuple(thin_op.shape[i] for i in kept))
    pos = dict(zip(tc, wc, strict=True)) | dict(zip(tb, wb, strict=True))
    thin_b = lax.broadcast_in_dim(thin_sq, wide.shape, tuple(pos[i] for i in kept))
    out = jnp.sum(wide.astype(out_dtype) * thin_b, axis=tuple(wc))
    # Axes of `out`: the wide operand's batch and free axes, in its order.
    labels = [("b", list(wb).index(i)) if i in wb else ("w", i)
              for i in range(wide.ndim) if i not in wc]
    order = [("b", k) for k in range(len(wb))] + [("w", i) for i in w_free]
    perm = tuple(labels.index(lab) for lab in order)
    if perm != tuple(range(out.ndim)):
        out = jnp.transpose(out, perm)
    nb, ones = len(wb), (1,) * len(t_free)
    rest = ones + out.shape[nb:] if thin == 0 else out.shape[nb:] + ones
    return out.reshape(out.shape[:nb] + rest)


# ---------------------------------------------------------------------------------
# An interpreter that evaluates a jaxpr with the rewrite


def _count(jaxpr, n_obs: int) -> int:
    n = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general" and _thin_side(eqn, n_obs) is not None:
            n += 1
        elif eqn.primitive.name in _CALL_PRIMITIVES:
            sub = eqn.params.get("jaxpr") or eqn.params.get("call_jaxpr")
            if sub is not None:
                n += _count(getattr(sub, "jaxpr", sub), n_obs)
    return n


def _eval(jaxpr, consts, args, n_obs: int):
    env: dict[Any, Any] = {}

    def read(v):
        return v.val if isinstance(v, jex_core.Literal) else env[v]

    for v, x in zip(jaxpr.constvars, consts, strict=True):
        env[v] = x
    for v, x in zip(jaxpr.invars, args, strict=True):
        env[v] = x
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        name = eqn.primitive.name
        thin = _thin_side(eqn, n_obs) if name == "dot_general" else None
        if thin is not None:
            p = eqn.params
            out_dtype = p.get("preferred_element_type") or eqn.outvars[0].aval.dtype
            outs = [_broadcast_reduce(*invals, p["dimension_numbers"], thin, out_dtype)]
        elif name in _CALL_PRIMITIVES and (p := eqn.params.get("jaxpr")) is not None and hasattr(
            p, "consts"
        ):
            outs = _eval(p.jaxpr, p.consts, invals, n_obs)
        else:
            params = eqn.primitive.get_bind_params(eqn.params)
            with eqn.ctx.manager:
                outs = eqn.primitive.bind(*invals, **params)
            if not eqn.primitive.multiple_results:
                outs = [outs]
        for v, x in zip(eqn.outvars, outs, strict=True):
            if not isinstance(v, jex_core.DropVar):
                env[v] = x
    return [read(v) for v in jaxpr.outvars]


def _vg_jaxpr(fun, u, args):
    return jax.make_jaxpr(jax.value_and_grad(fun))(
        jax.tree.map(_aval, u), *jax.tree.map(_aval, args)
    )


def rewrite_count(fun: Callable, u, *args) -> int:
    """Number of observation-axis products the rewrite replaces in ``value_and_grad(fun)``.

    ``0`` means :func:`fast_objective` returns the plain loss (nothing to gain).
    """
    n_obs = _n_obs(args)
    if n_obs is None:
        return 0
    return _count(_vg_jaxpr(fun, u, args).jaxpr, n_obs)


def fast_value_and_grad(fun: Callable, u, *args, _closed=None):
    """``(fun(u, *args), d fun / d u)`` through the rewritten reverse-mode program.

    Same values as ``jax.value_and_grad(fun)(u, *args)`` up to summation order.
    """
    n_obs = _n_obs(args)
    closed = _vg_jaxpr(fun, u, args) if _closed is None else _closed
    flat = jax.tree_util.tree_leaves((u, args))
    out = _eval(closed.jaxpr, closed.consts, flat, -1 if n_obs is None else n_obs)
    value, grad_leaves = out[0], out[1:]
    return value, jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(u), grad_leaves)


def _key(u):
    leaves, treedef = jax.tree_util.tree_flatten(u)
    return treedef, tuple((a.shape, a.dtype, a.weak_type) for a in map(_aval, leaves))


def _is_zero(t) -> bool:
    return isinstance(t, jax.custom_derivatives.SymbolicZero)


def _instantiate(t, x):
    if not _is_zero(t):
        return t
    return jnp.zeros(jnp.shape(x), jax.dtypes.float0 if not jnp.issubdtype(
        jnp.result_type(x), jnp.inexact) else jnp.result_type(x))


def fast_objective(loss: Callable, *args) -> Callable:
    """Returns ``f(u) = loss(u, *args)`` whose gradient uses the fast formulation.

    ``args`` hold the data (observations on the leading axis of every array) and
    anything else the loss needs; only derivatives with respect to ``u`` take the fast
    path. Falls back to the plain ``loss`` when the rewrite is off or finds nothing to
    replace (see the module docstring).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> X, y = jnp.ones((4096, 3)), jnp.zeros(4096)
        >>> loss = lambda w, X, y: jnp.mean(jnp.logaddexp(0.0, X @ w) - y * (X @ w))
        >>> f = fast_objective(loss, X, y)
        >>> g = jax.grad(f)(jnp.zeros(3))   # computed as sum(X * r[:, None], 0)
    """
    n_obs = _n_obs(args)
    if n_obs is None or n_obs < MIN_OBS or not enabled():
        return lambda u: loss(u, *args)

    plans: dict = {}

    def plan(u):
        # Traced once per parameter structure: a fit calls f several times while tracing
        # (first step, loop body, line search, Newton polish), all with the same shapes.
        key = _key(u)
        if key not in plans:
            conv, hoisted = jax.closure_convert(lambda v, a: loss(v, *a), u, args)
            full = lambda v, a, *h: conv(v, a, *h)  # noqa: E731
            closed = _vg_jaxpr(full, u, (args, *hoisted))
            plans[key] = (full, tuple(hoisted), closed if _count(closed.jaxpr, n_obs) else None)
        return key, plans[key]

    def f(u):
        key, (full, hoisted, closed) = plan(u)
        if closed is None:
            return loss(u, *args)

        @jax.custom_jvp
        def g(u, a, h):
            return full(u, a, *h)

        def g_jvp(primals, tangents):
            u, a, h = primals
            du, da, dh = tangents
            if not all(_is_zero(t) for t in jax.tree_util.tree_leaves((da, dh), is_leaf=_is_zero)):
                # Derivative with respect to data or closed-over values: plain autodiff.
                tangents = jax.tree.map(_instantiate, tangents, primals, is_leaf=_is_zero)
                return jax.jvp(lambda v, b, k: full(v, b, *k), primals, tangents)
            reuse = closed if _key(u) == key else None
            value, grad = fast_value_and_grad(full, u, a, *h, _closed=reuse)
            dots = [jnp.vdot(gl, tl) for gl, tl in zip(
                jax.tree_util.tree_leaves(grad),
                jax.tree_util.tree_leaves(du, is_leaf=_is_zero), strict=True,
            ) if not _is_zero(tl)]
            tangent = sum(dots) if dots else jnp.zeros_like(value)
            return value, jnp.asarray(tangent, value.dtype)

        g.defjvp(g_jvp, symbolic_zeros=True)
        return g(u, args, hoisted)

    return f
