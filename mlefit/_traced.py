"""``fit`` inside ``jax.jit``, ``jax.vmap`` and ``jax.grad``: what changes when inputs are traced.

A fit is traced when its data, weights, start or fixed values are JAX tracers, or when it
is called inside a transformation at all (a model or penalty may close over a traced
hyperparameter). Then:

- host-side checks run only on the inputs that are concrete; traced data are checked for
  shapes and dtypes, traced weights by ``eqx.error_if`` (same messages, raised when the
  program runs); a NaN in traced data or a start outside its constraint is a status
  (``init_not_finite``), not an exception;
- there is no padding, no chunking and no ahead-of-time compiled call: the loop is
  inlined in the caller's trace, one ``while_loop`` with ``limit = max_steps``;
- the estimate is differentiable by the implicit function theorem
  (:mod:`mlefit._implicit`);
- static options (``max_steps``, ``tol``, ``history``, ``optimizer``, ...) must be
  Python values; minibatch, streamed, sharded, checkpointed fits and progress bars are
  not available.

Fixed values that are traced (``fixed={"scale": s}`` with ``s`` traced) cannot be held
in the static :class:`~mlefit._model.FixedValues`: the model is wrapped instead
(:class:`TracedFixed`), so the traced values reach the log-density, the penalty and
``res.params`` as ordinary inputs of the trace.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import find_top_trace

from ._checks import is_traced
from ._constraints import is_constraint
from ._model import AbstractModel, FixedModel, leaf_name

__all__ = [
    "NOT_AVAILABLE", "under_transformation", "check_traced_options", "split_fixed",
    "TracedFixed", "flat_names",
]

NOT_AVAILABLE = (
    "not available inside jit/vmap (or grad): the result holds traced values; "
    "call it on the returned result outside the transformation"
)

# The trace at import time (top level): any other current trace means a transformation.
_TOP_TRACE_TYPE = type(find_top_trace(None))


def under_transformation() -> bool:
    """Whether the caller runs inside ``jit``, ``vmap``, ``grad``, ... (any trace but
    eager evaluation)."""
    return not isinstance(find_top_trace(None), _TOP_TRACE_TYPE)


def check_traced_options(**options) -> None:
    """``TypeError`` naming a static option that is traced; ``ValueError`` for an option a
    traced fit does not support.

    ``options``: name -> value of the static options (``max_steps``, ``tol``, ...), then
    the unsupported ones under the names ``batch_size``, ``mesh``, ``checkpoint``,
    ``resume_from``, ``progress``, ``stream``.
    """
    for name, value in options.items():
        if is_traced(value):
            raise TypeError(
                f"{name}: is a static argument of fit (a Python value), but got a traced "
                "value: it cannot be traced by jit/vmap or differentiated by grad. Pass it "
                "as a constant (e.g. jax.jit(f, static_argnames=...)); derivatives of a fit "
                "are with respect to data, weights, fixed values and values the model or "
                "penalty closes over."
            )
    unsupported = {
        "batch_size": "minibatch fits", "mesh": "sharded fits",
        "checkpoint": "checkpoints", "resume_from": "resumed fits",
        "progress": "progress bars", "stream": "streams of batches",
    }
    for name, what in unsupported.items():
        if options.get(name) not in (None, False):
            raise ValueError(
                f"{name}: {what} are not available inside jit/vmap/grad (the fit is one "
                "traced loop there); call fit outside the transformation, or fit data in "
                "memory full-batch."
            )


def split_fixed(fixed) -> tuple[dict | None, dict]:
    """``(concrete, traced)``: the fixed values held as static values, and those traced."""
    if not isinstance(fixed, Mapping) or not fixed:
        return fixed, {}
    traced = {k: v for k, v in fixed.items() if is_traced(v)}
    concrete = {k: v for k, v in fixed.items() if k not in traced}
    return (concrete or None), traced


class TracedFixed:
    """Inserts traced fixed values into the parameters: ``insert(params)`` puts
    ``values[name]`` where the slot of parameter ``name`` is ``None``."""

    def __init__(self, values: dict):
        self.values = dict(values)
        self.bounds: dict = {}  # name -> (low, high) of a constrained parameter (free())

    def insert(self, params):
        leaves, treedef = jax.tree_util.tree_flatten_with_path(
            params, is_leaf=lambda x: x is None)
        out = []
        for path, x in leaves:
            name = leaf_name(path)
            out.append(self.values[name] if x is None and name in self.values else x)
        return treedef.unflatten(out)

    def free(self, init):
        """``init`` with the traced names' leaves set to ``None``; ``ValueError`` for a
        name that is not a parameter."""
        leaves, treedef = jax.tree_util.tree_flatten_with_path(
            init, is_leaf=lambda x: x is None or is_constraint(x))
        names = [leaf_name(path) for path, _ in leaves]
        unknown = [n for n in self.values if n not in names]
        if unknown:
            raise ValueError(
                f"fixed: unknown parameter {unknown[0]!r}; the parameters are "
                f"{', '.join(map(repr, names))}."
            )
        for name, (_, leaf) in zip(names, leaves, strict=True):
            if name in self.values and is_constraint(leaf):
                self.bounds[name] = leaf.bounds()
            if name in self.values and leaf is not None:
                start = leaf.value if is_constraint(leaf) else leaf
                if np.shape(start) != np.shape(self.values[name]):
                    raise ValueError(
                        f"fixed: {name!r} has shape {np.shape(start)} but its fixed value "
                        f"has shape {np.shape(self.values[name])}; give an array of shape "
                        f"{np.shape(start)}."
                    )
        return treedef.unflatten(
            [None if n in self.values else x for n, (_, x) in zip(names, leaves, strict=True)])

    def model(self, logp: Callable, name: str) -> Callable:
        """``log_prob(params, *obs) = logp(insert(params), *obs)``, named ``name``; NaN
        where a traced value lies outside its parameter's constraint (the host cannot
        check it: the fit then ends ``init_not_finite``, as for a traced start outside
        its constraint)."""

        def log_prob(params, *obs):
            lp = logp(self.insert(params), *obs)
            inside = [jnp.all((self.values[n] > lo) & (self.values[n] < hi))
                      for n, (lo, hi) in self.bounds.items()]
            return jnp.where(jnp.all(jnp.stack(inside)), lp, jnp.nan) if inside else lp

        log_prob.__name__ = name
        return log_prob

    def penalty(self, f: Callable | None) -> Callable | None:
        return None if f is None else (lambda params: f(self.insert(params)))


def unwrap_model(model, init, data: tuple, traced: TracedFixed):
    """``(log_prob, init, name)``: ``model`` as a plain function taking every parameter,
    and its start (a ready-made model's data-driven one when ``init`` is None)."""
    if isinstance(model, FixedModel):
        raise ValueError(
            "fixed: give the fixed values of a model.fix(...) model as concrete values, or "
            "pass the plain model with fixed={...} (traced values)."
        )
    if isinstance(model, AbstractModel):
        return model.log_prob, model.init(*data) if init is None else init, model.name
    name = getattr(model, "__name__", type(model).__name__)
    return model, init, name


def flat_names(u) -> tuple:
    """Names of the entries of ``ravel_pytree(u)`` (JAX's leaf order): ``"mu"``, ``"w[2]"``."""
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(u)[0]:
        base = leaf_name(path) or "x"
        shape = np.shape(leaf)
        if shape == ():
            out.append(base)
        else:
            out.extend(f"{base}[{','.join(map(str, i))}]" for i in np.ndindex(shape))
    return tuple(out)
