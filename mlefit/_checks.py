"""Checks at the boundary: bad input is a clear error before anything compiles."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._constraints import is_constraint
from ._data import as_arrays

__all__ = [
    "is_traced",
    "data_traced",
    "check_data",
    "check_real",
    "check_weights",
    "check_model_output",
    "float_dtype",
    "model_name",
]


def is_traced(*trees) -> bool:
    """Whether any leaf of ``trees`` (or the value of a ``Positive``/``Interval`` leaf) is a
    JAX tracer (``fit`` called inside ``jit``, ``vmap`` or ``grad``): such values cannot be
    inspected on the host. Data go through :func:`data_traced` (a generator or a frame is
    not a pytree)."""
    for leaf in jax.tree_util.tree_leaves(trees, is_leaf=is_constraint):
        if isinstance(leaf.value if is_constraint(leaf) else leaf, jax.core.Tracer):
            return True
    return False


def data_traced(data) -> bool:
    """Whether ``data`` (an array or a tuple/list of them) holds a JAX tracer."""
    items = data if isinstance(data, (tuple, list)) else (data,)
    return any(isinstance(a, jax.core.Tracer) for a in items)


def _is_global_array(a) -> bool:
    return (isinstance(a, jax.Array) and not isinstance(a, jax.core.Tracer)
            and not a.is_fully_addressable)


@jax.jit
def _finite_summary(a):
    bad = ~jnp.isfinite(a.reshape(a.shape[0], -1)).all(axis=1)
    return bad.sum(), jnp.argmax(bad)


def host_view(a):
    """``a`` as a NumPy array without a copy when it lives in host memory, else ``None``
    (also for a traced value)."""
    if isinstance(a, np.ndarray):
        return a
    if isinstance(a, jax.core.Tracer):
        return None
    if isinstance(a, jax.Array) and len(a.sharding.device_set) == 1:
        (device,) = a.sharding.device_set
        if device.platform == "cpu":
            return np.asarray(a)  # zero-copy on the CPU backend
    return None


def _bad_rows(flat: np.ndarray) -> np.ndarray:
    """Boolean mask of the rows of a 2-D array holding NaN or inf.

    Fast path: one sum of all the entries (NaN and inf propagate through a sum; a sum can
    also overflow, so a sum that is not finite sends the array to the row-by-row test).
    NumPy's own pairwise sum, not a BLAS product: OpenBLAS's worker threads spin for a
    while after each call, and took the cores from the fit that followed (measured,
    1e6 x 33: the fit 30-60 ms slower after a BLAS row-sum check of its data).
    """
    if flat.dtype in (np.float32, np.float64):
        with np.errstate(over="ignore", invalid="ignore"):
            if np.isfinite(flat.sum()):
                return np.zeros(flat.shape[0], bool)
    return ~np.isfinite(flat).all(axis=1)


def _check_finite(a, name: str) -> None:
    if not jnp.issubdtype(a.dtype, jnp.inexact) or isinstance(a, jax.core.Tracer):
        return  # traced data (fit inside jit/vmap/grad): a NaN makes the fit's status say so
    host = host_view(a)
    if host is not None:  # NumPy, no compilation: at most a few ms per 100 MB
        bad = _bad_rows(host.reshape(host.shape[0], -1))
        count, first = int(bad.sum()), int(np.argmax(bad))
    else:  # accelerator or multi-device arrays: reduce where the data live
        count, first = (int(v) for v in _finite_summary(a))
    if count == 0:
        return
    raise ValueError(
        f"data: {name} has {count} observation(s) with NaN or inf values "
        f"(first at index {first}); remove or impute them before fitting."
    )


def numeric_arrays(data, expected: str) -> list:
    """``[(name, array), ...]`` for an array or a tuple of arrays (``data[k]`` names); what
    is accepted and how it is converted: :func:`mlefit._data.as_arrays`.

    Raises ``ValueError`` for an empty tuple and ``TypeError`` for what is not numeric;
    ``expected`` says what to pass instead.
    """
    arrays = as_arrays(data).arrays  # the rule of mlefit/_data.py: tuples, lists, frames
    if not arrays:
        raise ValueError(f"data: got an empty tuple; pass {expected}.")
    out = []
    for k, a in enumerate(arrays):
        name = "data" if len(arrays) == 1 else f"data[{k}]"
        if not isinstance(a, (jax.Array, np.ndarray)):
            try:
                a = np.asarray(a)
            except Exception as e:  # noqa: BLE001 - re-raised with the argument's name
                raise TypeError(f"{name}: cannot convert {type(a).__name__} to an array") from e
        if a.dtype == object or not (
            np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.bool_)
        ):
            raise TypeError(f"{name}: expected a numeric array, got dtype {a.dtype}")
        check_real(a.dtype, name)
        out.append((name, a))
    return out


def check_real(dtype, name: str) -> None:
    """Raises ``TypeError`` naming ``name`` when ``dtype`` is complex (a log-likelihood
    of complex observations is not a real number, and JAX would only say so after tracing)."""
    if np.issubdtype(dtype, np.complexfloating):
        raise TypeError(
            f"{name}: got complex numbers (dtype {np.dtype(dtype)}); expected real numbers. "
            "Pass the real part (x.real) if the imaginary parts are 0, or the real and "
            "imaginary parts as two columns."
        )


def check_data(data, *, check_finite: bool = True) -> tuple:
    """Returns data as a tuple of arrays sharing the leading (observation) axis.

    Raises ``ValueError`` for empty data, mismatched leading lengths, NaN/inf values
    (with their count and first index); ``TypeError`` for non-numeric data. Traced data
    (inside ``jit``/``vmap``/``grad``) are checked for shapes and dtypes only.
    """
    out = []
    for name, a in numeric_arrays(data, "an array or a tuple (X, y)"):
        if a.ndim == 0:
            raise ValueError(
                f"{name}: got a scalar; data need a leading observation axis (shape (n, ...))."
            )
        if a.shape[0] == 0:
            raise ValueError(f"{name}: is empty (0 observations); a fit needs at least one.")
        if check_finite and not _is_global_array(a):
            _check_finite(a, name)
        out.append(a)
    lengths = [a.shape[0] for a in out]
    if len(set(lengths)) > 1:
        desc = ", ".join(f"data[{k}] has {n}" for k, n in enumerate(lengths))
        raise ValueError(
            f"data: the arrays must share the leading (observation) axis, but {desc} "
            "observations."
        )
    return tuple(out)


def check_weights(weights, n: int, dtype):
    """Validates per-observation weights: shape ``(n,)``, finite, >= 0, positive sum.

    Traced weights (inside ``jit``/``vmap``/``grad``) are checked where they are
    computed: ``eqx.error_if`` with the same messages, raised when the program runs.
    """
    if weights is None:
        return None
    w = weights if isinstance(weights, (jax.Array, np.ndarray)) else np.asarray(weights)
    check_real(w.dtype, "weights")
    if not (np.issubdtype(w.dtype, np.number) or np.issubdtype(w.dtype, np.bool_)):
        raise TypeError(f"weights: expected numbers (one per observation), got dtype {w.dtype}")
    if w.shape != (n,):
        raise ValueError(f"weights: expected shape ({n},) (one per observation), got {w.shape}")
    if isinstance(w, jax.core.Tracer):
        return _traced_weights(w.astype(dtype))
    if not _is_global_array(w):
        wn = np.asarray(w, dtype=float)
        bad = ~(np.isfinite(wn) & (wn >= 0))
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(
                f"weights: must be finite and non-negative; weights[{i}] = {wn[i]!r}"
            )
        if wn.sum() <= 0:
            raise ValueError("weights: all weights are zero; at least one must be positive.")
    if isinstance(w, jax.Array) and w.dtype == dtype:
        return w
    if _is_global_array(w):
        return jnp.asarray(w, dtype=dtype)
    return jax.device_put(np.asarray(w, dtype))  # a transfer, not a compiled conversion


def _traced_weights(w):
    w = eqx.error_if(w, ~jnp.all(jnp.isfinite(w) & (w >= 0)),
                     "weights: must be finite and non-negative")
    return eqx.error_if(w, ~(jnp.sum(w) > 0),
                        "weights: all weights are zero; at least one must be positive.")


def float_dtype(data: tuple):
    """The floating dtype of a fit: that of the first floating data array, else JAX's default."""
    for a in data:
        if jnp.issubdtype(a.dtype, jnp.floating):
            return jnp.dtype(a.dtype) if a.dtype != np.float16 else jnp.dtype(jnp.float32)
    return jnp.dtype(jnp.result_type(float))


