"""Shared helpers for the tests: tree comparison and small reference problems."""

from __future__ import annotations

import jax
import numpy as np


def tree_allclose(a, b, *, rtol=1e-7, atol=0.0) -> bool:
    """True when two pytrees have the same structure and allclose leaves."""
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    if ta != tb:
        return False
    return all(
        np.allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)
        for x, y in zip(la, lb, strict=True)
    )


def rel_err(a, b) -> float:
    """Max relative error of ``a`` against the reference ``b``."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))
