"""Why a fit cannot start: the NLL at the starting point is not finite.

Run only on the error path (after a fit reported ``INIT_NOT_FINITE``), so it may compile
small programs. The message names what is known for certain and a suspect only where
an evaluation supports it:

- the observations whose log-density ``log p(obs_i; w0)`` is not finite: their count, the
  kind (NaN, +inf, -inf) and the first one with its values;
- a parameter as a suspect for "a scale must be > 0" only when replacing its value ``v``
  by ``|v|`` (or ``1`` where ``v = 0``) makes ``log p`` finite at every failing
  observation (tried one unconstrained parameter at a time, then all together);
- otherwise what the values say: ``-inf`` is probability 0 (the observations are
  outside the support the starting parameters give), ``NaN`` an undefined expression;
- when every ``log p`` is finite, the parameters whose gradient is not finite;
- a penalty (or log-prior) that is not finite at the start is named as such.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ._constraints import Identity, constrain
from ._likelihood import logpdfs, mean_nll, penalty_value

__all__ = ["_init_not_finite_message", "init_not_finite_message", "magnitude_problem"]

# Failing observations re-evaluated when testing a suspect (bounds the cost on big data).
_MAX_REEVALUATED = 1024

_logpdfs = jax.jit(logpdfs, static_argnums=0)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _grad_u(logp, transforms, u, data):
    return jax.grad(lambda v: mean_nll(logp, constrain(v, transforms), data))(u)


def _float_arrays(data: tuple) -> list:
    out = []
    for k, a in enumerate(data):
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            continue  # a global array: its values are not all here
        a = np.asarray(a)
        if np.issubdtype(a.dtype, np.floating):
            out.append(("data" if len(data) == 1 else f"data[{k}]", a))
    return out


def magnitude_problem(data: tuple, what: str) -> str | None:
    """A ``data:`` message when finite data are too large or too small for ``what``
    (e.g. "the moments the Normal start needs") in float64, else ``None``.

    Too large: ``n * max|x|^2`` overflows (a sum of squares of the data is inf). Too
    small: ``max|x|^2`` underflows below the smallest normal number (every square, hence
    every variance, is 0 or subnormal).
    """
    info = np.finfo(np.float64)
    worst = None
    for name, a in _float_arrays(data):
        finite = np.abs(a[np.isfinite(a)]).astype(np.float64)
        if finite.size == 0:
            continue
        big = float(finite.max())
        if big > np.sqrt(info.max / max(a.shape[0], 1)) and (worst is None or big > worst[1]):
            worst = (name, big)
    if worst is not None:
        name, big = worst
        e = int(np.floor(np.log10(big)))
        return (
            f"{name}: values up to {big:.2g} overflow float64 in {what} (x**2 and sums of x "
            f"exceed {info.max:.2g}); rescale the data (e.g. divide by 1e+{e}) and multiply "
            "location and scale estimates back by the same factor."
        )
    for name, a in _float_arrays(data):
        if not (a.size and np.isfinite(a).all()):
            continue
        small = float(np.abs(a).max())
        if 0 < small < np.sqrt(info.tiny):
            e = -int(np.floor(np.log10(small)))
            return (
                f"{name}: values at most {small:.2g} in magnitude underflow float64 in {what} "
                f"(x**2 is below {info.tiny:.2g}); rescale the data (e.g. multiply by 1e+{e}) "
                "and divide location and scale estimates by the same factor."
            )
    return None


def _leaf_names(tree) -> list[str]:
    return [
        jax.tree_util.keystr(path, simple=True, separator=".") or "<root>"
        for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]
    ]


def _show(v) -> str:
    v = np.asarray(v)
    if v.size <= 4:
        return repr(v.tolist())
    return f"<array {v.shape}>"


def _observation(data: tuple, i: int) -> str:
    if len(data) == 1:
        return f"data[{i}] = {_show(data[0][i])}"
    return ", ".join(f"data[{k}][{i}] = {_show(a[i])}" for k, a in enumerate(data))


def _kinds(lp: np.ndarray) -> str:
    counts = (("NaN", np.isnan(lp)), ("+inf", lp == np.inf), ("-inf", lp == -np.inf))
    return ", ".join(f"{int(m.sum())} {k}" for k, m in counts if m.any())


def _flip_nonpositive(v):
    """``|v|``, with 1 where ``v = 0``: the nearest positive value of a would-be scale."""
    v = np.asarray(v)
    return np.where(v == 0, np.ones_like(v), np.abs(v))


def _suspects(logp, params, transforms, failing: tuple) -> list[int]:
    """Indices of unconstrained leaves with a value <= 0 whose positive counterpart makes
    ``log p`` finite at every failing observation (one at a time, then all together)."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    candidates = [
        k for k, (t, x) in enumerate(zip(transforms, leaves, strict=True))
        if t == Identity() and np.any(np.asarray(x) <= 0)
    ]

    def fixes(ks) -> bool:
        trial = [_flip_nonpositive(x) if k in ks else x for k, x in enumerate(leaves)]
        trial = treedef.unflatten([jnp.asarray(x, jnp.asarray(y).dtype)
                                   for x, y in zip(trial, leaves, strict=True)])
        return bool(np.isfinite(np.asarray(_logpdfs(logp, trial, failing))).all())

    single = [k for k in candidates if fixes({k})]
    if single or len(candidates) < 2:
        return single
    return candidates if fixes(set(candidates)) else []