# Errors JAX raises when Python control flow or a conversion meets a traced value.
_TRACED_VALUE_ERRORS = (
    jax.errors.ConcretizationTypeError,  # includes TracerBoolConversionError (if, while, bool)
    jax.errors.TracerIntegerConversionError,  # int(x), range(x), x as an index
    jax.errors.TracerArrayConversionError,  # np.asarray(x), np.* functions on x
    jax.errors.NonConcreteBooleanIndexError,  # x[x > 0]
)
# Exception types whose constructor takes one message: re-raised with the model's context.
_PLAIN_ERRORS = (
    TypeError, ValueError, KeyError, IndexError, AttributeError, NameError,
    ZeroDivisionError, NotImplementedError, AssertionError, RuntimeError,
)


def model_name(logp) -> str:
    """A readable name of a log-density: ``f`` for a function, ``Normal.log_prob`` for a
    ready-made model's method, the class for an equinox Module's."""
    owner = getattr(logp, "__self__", None)
    if owner is not None:
        return f"{type(owner).__name__}.{getattr(logp, '__name__', 'log_prob')}"
    static = getattr(logp, "static", None)  # _ModuleLogProb: the Module's static part
    if static is not None:
        return f"{type(static).__name__}.log_prob"
    return getattr(logp, "__name__", type(logp).__name__)


