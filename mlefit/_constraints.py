"""Parameter constraints: declared as leaves of ``init``, optimised unconstrained.

A constrained leaf ``c`` is optimised through an unconstrained ``u`` with
``c = forward(u)``; ``res.params`` always holds the constrained values.

- ``Positive(value)``: ``c = softplus(u)``, ``c > 0``.
- ``Interval(low, high, value)``: ``c = low + (high - low) * sigmoid(u)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Positive", "Interval", "Identity", "split_init", "constrain", "unconstrain"]


class Identity:
    """The transform of an unconstrained leaf: ``c = u``."""

    def forward(self, u):
        return u

    def inverse(self, c):
        return c

    def dforward(self, u):
        """Elementwise derivative ``dc/du`` (for the delta method)."""
        return jnp.ones_like(u)

    def __eq__(self, other):
        return type(other) is Identity

    def __hash__(self):
        return hash(Identity)

    def __repr__(self):
        return "Identity()"


_IDENTITY = Identity()


class Positive:
    """A strictly positive parameter, ``value > 0``, optimised as ``u = softplus^-1(value)``.

    Example:
        >>> init = {"mu": 0.0, "sigma": Positive(1.0)}
    """

    def __init__(self, value=1.0):
        self.value = value

    def check(self, value, name):
        v = np.asarray(value, dtype=float)
        bad = ~(v > 0)
        if bad.any():
            i = int(np.flatnonzero(bad.ravel())[0])
            raise ValueError(
                f"init: parameter {name!r} is declared Positive but its initial value "
                f"{v.ravel()[i]!r} (flat index {i}) is not > 0; start from a positive value."
            )

    def forward(self, u):
        return jax.nn.softplus(u)

    def inverse(self, c):
        # softplus^-1(c) = c + log(-expm1(-c)), stable for small and large c.
        xp = _namespace(c)
        c = xp.asarray(c)
        return c + xp.log(-xp.expm1(-c))

    def dforward(self, u):
        return jax.nn.sigmoid(u)

    def bounds(self):
        return (0.0, np.inf)

    def _key(self):
        return ("Positive",)

    def __eq__(self, other):
        return isinstance(other, Positive) and type(other) is type(self)

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        return f"Positive({self.value!r})"


class Interval:
    """A parameter in the open interval ``(low, high)``.

    Optimised as ``u = logit((value - low) / (high - low))``, so that
    ``value = low + (high - low) * sigmoid(u)``.

    Example:
        >>> init = {"p": Interval(0.0, 1.0, 0.5)}
    """

    def __init__(self, low, high, value=None):
        low, high = float(low), float(high)
        if not (np.isfinite(low) and np.isfinite(high) and low < high):
            raise ValueError(
                f"Interval(low={low}, high={high}): need finite low < high; "
                "use Positive for a half-line."
            )
        self.low, self.high = low, high
        self.value = 0.5 * (low + high) if value is None else value

    def check(self, value, name):
        v = np.asarray(value, dtype=float)
        bad = ~((v > self.low) & (v < self.high))
        if bad.any():
            i = int(np.flatnonzero(bad.ravel())[0])
            raise ValueError(
                f"init: parameter {name!r} is declared Interval({self.low}, {self.high}) but "
                f"its initial value {v.ravel()[i]!r} (flat index {i}) is not strictly inside it."
            )

    def forward(self, u):
        return self.low + (self.high - self.low) * jax.nn.sigmoid(u)

    def inverse(self, c):
        xp = _namespace(c)
        t = (xp.asarray(c) - self.low) / (self.high - self.low)
        return xp.log(t) - xp.log1p(-t)

    def dforward(self, u):
        s = jax.nn.sigmoid(u)
        return (self.high - self.low) * s * (1 - s)

    def bounds(self):
        return (self.low, self.high)

    def __eq__(self, other):
        return isinstance(other, Interval) and (self.low, self.high) == (other.low, other.high)

    def __hash__(self):
        return hash(("Interval", self.low, self.high))

    def __repr__(self):
        return f"Interval({self.low}, {self.high}, {self.value!r})"


CONSTRAINTS = (Positive, Interval)


def _namespace(x):
    """``jax.numpy`` for JAX arrays and tracers, NumPy for host values (no compilation)."""
    return jnp if isinstance(x, jax.Array) else np


def is_constraint(x) -> bool:
    return isinstance(x, CONSTRAINTS)


def _path_name(path) -> str:
    return jax.tree_util.keystr(path, simple=True, separator=".") or "<root>"


def split_init(init, dtype=None):
    """Splits ``init`` into ``(u0, transforms)``: unconstrained start and a pytree of transforms.

    Constraint leaves are checked (``ValueError`` naming the parameter when the start
    is outside the constraint); a traced start (``fit`` inside ``jit``/``vmap``/``grad``)
    only for its dtype: a value outside the constraint maps to a NaN ``u``, and the fit
    ends with status ``init_not_finite``. ``transforms`` has the same structure as ``u0`` and is
    hashable, so it can be a static argument of a compiled fit.
    """
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(init, is_leaf=is_constraint)
    if not leaves_with_path:
        raise ValueError("init: the parameter pytree has no leaves; give at least one parameter.")
    us, ts = [], []
    for path, leaf in leaves_with_path:
        name = _path_name(path)
        if is_constraint(leaf):
            value = leaf.value
            _check_numeric(value, name)
            if not isinstance(value, jax.core.Tracer):
                leaf.check(value, name)
            us.append(leaf.inverse(_as_array(value, dtype)))
            ts.append(leaf)
        else:
            _check_numeric(leaf, name)
            us.append(_as_array(leaf, dtype))
            ts.append(_IDENTITY)
    return treedef.unflatten(us), tuple(ts)


def _as_array(value, dtype):
    """``value`` as an array of ``dtype``: JAX arrays stay JAX arrays, host values stay in
    NumPy (a start computed eagerly in JAX would compile a small program per operation)."""
    dtype = dtype or _float_dtype(value)
    if isinstance(value, jax.Array):
        return jnp.asarray(value, dtype=dtype)
    return np.asarray(value, dtype=dtype)


def _float_dtype(value):
    d = jnp.asarray(value).dtype
    return d if jnp.issubdtype(d, jnp.floating) else jnp.result_type(float)


def _check_numeric(value, name):
    if isinstance(value, jax.core.Tracer):
        if not (jnp.issubdtype(value.dtype, jnp.number) or value.dtype == bool):
            raise TypeError(f"init: parameter {name!r} has non-numeric dtype {value.dtype}")
        return
    try:
        v = np.asarray(value)
    except Exception as e:  # noqa: BLE001 - re-raised with the parameter's name
        raise TypeError(
            f"init: parameter {name!r} is not an array-like ({type(value).__name__})"
        ) from e
    if v.dtype == object or not (np.issubdtype(v.dtype, np.number) or v.dtype == bool):
        raise TypeError(
            f"init: parameter {name!r} has non-numeric value of type {type(value).__name__}"
        )
    if not np.all(np.isfinite(v.astype(float))):
        raise ValueError(f"init: parameter {name!r} has a non-finite initial value {value!r}")


def constrain(u, transforms):
    """Maps unconstrained parameters to constrained ones, leaf by leaf."""
    leaves, treedef = jax.tree_util.tree_flatten(u)
    return treedef.unflatten([t.forward(x) for t, x in zip(transforms, leaves, strict=True)])


def unconstrain(c, transforms):
    """Inverse of :func:`constrain`."""
    leaves, treedef = jax.tree_util.tree_flatten(c)
    return treedef.unflatten([t.inverse(x) for t, x in zip(transforms, leaves, strict=True)])


def jacobian_diag(u, transforms):
    """Elementwise ``dc/du`` for every leaf (all transforms are elementwise)."""
    leaves, treedef = jax.tree_util.tree_flatten(u)
    return treedef.unflatten([t.dforward(x) for t, x in zip(transforms, leaves, strict=True)])
