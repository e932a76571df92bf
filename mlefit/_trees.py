"""Reductions over parameter pytrees shared by the optimisers (all traceable)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["vdot", "all_finite", "max_norm"]


def vdot(a, b):
    """``sum_leaves <a_l, b_l>``: the inner product of two pytrees of the same structure."""
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def all_finite(*trees):
    """True when every leaf of every tree is finite (no NaN, no inf)."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for t in trees for x in jax.tree.leaves(t)]))


def max_norm(tree):
    """``max_j |x_j|`` over all leaves: the norm of mlefit's gradient stopping rule."""
    return jnp.max(jnp.stack([jnp.max(jnp.abs(x)) for x in jax.tree.leaves(tree)]))
