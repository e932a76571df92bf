"""Streaming data larger than memory (work in progress)."""

from __future__ import annotations

import collections.abc

import jax
import numpy as np


def is_source(data) -> bool:
    """True for a stream of batches (an iterable that is not an array or a tuple of arrays)."""
    if isinstance(data, (tuple, list, np.ndarray, jax.Array, str, bytes, dict)):
        return False
    return isinstance(data, collections.abc.Iterable)


def fit_source(model, source, init, **kwargs):
    raise NotImplementedError("streaming sources are not supported yet")
