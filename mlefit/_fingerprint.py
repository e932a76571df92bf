"""Fingerprints of a fit's data and model: what a checkpoint records to refuse a wrong resume.

A checkpoint's header already holds the shapes of the fit (parameters, optimiser state,
data). Data of the same shapes, or a model edited under the same name, would resume
silently; these fingerprints tell them apart, cheaply:

- the data: the number of observations, the SHA-256 of ``_SAMPLE_ROWS`` rows taken at an
  even stride (first and last included) of every array and of the weights, and, for data
  in host memory, the sum of all their bytes read as unsigned integers modulo ``2**64``
  (exact and independent of the order of summation, so any single changed value changes
  it; one pass over the data, 30-50 ms per 270 MB on 2 cores). A stream of ``.npy``
  files or arrays (``ArrayStream``) contributes its strided rows only (reading it all
  would be a pass over the files); any other iterable of batches, its first batch;
- the model: the SHA-256 of the jaxpr of its log-density and gradient for ONE observation
  at the parameters' and observation's shapes, with the values of closed-over constants
  (``mlefit._compiled.model_fingerprint``); where no jaxpr can be built, the hash of the
  function's code object (bytecode, names and constants, nested functions included).

A difference that the rows sampled miss (one edited row of a large data set, held on a
device) goes unnoticed: the check is a guard against resuming on other data, not a proof
of equality.
"""

from __future__ import annotations

import hashlib
import types

import jax
import jax.numpy as jnp
import numpy as np

from ._checks import host_view
from ._compiled import model_fingerprint

__all__ = ["data_fingerprint", "source_fingerprint", "model_id", "differences"]

_SAMPLE_ROWS = 256


def strided_rows(n: int, k: int = _SAMPLE_ROWS) -> np.ndarray:
    """``min(n, k)`` row indices at an even stride over ``0 .. n-1``, first and last included."""
    return np.unique(np.linspace(0, n - 1, min(n, k)).round().astype(np.int64))


def _hash_rows(arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(repr((a.shape, a.dtype.str)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def bit_sum(a: np.ndarray) -> int:
    """``sum(bytes of a, read as unsigned ints) mod 2**64``: exact, order-free; changing any
    one value changes it."""
    a = np.ascontiguousarray(a)
    size = a.dtype.itemsize
    words = a.reshape(-1).view(f"u{size}" if size in (1, 2, 4, 8) else "u1")
    return int(np.sum(words, dtype=np.uint64))


def _rows_of(a, rows: np.ndarray):
    host = host_view(a)
    if host is not None:
        return host[rows]
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
        return None  # spread over processes: only process-local rows are readable
    return np.asarray(jnp.take(a, jnp.asarray(rows), axis=0))


def data_fingerprint(data: tuple, weights, layout=None) -> dict | None:
    """The fingerprint of in-memory data (see the module doc); ``None`` when the arrays are
    spread over several processes (then only their shapes are checked).

    ``layout``: where the real observations sit in padded, sharded arrays (``RowLayout``).
    """
    n = data[0].shape[0] if layout is None else layout.n_obs
    rows = strided_rows(n)
    if layout is not None:
        rows = np.asarray(layout(jnp.asarray(rows)))
    arrays = (*data, *(() if weights is None else (weights,)))
    sampled = [_rows_of(a, rows) for a in arrays]
    if any(s is None for s in sampled):
        return None
    hosts = [host_view(a) for a in arrays]
    total = None
    if all(h is not None for h in hosts):
        total = sum(bit_sum(h) for h in hosts) % 2**64
    return {"n_obs": int(n), "rows": len(rows), "sample_sha256": _hash_rows(sampled),
            "bit_sum": total}


def source_fingerprint(src, sample: tuple) -> dict:
    """The fingerprint of a stream: strided rows of an ``ArrayStream`` (and its weights),
    the first batch of any other iterable."""
    if hasattr(src, "take") and hasattr(src, "n_obs"):  # an ArrayStream: strided rows
        rows = strided_rows(src.n_obs)
        obs, w = src.take(rows)
        return {"n_obs": int(src.n_obs), "rows": len(rows),
                "sample_sha256": _hash_rows((*obs, w)), "bit_sum": None}
    return {"n_obs": None, "rows": int(sample[0].shape[0]),
            "sample_sha256": _hash_rows([np.asarray(a) for a in sample]), "bit_sum": None}


def _hash_code(h, code: types.CodeType) -> None:
    h.update(code.co_code)
    h.update(repr(code.co_names).encode())
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            _hash_code(h, c)
        else:
            h.update(repr(c).encode())


def code_hash(fn) -> str | None:
    """SHA-256 of ``fn``'s code object (bytecode, names, constants; nested functions too),
    or ``None`` for a callable without one."""
    code = getattr(fn, "__code__", None) or getattr(getattr(fn, "__func__", None),
                                                    "__code__", None)
    if code is None:
        return None
    h = hashlib.sha256()
    _hash_code(h, code)
    return h.hexdigest()


def model_id(logp, u0, obs: tuple) -> str | None:
    """The model's fingerprint: ``"jaxpr:<sha256>"``, else ``"code:<sha256>"``, else ``None``.

    ``u0``: the parameters (any pytree of arrays); ``obs``: the data arrays (observations
    on the leading axis); only their shapes and dtypes are used.
    """
    params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x)), u0)
    one = tuple(jax.ShapeDtypeStruct(a.shape[1:], a.dtype) for a in obs)
    fp = model_fingerprint(logp, params, one)
    if fp is not None:
        return f"jaxpr:{fp}"
    code = code_hash(logp)
    return None if code is None else f"code:{code}"


def fingerprint(logp, u0, obs: tuple, data: dict | None) -> dict:
    """What a checkpoint header stores: ``{"data", "model", "jax"}``."""
    return {"data": data, "model": model_id(logp, u0, obs), "jax": jax.__version__}


def differences(saved: dict, current: dict) -> tuple[str | None, str | None]:
    """``(data, model)``: why the data and the model of a checkpoint differ from the
    current fit's (``None`` where they agree, or cannot be compared)."""
    data = model = None
    a, b = saved.get("data"), current.get("data")
    if a and b:
        what = []
        if a.get("sample_sha256") != b.get("sample_sha256"):
            what.append(f"the checksum of {b['rows']} rows sampled at an even stride")
        if a.get("bit_sum") is not None and b.get("bit_sum") is not None and (
            a["bit_sum"] != b["bit_sum"]
        ):
            what.append("the checksum of all values")
        if what:
            data = " and ".join(what) + (" differ" if len(what) > 1 else " differs")
    a, b = saved.get("model"), current.get("model")
    if a and b and a.split(":")[0] == b.split(":")[0] and a != b:
        how = ("its JAX program for one observation" if a.startswith("jaxpr:")
               else "its code")
        model = f"{how} differs: an edited body, other closed-over constants"
        old, new = saved.get("jax"), current.get("jax")
        model += f", or JAX {old} -> {new} tracing it anew" if old != new else ""
    return data, model