def _explain_observations(logp, params, transforms, names, data, lp) -> str:
    bad = ~np.isfinite(lp)
    first = int(np.argmax(bad))
    where = (
        f"log p is not finite for {int(bad.sum())} of {bad.size} observations "
        f"({_kinds(lp[bad])}); the first at index {first} "
        f"({_observation(data, first)}: log p = {lp[first]})"
    )
    idx = np.flatnonzero(bad)[:_MAX_REEVALUATED]
    failing = tuple(jnp.asarray(np.asarray(a)[idx]) for a in data)
    sus = _suspects(logp, params, transforms, failing)
    leaves = jax.tree_util.tree_leaves(params)
    if sus:
        shown = ", ".join(f"{names[k]}={_show(leaves[k])}" for k in sus)
        fixed = ", ".join(f"{names[k]}={_show(_flip_nonpositive(leaves[k]))}" for k in sus)
        return (
            f"{where}. Suspects: {shown}: with {fixed} log p is finite at those "
            "observations; a scale (or rate) must be > 0: start from a positive value and "
            "declare it as mlefit.Positive(value)."
        )
    scale = magnitude_problem(failing, "log p at the starting parameters")
    if scale is not None:
        return f"{where}. {scale}"
    if np.all(lp[bad] == np.inf):
        return (
            f"{where}. log p = +inf is an infinite density: the start is degenerate there "
            "(e.g. a scale of 0, or a pole of the density at that value); start elsewhere."
        )
    if np.all(lp[bad] == -np.inf):
        return (
            f"{where}. log p = -inf is probability 0: those observations are outside the "
            "support the model gives at the starting parameters; start from parameters "
            "whose support covers the data (or check the data)."
        )
    return (
        f"{where}. No sign change of a parameter makes it finite: the model's formula is "
        "undefined there (e.g. log or sqrt of a negative number, 0/0, inf - inf); "
        "evaluate log_prob at that observation to see which term fails."
    )


def init_not_finite_message(problem, u0, transforms, data: tuple, *, where: str = "") -> str:
    """Returns the ``init:`` message for a start whose NLL over ``data`` is not finite.

    ``where`` (e.g. ``" in chunk 3, rows 300-399"``) says which part of the data
    ``data`` is, when it is a piece of a stream; indices in the message are within it.
    """
    params = constrain(u0, transforms)
    names = _leaf_names(params)
    head = f"init: the NLL of model {problem.name!r} at the starting point is not finite{where}"
    u_leaves = jax.tree_util.tree_leaves(u0)
    bad_u = [n for n, x in zip(names, u_leaves, strict=True) if not np.isfinite(x).all()]
    starting = ", ".join(
        f"{n}={_show(x)}" for n, x in zip(names, jax.tree_util.tree_leaves(params), strict=True)
    )
    if bad_u:
        return (
            f"{head}: parameter(s) {', '.join(bad_u)} are not finite in the unconstrained "
            f"parametrisation (a start at or too close to the bound of its constraint). "
            f"Starting parameters: {starting}."
        )
    if problem.penalty is not None:
        value = float(penalty_value(problem.penalty, transforms, u0))
        if not np.isfinite(value):
            return (
                f"init: the penalty of model {problem.name!r} (penalty=, or -log_prior=) is "
                f"{value} at the starting point{where}; start where it is finite (inside the "
                f"prior's support). Starting parameters: {starting}."
            )
    logp = problem.log_density  # the observations' part (the penalty is finite here)
    lp = np.asarray(_logpdfs(logp, params, data))
    if not np.isfinite(lp).all():
        why = _explain_observations(logp, params, transforms, names, data, lp)
    else:
        grad = _grad_u(problem.logp, transforms, u0, data)
        bad_g = [n for n, g in zip(names, jax.tree_util.tree_leaves(grad), strict=True)
                 if not np.isfinite(np.asarray(g)).all()]
        scale = magnitude_problem(data, "the gradient of the NLL at the start")
        if scale is not None:
            return (f"{scale} (The gradient of the NLL of model {problem.name!r} at its "
                    "start is not finite.)")
        why = (
            "log p is finite at every observation but its gradient is not"
            + (f" (in {', '.join(bad_g)})" if bad_g else "")
            + ": the model is not differentiable at the start (e.g. sqrt or abs at 0, "
            "a jnp.where whose untaken branch is NaN); start elsewhere or rewrite that term."
        )
    return f"{head}: {why} Starting parameters: {starting}."


def _init_not_finite_message(problem, init, u0, transforms, data) -> str:
    """The fit engine's entry point (signature kept for ``_fit.py`` and ``_many.py``)."""
    del init  # the start as given; ``u0`` and ``transforms`` carry what was used
    return init_not_finite_message(problem, u0, transforms, data)