def _model_call_error(logp, e: Exception, shapes: str) -> Exception:
    """The exception to raise ``from e`` when ``logp`` fails on abstract inputs.

    JAX's own errors are never rebuilt with ``type(e)(msg)`` (their constructors take
    other arguments): tracer errors become a ``TypeError`` that says what to write
    instead; other JAX or user exception types a ``TypeError`` with the original message.
    """
    name = model_name(logp)
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if isinstance(e, _TRACED_VALUE_ERRORS):
        return TypeError(
            f"model: {name!r} uses a traced value in Python control flow or a conversion "
            f"({type(e).__name__}: {first}). mlefit traces log_prob (params and observations "
            "are JAX tracers): use jnp.where (or lax.cond) instead of a Python if on traced "
            "values, lax.while_loop instead of while, and jnp functions instead of bool(), "
            "float(), int() or NumPy on them."
        )
    msg = (f"model: calling {name}(params, *obs) on one observation (shapes {shapes}) "
           f"failed: {e}")
    return type(e)(msg) if type(e) in _PLAIN_ERRORS else TypeError(msg)


def check_model_output(logp, params, data: tuple) -> None:
    """Checks that ``logp(params, *obs)`` returns a real scalar for one observation
    (abstract evaluation: nothing compiles)."""
    obs = tuple(jax.ShapeDtypeStruct(a.shape[1:], a.dtype) for a in data)
    try:
        out = jax.eval_shape(logp, params, *obs)
    except Exception as e:  # noqa: BLE001 - re-raised with the model's name, from e
        shapes = ", ".join(str(a.shape[1:]) for a in data)
        raise _model_call_error(logp, e, shapes) from e
    leaves = jax.tree_util.tree_leaves(out)
    if len(leaves) != 1 or leaves[0].shape != ():
        got = leaves[0].shape if len(leaves) == 1 else jax.tree.map(lambda x: x.shape, out)
        raise ValueError(
            f"model: log_prob must return a scalar log-density for ONE observation, but it "
            f"returned shape {got}. Write it for a single observation (mlefit vmaps it), "
            "or sum over the components of a multivariate observation."
        )
    if not jnp.issubdtype(leaves[0].dtype, jnp.floating):
        raise TypeError(f"model: log_prob returned dtype {leaves[0].dtype}, expected a float")
