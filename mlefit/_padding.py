"""Observations padded to a size bucket, so fits of different lengths share one program.

A compiled fit is specialised to the number of observations. Padding ``n`` up to a
bucket with zero-weight copies of a real observation (a zero weight removes an
observation from the NLL exactly, and a valid copy keeps its gradient finite) makes
fits of ``n = 30`` and ``n = 32`` one program. Buckets grow geometrically:

- ``n <= 1024``: the next power of two (at most 1,023 rows of padding);
- ``1024 < n <= 65,536``: 8 buckets per octave (at most 12.5% more rows, 8,192 at most).

Above 65,536 observations the data are used as they are: padding copies the data (a pass
over them) on every fit, which costs more than it saves at that size (a 1e6 x 33 float64
design is 264 MB), and a fit of that size runs long enough that its compilation matters
less. (``bucket`` itself continues with 8 buckets per octave up to 2^20 and 32 above.)
"""

from __future__ import annotations

import jax
import numpy as np

__all__ = ["bucket", "pad_observations"]

_SMALL = 1024
_MEDIUM = 1 << 20
_PAD_LIMIT = 1 << 16


def bucket(n: int) -> int:
    """The padded size of ``n`` observations (see the module docstring).

    Example:
        >>> [bucket(n) for n in (3, 30, 32, 1500, 10**6 + 1)]
        [4, 32, 32, 1536, 1048576]
    """
    if n <= _SMALL:
        return 1 << max(n - 1, 0).bit_length()
    per_octave = 8 if n <= _MEDIUM else 32
    step = 1 << max((n - 1).bit_length() - 1 - per_octave.bit_length() + 1, 0)
    return -(-n // step) * step


def pad_observations(data: tuple, weights, dtype):
    """``(data, weights)`` padded to ``bucket(n)`` rows, or as given when no padding applies.

    Padding rows copy the first observation with a positive weight and get weight 0;
    ``weights`` (``None``: all ones) become an array of the padded length, also where
    ``n`` is a bucket already (so that fits of ``n`` and of fewer rows share a program).
    Traced data and data split over several devices are returned as given.
    """
    n = data[0].shape[0]
    m = bucket(n)
    if any(isinstance(x, jax.core.Tracer) for x in (*data, weights)):
        return data, weights  # traced (inside jit/vmap/grad): no host copies, no padding
    if isinstance(data[0], jax.Array) and len(data[0].sharding.device_set) > 1:
        return data, weights  # sharded: a host copy would gather it onto one device
    if n > _PAD_LIMIT:
        return data, weights
    w = np.ones(n, dtype) if weights is None else np.asarray(weights, dtype)
    if m == n:  # weights of the same kind as padded fits': one program for both
        return data, jax.device_put(w)
    first = int(np.argmax(w > 0))
    padded = []
    for a in data:
        host = np.asarray(a)
        out = np.empty((m,) + host.shape[1:], host.dtype)
        out[:n] = host
        out[n:] = host[first]
        padded.append(out)
    w_out = np.zeros(m, dtype)
    w_out[:n] = w
    return tuple(jax.device_put(padded)), jax.device_put(w_out)
